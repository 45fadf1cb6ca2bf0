"""What every task wrapper shares: a stage item's bookkeeping (`begin_item`, `finish_item`), the render thread, torch threads."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from unihope.buildplan.workdir import WorkLayout
from unihope.buildplan.workfiles import record_execution
from unihope.tasks.options import maybe_fail_once
from unihope.tasks.resources import worker_resources

R = TypeVar("R")

def on_render_thread(fn: Callable[..., R], *args: Any) -> R:
    """Call `fn(*args)` on this process's render thread (`unihope.tasks.resources.WorkerResources`)."""
    return worker_resources().on_render_thread(fn, *args)


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
