"""Watchdog for task work that calls into EGL or CUDA: give up after a timeout instead of hanging forever.

Prefect's own `timeout_seconds` cannot interrupt a task running in a worker thread (every task
runner here runs tasks in threads) while it blocks inside C (a stuck driver call, an EGL swap, a
CUDA synchronise): it raises only once Python code runs again, and it logs a warning saying so on
every run. So the hang-prone call runs on another thread and the task waits for it with a timeout;
on expiry the task raises `StageTimeout`. Prefect handles any TimeoutError a task raises as a
timeout (state `TimedOut` once retries are spent), the retry condition counts it as transient
(TimeoutError is an OSError), the stuck thread is abandoned, and the retry starts on fresh state.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

R = TypeVar("R")


class StageTimeout(TimeoutError):
    """A watched call did not finish within its timeout (flow.annotate_timeout_s / flow.deocclude_timeout_s)."""


def _on_daemon_thread(fn: Callable[[], R], name: str) -> Future:
    """Run `fn` on a new daemon thread (a stuck one never blocks the process's exit); its future."""
    future: Future = Future()

    def body() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting task, which re-raises it
            future.set_exception(exc)

    threading.Thread(target=body, name=name, daemon=True).start()
    return future


def call_with_timeout(
    fn: Callable[..., R], *args: Any, timeout_s: float, what: str, hang_s: float = 0.0,
    executor: Executor | None = None,
) -> R:
    """`fn(*args)` on another thread; its result, or StageTimeout when it takes longer than `timeout_s`.

    Args:
        fn: the hang-prone work (rendering, de-occlusion).
        timeout_s: seconds to wait (> 0).
        what: names the work in the error, e.g. "annotate batch 3".
        hang_s: fault injection: block this long first, like a stuck driver call (ends early once the
            call is abandoned, so an injected hang never runs the work after its timeout).
        executor: where to run (the render thread); None -> a new daemon thread.

    Returns:
        What `fn` returns (its exceptions propagate).

    Raises:
        ValueError: on a non-positive timeout.
        StageTimeout: on expiry; the thread running `fn` is left behind.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    abandoned = threading.Event()
    # the caller's context (Prefect's task run: its logger and API settings live in context variables)
    context = contextvars.copy_context()

    def watched() -> R:
        if hang_s > 0:
            abandoned.wait(hang_s)
        if abandoned.is_set():
            raise StageTimeout(f"{what}: abandoned after its timeout")
        return context.run(fn, *args)

    future = executor.submit(watched) if executor is not None else _on_daemon_thread(watched, f"unihope-{what}")
    try:
        return future.result(timeout=timeout_s)
    except FutureTimeout:
        abandoned.set()
        raise StageTimeout(f"{what} did not finish within {timeout_s:g} s; the stuck call is abandoned and the "
                           "task retried (raise the flow's timeout if such batches are just slow)") from None
