"""Progress of long loops: a tqdm bar on a terminal, a few plain lines in a log file.

tqdm redraws its bar in place on a terminal; written to a file it leaves one line per redraw, so a log
of an evaluation over hundreds of images fills with them. :func:`progress` keeps tqdm's bar for a
terminal and otherwise prints one line per tenth of the work (``desc: 40/400 img (10 %), 12 s``).
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Optional, TextIO

from tqdm import tqdm

__all__ = ["Progress", "progress"]


class Progress:
    """``update(n, **postfix)`` after each item and ``close()`` at the end (or use it as a context manager)."""

    def __init__(self, total: int, desc: str, unit: str, file: TextIO, enabled: bool, lines: int) -> None:
        self.total, self.desc, self.unit, self.file = int(total), desc, unit, file
        self.done, self._start, self._bar = 0, time.monotonic(), None
        self._step = max(1, math.ceil(self.total / max(1, lines)))
        self._enabled = enabled and self.total > 0
        if self._enabled and _is_terminal(file):
            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=file)

    def update(self, n: int = 1, **postfix: Any) -> None:
        before, self.done = self.done, self.done + n
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(**postfix)
        elif self._enabled and (self.done // self._step > before // self._step or self.done == self.total):
            extra = "".join(f", {k} {v}" for k, v in postfix.items())
            print(f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done // self.total} %), "
                  f"{time.monotonic() - self._start:.0f} s{extra}", file=self.file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _is_terminal(file: TextIO) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):
        return False


def progress(total: int, desc: str, unit: str = "img", file: Optional[TextIO] = None, enabled: bool = True,
             lines: int = 10) -> Progress:
    """A progress report over ``total`` items on ``file`` (default stderr): tqdm's bar when ``file`` is a
    terminal, else a line each time another ``1 / lines`` of the work is done (at most ``lines`` lines)."""
    return Progress(total, desc, unit, file if file is not None else sys.stderr, enabled, lines)
