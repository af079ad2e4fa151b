"""Progress of long steps: a tqdm bar on a terminal, progress *lines* in logs.

On a terminal (stderr is a TTY) :func:`progress` shows a tqdm bar.  Otherwise — a Scipion log, a
batch job, a pipe — it prints one line every 10 % or 30 s with the rate and the time left, e.g.
``iter 1 half 2: 4000/20000 ptcl (20 %), 152 ptcl/s, ETA 1 min 45 s`` (stdout, flushed).
``GMMCORE_NO_PROGRESS`` set: nothing; ``GMMCORE_PROGRESS=lines|bar`` forces one form.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Optional

from tqdm import tqdm

LINE_EVERY_FRACTION = 0.10
LINE_EVERY_SECONDS = 30.0


def _mode() -> str:
    if os.environ.get("GMMCORE_NO_PROGRESS"):
        return "off"
    forced = os.environ.get("GMMCORE_PROGRESS", "").strip().lower()
    if forced in ("lines", "bar", "off"):
        return forced
    try:
        return "bar" if sys.stderr.isatty() else "lines"
    except (AttributeError, ValueError):
        return "lines"


def _duration(s: float) -> str:
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


class ProgressLines:
    """A tqdm-like counter (``update``, ``close``, iteration) that prints progress lines."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "",
                 unit: str = "it", stream=None, clock=time.monotonic):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream
        self.clock = clock
        self.n = 0
        self.t0 = clock()
        self._last_t = self.t0
        self._last_frac = 0.0
        self._closed = False

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update(1)
        self.close()

    def line(self) -> str:
        elapsed = self.clock() - self.t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            pct = 100.0 * self.n / self.total
            text = f"{head}{self.n}/{self.total} {self.unit} ({pct:.0f} %), {rate:.1f} {self.unit}/s"
            if 0 < self.n < self.total and rate > 0:
                text += f", ETA {_duration((self.total - self.n) / rate)}"
            elif self.n >= self.total:
                text += f", {_duration(elapsed)}"
            return text
        return f"{head}{self.n} {self.unit}, {rate:.1f} {self.unit}/s"

    def _emit(self) -> None:
        stream = self.stream or sys.stdout
        print(self.line(), file=stream, flush=True)
        self._last_t = self.clock()
        self._last_frac = self.n / self.total if self.total else 0.0

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = self.clock()
        frac = self.n / self.total if self.total else 0.0
        if self.total and self.n >= self.total:
            return  # the final line comes from close()
        if (self.total and frac - self._last_frac >= LINE_EVERY_FRACTION) or now - self._last_t >= LINE_EVERY_SECONDS:
            self._emit()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n:
                self._emit()


class _Off:
    def __init__(self, iterable=None, **_):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress(iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "", unit: str = "it"):
    """Wrap ``iterable`` in a progress report (or return a manual one when ``iterable`` is None)."""
    mode = _mode()
    if mode == "off":
        return _Off(iterable)
    if mode == "lines":
        return ProgressLines(iterable, total=total, desc=desc, unit=unit)
    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=1.0, leave=False)
