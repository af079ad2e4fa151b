"""Progress bars for long steps (tqdm on stderr; quiet when GMMCORE_NO_PROGRESS is set or when tqdm
is not installed — e.g. a bare GPU machine running the benchmarks)."""
from __future__ import annotations

import os
from typing import Iterable, Optional

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover — exercised on machines without tqdm
    tqdm = None


class _Quiet:
    """The part of tqdm's interface the engine uses, doing nothing."""

    def __init__(self, iterable=None):
        self._it = iterable

    def __iter__(self):
        return iter(self._it if self._it is not None else ())

    def update(self, n=1):
        pass

    def close(self):
        pass

    def set_postfix(self, *args, **kwargs):
        pass


def progress(iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "", unit: str = "it"):
    """Wrap ``iterable`` in a progress bar (or return a manual bar when ``iterable`` is None)."""
    disable = bool(os.environ.get("GMMCORE_NO_PROGRESS"))
    if tqdm is None:
        return _Quiet(iterable)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                mininterval=1.0, leave=False)
