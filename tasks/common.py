"""Helpers every task wrapper uses: reuse an existing output, write its summary, note executions."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from unihope.storage.schema import StageSummary
from unihope.tasks.timeouts import StageTimeout, call_with_timeout
from unihope.tasks.work import WorkLayout, atomic_write_json, record_execution

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


def summary_path(out_path: str | Path) -> Path:
    """Sidecar holding the StageSummary of an output (read instead of the output itself on reuse)."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".summary.json")


def reuse_summary(out_path: str | Path) -> StageSummary | None:
    """The summary of a complete earlier output, or None when the stage item must (re)compute.

    The output file itself is the completion marker (written last, atomically); the summary
    sidecar is written just before it.
    """
    if not Path(out_path).exists():
        return None
    side = summary_path(out_path)
    if not side.is_file():
        return None
    data = json.loads(side.read_text())
    return StageSummary(stage=data["stage"], output_path=data["output_path"], num_in=int(data["num_in"]),
                        num_out=int(data["num_out"]), skips_by_reason=dict(data["skips_by_reason"]))


def write_summary(summary: StageSummary) -> None:
    """Write the summary sidecar of `summary.output_path` (call before writing the output itself)."""
    atomic_write_json(summary_path(summary.output_path), {
        "stage": summary.stage, "output_path": summary.output_path, "num_in": summary.num_in,
        "num_out": summary.num_out, "skips_by_reason": summary.skips_by_reason,
    })


class ExecutionTimer:
    """Context manager: on success, record in executions.jsonl that a stage item was computed."""

    def __init__(self, layout: WorkLayout, stage: str, item_idx: int) -> None:
        self.layout, self.stage, self.item_idx = layout, stage, item_idx
        self.num_frames = 0
        self._start_s = 0.0

    def __enter__(self) -> "ExecutionTimer":
        self._start_s = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            record_execution(self.layout, self.stage, self.item_idx, self.num_frames,
                             time.perf_counter() - self._start_s)


def set_torch_threads(num_threads: int) -> None:
    """Pin torch's intra-op CPU threads in this worker process (flow.torch_threads).

    The same count under every task runner keeps datasets bit-identical: float32 reductions
    (the hand layer's vertices) change in the last bit with the number of threads.
    """
    import torch

    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
