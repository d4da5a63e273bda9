"""Progress reporting for the slow steps of building the default guest.

A kernel build takes minutes and a download seconds; the user should see that
something is happening without a flood of make output. On a terminal the
reporter redraws one status line (stage, elapsed time, a bar or the last make
target); when stderr is a pipe or a file it prints plain lines, at most one
every `interval` seconds, so CI logs stay short and honest.

    progress = Progress()
    progress.stage("extracting linux-source-6.1")
    progress.update(done_bytes, total_bytes)
    progress.note("CC kernel/fork.o")
    progress.done()
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Optional, TextIO


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """One stage at a time, rendered live on a tty or as periodic plain lines."""

    def __init__(self, stream: Optional[TextIO] = None, interval: float = 30.0, live: Optional[bool] = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.interval = interval
        self._stage = ""
        self._start = 0.0
        self._last_draw = 0.0
        self._detail = ""
        self._drawn = False

    def stage(self, name: str) -> None:
        """Begin a named stage; the previous one is closed first."""
        if self._stage:
            self.done()
        self._stage = name
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._detail = ""
        if self.live:
            self._draw(force=True)
        else:
            self._print(f"xvm: {name} ...")
            self._last_draw = self._start

    def update(self, done: int, total: int) -> None:
        """Report `done` of `total` units (bytes, files) of the current stage."""
        if total > 0:
            percent = min(100, done * 100 // total)
            if self.live:
                width = 20
                filled = width * percent // 100
                self._detail = f"[{'#' * filled}{'.' * (width - filled)}] {percent:3d}%"
            else:
                self._detail = f"{percent}%"
        else:
            self._detail = f"{done}"
        self._draw()

    def note(self, text: str) -> None:
        """Show a short free-form detail, such as the target make is building."""
        self._detail = text.strip()
        self._draw()

    def message(self, text: str) -> None:
        """Print a line that must stay visible (a warning, a result)."""
        if self.live and self._drawn:
            self.stream.write("\r\033[K")
            self._drawn = False
        self._print(f"xvm: {text}")
        if self.live and self._stage:
            self._draw(force=True)

    def done(self, result: str = "done") -> None:
        """Close the current stage with its total time."""
        if not self._stage:
            return
        line = f"xvm: {self._stage}: {result} ({_elapsed(time.monotonic() - self._start)})"
        if self.live:
            self.stream.write("\r\033[K" + line + "\n")
            self.stream.flush()
            self._drawn = False
        else:
            self._print(line)
        self._stage = ""

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.live:
            if not force and now - self._last_draw < 0.1:
                return
            columns = shutil.get_terminal_size((80, 24)).columns
            line = f"xvm: {self._stage} [{_elapsed(now - self._start)}] {self._detail}"
            self.stream.write("\r\033[K" + line[: max(10, columns - 1)])
            self.stream.flush()
            self._drawn = True
        else:
            if now - self._last_draw < self.interval:
                return
            self._print(f"xvm: {self._stage}: {_elapsed(now - self._start)} elapsed {self._detail}".rstrip())
        self._last_draw = now

    def _print(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
