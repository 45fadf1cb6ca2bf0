"""Task options shared by every wrapper: retries with backoff, transient-error filter, CUDA OOM halving,
fault injection (attempt counter), and no Prefect cache: the stage-hash work folder is the one cache."""

from __future__ import annotations

import errno
import gc
from collections.abc import Callable, Sequence
from typing import TypeVar

from prefect import Task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import exponential_backoff

from unihope.buildplan.faults import FAIL_ONCE_ENV, HANG_SUFFIX, parse_fail_once, should_fail, should_hang
from unihope.config import FlowConfig

CUDA_OOM_MESSAGE = "CUDA out of memory"
INJECTED_HANG_FACTOR = 4.0  # an injected hang lasts this many timeouts at most (it ends when abandoned)
# OSErrors no retry can fix: disk full, quota exceeded, read-only filesystem, permission denied.
PERMANENT_OS_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})

T = TypeVar("T")
R = TypeVar("R")


class InjectedFault(RuntimeError):
    """Raised on purpose by `flow.fail_once` / UNIHOPE_FAIL_ONCE to show that retries work."""


# ----------------------------------------------------------------------------------------------
# Fault injection
# ----------------------------------------------------------------------------------------------


def injected_hang_s(task_name: str, item_idx: int, fail_once: Sequence[str], timeout_s: float) -> float:
    """Seconds the watched call of this attempt should hang (0: none); call on the task's own thread.

    The hang outlasts the timeout, so the watchdog fires, abandons the call and the task is retried.
    """
    if not any(item.endswith(HANG_SUFFIX) for item in fail_once):
        return 0.0
    from prefect.runtime import task_run

    run_count = int(task_run.run_count or 1)
    return INJECTED_HANG_FACTOR * timeout_s if should_hang(task_name, item_idx, fail_once, run_count) else 0.0


def maybe_fail_once(task_name: str, item_idx: int, fail_once: Sequence[str]) -> None:
    """Raise `InjectedFault` on the first attempt of a listed task (reads Prefect's attempt counter).

    Raises:
        InjectedFault: when fault injection asks for it.
    """
    if not fail_once:
        return
    from prefect.runtime import task_run

    run_count = int(task_run.run_count or 1)
    if should_fail(task_name, item_idx, fail_once, run_count):
        raise InjectedFault(f"injected failure of {task_name}[{item_idx}] on attempt {run_count} (flow.fail_once)")


# ----------------------------------------------------------------------------------------------
# Which errors are worth a retry
# ----------------------------------------------------------------------------------------------


def is_cuda_oom(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, or any RuntimeError whose message says CUDA ran out of memory.

    Checked by class name so the orchestration process never has to import torch.
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    return "OutOfMemoryError" in names or (isinstance(exc, RuntimeError) and CUDA_OOM_MESSAGE in str(exc))


def is_transient(exc: BaseException) -> bool:
    """Failures a retry can fix: I/O and network (OSError), CUDA OOM, injected faults.

    Deterministic errors (ValueError, TypeError, KeyError, ...) fail fast instead: retrying them
    would only fail again, later. So do OSErrors that stay until a person acts (`PERMANENT_OS_ERRNOS`:
    a full disk or quota, a read-only filesystem, a permission denied).
    """
    if isinstance(exc, OSError) and exc.errno in PERMANENT_OS_ERRNOS:
        return False
    return isinstance(exc, (OSError, InjectedFault, MemoryError)) or is_cuda_oom(exc)


def retry_on_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect `retry_condition_fn`: retry only transient failures (see `is_transient`)."""
    try:
        state.result(raise_on_failure=True)
    except Exception as exc:  # noqa: BLE001 - classifying whatever the task raised is the point
        return is_transient(exc)
    return False


def run_with_oom_halving(
    fn: Callable[[list[T]], list[R]],
    items: Sequence[T],
    chunk_size: int,
    on_halve: Callable[[int], None] | None = None,
) -> list[R]:
    """Run `fn` over `items` in chunks; on CUDA OOM, halve the chunk and retry it (down to 1 item).

    A GPU worker that runs out of memory on a batch thus finishes the batch in smaller pieces
    instead of failing the task. Output order equals input order.

    Args:
        fn: maps a list of items to one output per item.
        items: the whole batch.
        chunk_size: items per call to start with (>= 1).
        on_halve: called with the new chunk size after each halving (logging, counting).

    Returns:
        The outputs of every chunk, concatenated.

    Raises:
        ValueError: when `fn` returns a different number of outputs than it got items.
        RuntimeError: the OOM itself when a single item does not fit.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    outputs: list[R] = []
    pos, size = 0, chunk_size
    while pos < len(items):
        chunk = list(items[pos : pos + size])
        try:
            chunk_out = fn(chunk)
        except RuntimeError as exc:
            if not is_cuda_oom(exc) or size == 1:
                raise
            size = max(1, size // 2)
            _free_cuda_memory()
            if on_halve is not None:
                on_halve(size)
            continue
        if len(chunk_out) != len(chunk):
            raise ValueError(f"{fn!r} returned {len(chunk_out)} outputs for {len(chunk)} inputs")
        outputs.extend(chunk_out)
        pos += len(chunk)
    return outputs


def _free_cuda_memory() -> None:
    """Release cached CUDA blocks after an OOM (a no-op without torch or CUDA)."""
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# Options of every task
# ----------------------------------------------------------------------------------------------


def configure_task(task: Task, flow_cfg: FlowConfig, *, tags: Sequence[str] = ()) -> Task:
    """Apply the build's retry, backoff and tag settings to a task; switch Prefect's cache and result persistence off.

    Reruns, retries and resumes reuse finished work through the stage-hash work folder alone (each
    task's reuse check returns the stored summary of an output that exists, first thing in its body).
    A second cache in Prefect's result store would keep pickled records (`_prefect-results/`), which
    run code when read from a shared work folder; so there is none (NO_CACHE, persist_result=False).

    Args:
        task: a task from `tasks/` (its decorator sets only the name).
        flow_cfg: retries, base delay (doubles each retry), GPU tag.
        tags: extra tags, e.g. the GPU tag that the concurrency limit applies to.

    Returns:
        A copy of `task` with the options applied.
    """
    return task.with_options(
        retries=flow_cfg.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=flow_cfg.retry_delay_s)(max(flow_cfg.retries, 1)),
        retry_condition_fn=retry_on_transient,
        cache_policy=NO_CACHE,
        persist_result=False,
        tags=set(task.tags) | {tag for tag in tags if tag},  # an empty flow.gpu_tag means untagged
    )


__all__ = [
    "FAIL_ONCE_ENV", "HANG_SUFFIX", "InjectedFault", "configure_task", "injected_hang_s", "is_cuda_oom",
    "is_transient", "maybe_fail_once", "parse_fail_once", "retry_on_transient", "run_with_oom_halving",
    "should_fail", "should_hang",
]
