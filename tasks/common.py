"""What every task wrapper shares: a stage item's bookkeeping (`begin_item`, `finish_item`) and the render thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from unihope.buildplan.workdir import WorkLayout
from unihope.buildplan.workfiles import record_execution
from unihope.tasks.options import maybe_fail_once
from unihope.tasks.timeouts import StageTimeout, call_with_timeout

R = TypeVar("R")

# An EGL/OpenGL context works only on the thread that created it, and renderers are cached per
# process (unihope.render.annotate.get_renderer, the synthetic generator's renderer). Task runners
# call tasks from varying threads (ThreadPoolTaskRunner, Dask workers), so everything that renders
# runs on this one thread of the process.
_RENDER_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unihope-render")


_RENDER_THREAD_LOCK = threading.Lock()


def on_render_thread(fn: Callable[..., R], *args: Any) -> R:
    """Call `fn(*args)` on the process's render thread and return its result (exceptions propagate)."""
    return _RENDER_THREAD.submit(fn, *args).result()


def on_render_thread_within(timeout_s: float, what: str, fn: Callable[..., R], *args: Any, hang_s: float = 0.0) -> R:
    """`on_render_thread` that gives up after `timeout_s` (a stuck EGL/driver call) with `StageTimeout`.

    On a timeout the stuck render thread is abandoned: a new one takes its place and the cached
    renderers are forgotten (their GL contexts belong to the stuck thread), so the retry renders on
    fresh state.

    Args:
        timeout_s: seconds to wait.
        what: names the work in the error.
        fn, args: the call.
        hang_s: fault injection (`unihope.tasks.timeouts.call_with_timeout`).

    Raises:
        StageTimeout: on expiry.
    """
    global _RENDER_THREAD
    executor = _RENDER_THREAD
    try:
        return call_with_timeout(fn, *args, timeout_s=timeout_s, what=what, hang_s=hang_s, executor=executor)
    except StageTimeout:
        from unihope.render.annotate import forget_renderers

        with _RENDER_THREAD_LOCK:
            if _RENDER_THREAD is executor:  # another task may have replaced it already
                _RENDER_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unihope-render")
                executor.shutdown(wait=False, cancel_futures=True)
                forget_renderers()
        raise


def set_torch_threads(num_threads: int) -> None:
    """Pin torch's intra-op CPU threads in this worker process (flow.torch_threads).

    The same count under every task runner keeps datasets bit-identical: float32 reductions
    (the hand layer's vertices) change in the last bit with the number of threads.
    """
    import torch

    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)


# ----------------------------------------------------------------------------------------------
# A stage item's bookkeeping: what a task body calls around its load -> stage -> save
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageItem:
    """One item of the work folder a task computes (a part, a batch, a shard, the index, finalize).

    Attributes:
        layout: the build's work layout (the execution log).
        stage: the stage name in `executions.jsonl`.
        item_idx: which part / batch / shard (0 for one-per-build items).
        out_path: the item's output; its existence marks the item complete.
        fail_once: the fault injection list (`flow.fail_once`).
    """

    layout: WorkLayout
    stage: str
    item_idx: int
    out_path: str
    fail_once: tuple[str, ...] = ()


def begin_item(item: StageItem) -> float:
    """Start computing an item the reuse check did not answer: fault injection (the first attempt of a
    listed item fails, `flow.fail_once`), then the start time `finish_item` measures from.
    """
    maybe_fail_once(item.stage, item.item_idx, item.fail_once)
    return time.perf_counter()


def finish_item(item: StageItem, started_s: float, num_frames: int, value: R) -> R:
    """Record in `executions.jsonl` that the item was computed (after its save: a failed attempt records
    nothing) and hand back `value`, the task's return value.
    """
    record_execution(item.layout, item.stage, item.item_idx, num_frames, time.perf_counter() - started_s)
    return value
