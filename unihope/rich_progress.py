"""A rich progress display of a build's stages for an interactive terminal (the CLI's front end only).

`unihope build` and `unihope demo` wrap the build in `terminal_progress()`: on a terminal, each
stage gets a bar (frames done / total, rate, ETA) fed by `unihope.progress`'s observer hook; when
stderr is not a terminal (CI, a pipe, a log file) it does nothing and the plain log lines stay the
only progress output.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from unihope.progress import add_display, remove_display


def is_interactive(stream=None) -> bool:
    """Whether `stream` (default stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


class RichStageDisplay:
    """A `unihope.progress` observer drawing one rich progress bar per stage."""

    def __init__(self, progress) -> None:
        self._progress = progress
        self._tasks: dict[str, int] = {}

    def __call__(self, stage: str, done_frames: int, total_frames: int) -> None:
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(stage, total=max(total_frames, 1))
        self._progress.update(self._tasks[stage], completed=done_frames, total=max(total_frames, 1))


@contextmanager
def terminal_progress(enabled: bool | None = None) -> Iterator[RichStageDisplay | None]:
    """Show stage bars for every build started inside the block, when stderr is a terminal.

    Args:
        enabled: force on or off; None -> `is_interactive()`.
    """
    if not (is_interactive() if enabled is None else enabled):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("frames"), TimeRemainingColumn(), console=Console(stderr=True), transient=False)
    display = RichStageDisplay(progress)
    add_display(display)
    try:
        with progress:
            yield display
    finally:
        remove_display(display)
