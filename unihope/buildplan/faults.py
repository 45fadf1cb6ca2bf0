"""Fault injection (`flow.fail_once` / UNIHOPE_FAIL_ONCE): which task attempt fails or hangs on purpose.

Plain Python: the task side (`unihope.tasks.options.maybe_fail_once`) reads Prefect's attempt counter.
"""

from __future__ import annotations

from collections.abc import Sequence

FAIL_ONCE_ENV = "UNIHOPE_FAIL_ONCE"
HANG_SUFFIX = "@hang"  # fail_once item mode: hang the first attempt instead of failing it


def parse_fail_once(text: str | None) -> tuple[str, ...]:
    """Parse UNIHOPE_FAIL_ONCE: comma-separated task names, each optionally `name:index`."""
    if not text:
        return ()
    return tuple(item.strip() for item in text.split(",") if item.strip())


def should_fail(task_name: str, item_idx: int, fail_once: Sequence[str], run_count: int) -> bool:
    """True when `task_name` (or `task_name:item_idx`) is listed and this is its first attempt."""
    if run_count > 1:
        return False
    return task_name in fail_once or f"{task_name}:{item_idx}" in fail_once


def should_hang(task_name: str, item_idx: int, fail_once: Sequence[str], run_count: int) -> bool:
    """True when `task_name@hang` (or `task_name:item_idx@hang`) is listed and this is its first attempt."""
    if run_count > 1:
        return False
    return f"{task_name}{HANG_SUFFIX}" in fail_once or f"{task_name}:{item_idx}{HANG_SUFFIX}" in fail_once
