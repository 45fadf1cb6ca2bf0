"""Progress of a build: plain log lines (frames done / total per stage, rate, ETA) plus optional observers.

Observers receive `(stage, done_frames, total_frames)` on every update: the build flow adds one
that publishes Prefect progress artifacts (`unihope.tasks.artifacts`), and the CLI registers a rich
display for an interactive terminal (`unihope.rich_progress`) with `add_display`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MIN_INTERVAL_S = 2.0  # at most one line per stage this often (plus one when a stage completes)

ProgressObserver = Callable[[str, int, int], None]  # (stage, done_frames, total_frames)

# Displays registered by the process's front end (the CLI's rich display); every BuildProgress
# created while one is registered reports to it, so the flow need not know about terminals.
_DISPLAYS: list[ProgressObserver] = []


def add_display(observer: ProgressObserver) -> None:
    """Register a display that every BuildProgress of this process reports to (until removed)."""
    _DISPLAYS.append(observer)


def remove_display(observer: ProgressObserver) -> None:
    """Unregister a display added with `add_display` (no-op when absent)."""
    if observer in _DISPLAYS:
        _DISPLAYS.remove(observer)


@dataclass
class _StageState:
    total_frames: int
    done_frames: int = 0
    done_items: int = 0
    start_s: float | None = None
    last_emit_s: float = float("-inf")


def format_duration(seconds: float) -> str:
    """`1:02:03` / `2:03` style; `?` when unknown."""
    if seconds != seconds or seconds == float("inf"):  # nan or inf
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class BuildProgress:
    """Counts frames per stage as tasks finish and emits one readable line per update.

    Plain Python (no Prefect, no terminal control) so the lines read the same in a terminal,
    in Prefect's run logs and in CI output.
    """

    def __init__(
        self,
        emit: Callable[[str], None],
        min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        observers: tuple[ProgressObserver, ...] = (),
    ) -> None:
        """Args: emit: receives each line; min_interval_s: throttle per stage; clock: seconds (tests inject
        one); observers: called with (stage, done, total) on every update, unthrottled."""
        self._emit = emit
        self._observers = tuple(observers)
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._stages: dict[str, _StageState] = {}

    def add_stage(self, stage: str, total_frames: int) -> None:
        """Declare a stage and how many frames it will handle (its clock starts now; 0 = not known yet, see `complete`)."""
        if total_frames < 0:
            raise ValueError(f"total_frames must be >= 0, got {total_frames} for stage {stage!r}")
        self._stages[stage] = _StageState(total_frames=total_frames, start_s=self._clock())
        self._notify(stage)

    def advance(self, stage: str, num_frames: int) -> None:
        """Count `num_frames` more frames done in `stage`; emits a line (throttled; always at 100%)."""
        if stage not in self._stages:
            raise ValueError(f"unknown stage {stage!r}; call add_stage first (known: {sorted(self._stages)})")
        state = self._stages[stage]
        state.done_frames += num_frames
        state.done_items += 1
        self._notify(stage)
        now = self._clock()
        is_complete = state.done_frames >= state.total_frames
        if is_complete or now - state.last_emit_s >= self._min_interval_s:
            state.last_emit_s = now
            self._emit(self.line(stage))

    def complete(self, stage: str, total_frames: int) -> None:
        """Finish a stage whose size was unknown when it began (added with 0 frames: the index), in one step."""
        if stage not in self._stages:
            raise ValueError(f"unknown stage {stage!r}; call add_stage first (known: {sorted(self._stages)})")
        state = self._stages[stage]
        state.total_frames = total_frames
        self.advance(stage, total_frames - state.done_frames)

    def _notify(self, stage: str) -> None:
        state = self._stages[stage]
        for observer in (*self._observers, *_DISPLAYS):
            observer(stage, state.done_frames, state.total_frames)

    def rate_fps(self, stage: str) -> float:
        """Frames per second since the stage started (nan before any time has passed)."""
        state = self._stages[stage]
        elapsed_s = self._clock() - (state.start_s or 0.0)
        return state.done_frames / elapsed_s if elapsed_s > 0 else float("nan")

    def line(self, stage: str) -> str:
        """`annotate    96/192 frames  50%   45.1 frames/s  ETA 0:02` for one stage."""
        state = self._stages[stage]
        rate = self.rate_fps(stage)
        remaining = max(0, state.total_frames - state.done_frames)
        eta_s = remaining / rate if rate and rate == rate and rate > 0 else float("nan")
        percent = 100.0 * state.done_frames / state.total_frames if state.total_frames else 100.0
        eta = "done" if remaining == 0 else f"ETA {format_duration(eta_s)}"
        return (f"{stage:<10} {state.done_frames:>7}/{state.total_frames:<7} frames {percent:5.1f}%  "
                f"{rate:8.1f} frames/s  {eta}")

    def done_frames(self, stage: str) -> int:
        return self._stages[stage].done_frames
