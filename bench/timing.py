"""Timing helper shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_time_s(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` calls, in seconds (the least disturbed run on a shared machine)."""
    times_s = []
    for _ in range(repeats):
        start_s = time.perf_counter()
        fn()
        times_s.append(time.perf_counter() - start_s)
    return min(times_s)
