"""Outputs that are never half-written, and never written over the inputs.

Files are written to a temporary name beside the target and renamed into place, so a killed run
leaves either the old file or the new one.  :class:`OutputGuard` removes whatever a failed command
created, so bad input never leaves partial outputs behind.

Rules every verb applies before it writes anything (the one place they live):

* :func:`check_output_path` — an output path a user typed is usable: not an existing file where a
  folder is meant (or the reverse), not below a regular file, no name longer than the file system
  allows, on a writable file system.  Each is one :class:`~gmmcore.errors.InputError` line.
* :func:`refuse_overwriting_inputs` — the data-loss rule: no output file may be, or replace, an
  input file or a file the input references (image stacks, maps, models); a verb whose output is
  a folder it fills may not write into a folder holding its inputs (``gmmcore import --out`` the
  input's own folder would otherwise replace ``particles.star`` / ``particles.mrcs``).
* :func:`remove_stale_temporaries` — temporaries left by a killed run (SIGKILL cannot be caught)
  are removed when a verb starts in the same folder; :func:`sigterm_as_interrupt` makes SIGTERM
  unwind like Ctrl-C, so temporaries are removed on the way out.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional

from .errors import InputError


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


# --------------------------------------------------------------------------------------------------
# rules for output paths (applied before anything is written)
# --------------------------------------------------------------------------------------------------
def _existing_ancestor(p: Path) -> Path:
    a = p
    while not a.exists() and a != a.parent:
        a = a.parent
    return a


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(str(folder), "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def check_output_path(path, field: str = "--out", folder: bool = True) -> Path:
    """Refuse an output path (a folder when ``folder``, else a file) that cannot be written, with
    one :class:`InputError` line naming it: an existing file where a folder is meant (or a folder
    where a file is), a path below a regular file, a name longer than the file system allows, a
    read-only file system or a folder without write permission.  Creates nothing; returns the path."""
    p = Path(path)
    if not str(path).strip():
        raise InputError("empty path", field=field)
    p = Path(os.path.abspath(p))
    # walk down from the root: name lengths are checked before a too-long name is ever stat'ed
    anc, exists, limit = Path(p.parts[0]), True, 255
    for part in p.parts[1:]:
        if exists and not anc.is_dir():
            raise InputError(f"is below {anc}, which is a file, not a folder", path=path, field=field)
        limit = _name_max(anc) if exists else limit
        if len(os.fsencode(part)) > limit:
            raise InputError(f"the name {part[:40]}... is {len(os.fsencode(part))} bytes long; the file system "
                             f"allows {limit}", path=path, field=field)
        if exists and os.path.lexists(anc / part):
            anc = anc / part
        else:
            exists = False
    if p.exists():
        if folder and not p.is_dir():
            raise InputError("exists and is a file, not a folder; choose a folder", path=path, field=field)
        if not folder and p.is_dir():
            raise InputError("is a folder; give a file name", path=path, field=field)
    target = anc if anc.is_dir() else anc.parent  # the folder where something will be created
    try:
        readonly = bool(os.statvfs(str(target)).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        readonly = False
    if readonly:
        raise InputError(f"cannot write: {target} is on a read-only file system", path=path, field=field)
    if not os.access(str(target), os.W_OK | os.X_OK):
        raise InputError(f"cannot write: no write permission in {target}", path=path, field=field)
    return Path(path)


def _identity(path) -> tuple:
    """(real path, (device, inode) or None) of a path."""
    real = os.path.realpath(str(path))
    try:
        st = os.stat(real)
        return real, (st.st_dev, st.st_ino)
    except OSError:
        return real, None


def refuse_overwriting_inputs(outputs: Iterable, inputs: Iterable, out_dir=None, field: str = "--out") -> None:
    """The data-loss rule (before anything is written): no file in ``outputs`` may be, or replace,
    a file in ``inputs`` (the input files and every file they reference), compared by real path and
    by inode (hard links, symbolic links); and ``out_dir``, when given (a verb that fills a folder),
    may not be a folder that holds one of the ``inputs``.  :class:`InputError` naming the input."""
    ins = {}
    inodes = {}
    for f in inputs:
        if f is None:
            continue
        real, ino = _identity(f)
        ins.setdefault(real, str(f))
        if ino is not None:
            inodes.setdefault(ino, str(f))
    if out_dir is not None:
        od = os.path.realpath(str(out_dir))
        for real, given in ins.items():
            if os.path.dirname(real) == od:
                raise InputError(f"is the folder of the input {given}: writing there could replace the inputs; "
                                 "choose another output folder", path=out_dir, field=field)
    for o in outputs:
        real, ino = _identity(o)
        hit = ins.get(real) or (inodes.get(ino) if ino is not None else None)
        if hit is not None:
            raise InputError(f"would replace the input {hit}; choose another output", path=o, field=field)


# --------------------------------------------------------------------------------------------------
# temporaries of killed runs
# --------------------------------------------------------------------------------------------------
# atomic_path / StackWriter temporaries: "." + name + "." + 8 mkstemp characters + ".part" [+ suffix]
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.part(\.[A-Za-z0-9]+)?$")


def is_temporary(name: str) -> bool:
    return bool(_TEMPORARY.match(name))


def remove_stale_temporaries(folder) -> List[Path]:
    """Remove the temporaries a killed run left directly in ``folder`` (only names this module's
    writers make); returns what was removed.  Call it where no other process writes the folder."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if is_temporary(p.name) and p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM raises KeyboardInterrupt in the main thread (as Ctrl-C does), so
    ``finally`` blocks and writers' ``__exit__`` remove their temporaries before the process ends.
    Elsewhere than the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# errno values of OSErrors that are the user's or the machine's condition, not a bug: reported in
# one line by the command line (never a traceback)
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.EFBIG}


def os_error_line(exc: OSError) -> Optional[str]:
    """One line for an OSError a user can act on (full disk, read-only, permissions, ...), else None."""
    if exc.errno not in USER_ERRNOS:
        return None
    what = exc.strerror or str(exc)
    where = exc.filename
    hint = {errno.ENOSPC: "; free space or choose another output folder",
            errno.EDQUOT: "; free space or choose another output folder"}.get(exc.errno, "")
    return f"{where}: {what}{hint}" if where else f"{what}{hint}"
