"""A rich progress display of a build's stages for an interactive terminal (the CLI's front end only).

`unihope build` and `unihope demo` wrap the build in `terminal_progress()`: on a terminal, each
stage gets a bar (frames done / total, rate, ETA) fed by `unihope.progress`'s observer hook; when
stderr is not a terminal (CI, a pipe, a log file) it does nothing and the plain log lines stay the
only progress output. While the bars show, log handlers write above them (`_logging_through_display`).
"""

from __future__ import annotations

import logging
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
        # a stage of unknown size so far (the index while it lists the source) pulses instead of showing 0/1
        total = None if total_frames == 0 and done_frames == 0 else max(total_frames, 1)
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(stage, total=total)
        self._progress.update(self._tasks[stage], completed=done_frames, total=total)


@contextmanager
def terminal_progress(enabled: bool | None = None, console=None) -> Iterator[RichStageDisplay | None]:
    """Show stage bars for every build started inside the block, when stderr is a terminal.

    While the bars show, every logging handler that wrote to the terminal (Prefect's console handler
    included) writes through the display instead, so log lines and library warnings print above the
    bars rather than through them; the handlers get their streams back at the end.

    Args:
        enabled: force on or off; None -> `is_interactive()`.
        console: the rich Console to draw on (tests pass one); None -> stderr.
    """
    if not (is_interactive() if enabled is None else enabled):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("frames"), TimeRemainingColumn(), console=console or Console(stderr=True),
                        transient=False)
    display = RichStageDisplay(progress)
    terminal_streams = (sys.stdout, sys.stderr)  # before rich swaps them for its proxies
    add_display(display)
    try:
        with progress, _logging_through_display(terminal_streams):
            yield display
    finally:
        remove_display(display)


@contextmanager
def _logging_through_display(terminal_streams: tuple) -> Iterator[None]:
    """Point handlers that write to `terminal_streams` (stdout, stderr) at the live display's proxies.

    rich's live display replaces sys.stdout / sys.stderr with proxies that print above the bars, but
    a handler made earlier (Prefect's, configured when Prefect is imported) holds the real stream
    and would write through the bars.
    """
    proxies = dict(zip(map(id, terminal_streams), (sys.stdout, sys.stderr)))
    swapped: list[tuple[object, str, object]] = []  # (owner, attribute, original value)
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    for handler in {id(h): h for logger in loggers for h in logger.handlers}.values():
        if isinstance(handler, logging.StreamHandler) and id(handler.stream) in proxies:
            swapped.append((handler, "stream", handler.stream))
            handler.stream = proxies[id(handler.stream)]
        handler_console = getattr(handler, "console", None)  # Prefect's handler prints through its own Console
        if handler_console is not None and id(getattr(handler_console, "file", None)) in proxies:
            swapped.append((handler_console, "file", handler_console.file))
            handler_console.file = proxies[id(handler_console.file)]
    try:
        yield
    finally:
        for owner, attribute, original in reversed(swapped):
            setattr(owner, attribute, original)
