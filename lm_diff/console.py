"""One place for terminal output: the consoles and the progress helper every long stage uses.

- ``out()`` / ``err()``: rich consoles for stdout / stderr (no automatic highlighting: numbers stay plain).
- ``progress(description, total=None, enabled=True)``: a context manager yielding a :class:`Progress` with
  ``advance(n=1, info="")`` and ``update(completed, info="")``. On a terminal it draws a rich progress bar; without a
  terminal (CI, a log file) it prints one plain line at the start, one every ``LOG_EVERY_S`` seconds while the stage runs
  (step, total and the ``info`` text, e.g. loss / L0 / EV for training), and one at the end.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator, Optional

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as _RichProgress

LOG_EVERY_S = 10.0


def out() -> Console:
    """Console on standard output."""
    return Console(highlight=False)


def err() -> Console:
    """Console on standard error (progress, notes, warnings)."""
    return Console(stderr=True, highlight=False)


def is_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class Progress:
    """Progress of one stage: a rich bar on a terminal, a line every ``every`` seconds otherwise."""

    def __init__(self, description: str, total: Optional[float], enabled: bool, every: float = LOG_EVERY_S,
                 terminal: Optional[bool] = None):
        self.description = description
        self.total = total
        self.enabled = enabled
        self.every = every
        self.completed = 0.0
        self.info = ""
        self._bar: Optional[_RichProgress] = None
        self._task = None
        self._t0 = time.perf_counter()
        self._last = self._t0
        self._terminal = is_terminal() if terminal is None else terminal

    def __enter__(self) -> "Progress":
        if not self.enabled:
            return self
        if self._terminal:
            self._bar = _RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                      console=err(), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, info="")
        else:
            self._line("started")
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.stop()
        elif exc[0] is None:
            self._line(f"done in {time.perf_counter() - self._t0:.0f} s")

    def _line(self, what: str) -> None:
        of = f"/{self.total:g}" if self.total else ""
        info = f"  {self.info}" if self.info else ""
        err().print(f"{self.description}: {what} ({self.completed:g}{of}){info}", soft_wrap=True)

    def update(self, completed: float, info: str = "") -> None:
        self.completed = completed
        if info:
            self.info = info
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, info=self.info)
            return
        now = time.perf_counter()
        if now - self._last >= self.every:
            self._last = now
            self._line(f"{now - self._t0:.0f} s")

    def advance(self, n: float = 1, info: str = "") -> None:
        self.update(self.completed + n, info)


@contextlib.contextmanager
def progress(description: str, total: Optional[float] = None, enabled: bool = True, start: float = 0,
             every: float = LOG_EVERY_S) -> Iterator[Progress]:
    """``with progress("latent table", total=n) as p: p.advance(k)``; a no-op when ``enabled`` is false."""
    p = Progress(description, total, enabled, every=every)
    p.completed = start
    with p:
        yield p
