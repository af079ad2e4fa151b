"""Outputs that are never half-written.

Files are written to a temporary name beside the target and renamed into place, so a killed run
leaves either the old file or the new one.  :class:`OutputGuard` removes whatever a failed command
created, so bad input never leaves partial outputs behind.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it to ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".part" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path, data: Any) -> None:
    """Write JSON atomically (indent 1, keys in insertion order)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=_json_default))


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


class OutputGuard:
    """Remove what a command created in ``out_dir`` if the command fails.

    Usage::

        with OutputGuard(out_dir):
            ...  # write outputs; an exception removes the new files (and the folder if new)
    """

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self.existed = self.out_dir.exists()
        self.before = set(self.out_dir.rglob("*")) if self.existed else set()

    def __enter__(self) -> "OutputGuard":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None or exc_type is KeyboardInterrupt:
            return False
        if not self.existed:
            shutil.rmtree(self.out_dir, ignore_errors=True)
        else:
            for p in sorted(set(self.out_dir.rglob("*")) - self.before, reverse=True):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        return False
