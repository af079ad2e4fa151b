"""Progress bars for long steps (tqdm on stderr; quiet when GMMCORE_NO_PROGRESS is set)."""
from __future__ import annotations

import os
from typing import Iterable, Optional

from tqdm import tqdm


def progress(iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "", unit: str = "it"):
    """Wrap ``iterable`` in a progress bar (or return a manual bar when ``iterable`` is None)."""
    disable = bool(os.environ.get("GMMCORE_NO_PROGRESS"))
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                mininterval=1.0, leave=False)
