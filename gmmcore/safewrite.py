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


# --------------------------------------------------------------------------------------------------
# the output folder of a verb: one rule for all (applied before anything is written)
# --------------------------------------------------------------------------------------------------
LOCK_NAME = ".gmmcore.lock"

# kind (recorded as "kind" in params.json / summary.json) -> the verb that writes it
KIND_VERBS = {"global": "refine", "focused": "refine-focused", "patches": "refine-patches",
              "patch": "refine-patches (one patch)", "heterogeneity": "heterogeneity", "conf2pose": "conf2pose",
              "import": "import", "reconstruct": "reconstruct", "simulate": "simulate",
              "expand-symmetry": "expand-symmetry", "local-resolution": "local-resolution", "run": "an older gmmcore"}

# summary.json keys that tell the verbs whose summaries carry no "kind" apart
_FLAT_KINDS = (("local-resolution", ("local_resolution", "window_px")), ("expand-symmetry", ("operators", "n_input")),
               ("reconstruct", ("pad", "sym", "particles")), ("import", ("star", "phase_flipped")))


def _read_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def folder_kind(folder) -> Optional[str]:
    """The kind of gmmcore output a folder holds (see :data:`KIND_VERBS`; "run": a run directory
    whose params.json names no kind), or None when it holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    params = _read_json(folder / "params.json") if (folder / "params.json").is_file() else None
    if params is not None and isinstance(params.get("kind"), str):
        return params["kind"]
    summary = _read_json(folder / "summary.json") if (folder / "summary.json").is_file() else None
    if summary is not None:
        if isinstance(summary.get("kind"), str):
            return summary["kind"]
        for kind, keys in _FLAT_KINDS:
            if all(k in summary for k in keys):
                return kind
    if (folder / "params.json").is_file():
        return "run"
    if (folder / "simulation.json").is_file():
        return "simulate"
    return None


def enclosing_run(path) -> Optional[Path]:
    """The outermost folder at or above ``path`` that holds gmmcore output (a run of any kind), or None."""
    p = Path(os.path.realpath(str(path)))
    found = None
    for folder in [p] + list(p.parents):
        if folder_kind(folder) is not None:
            found = folder
    return found


def _within(inner: str, outer: str) -> bool:
    """``inner`` is ``outer`` or below it (real paths)."""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class OutputClaim:
    """This process' claim on an output folder (or file): its lock files, the kind of run it
    writes, and what was there before (removed again when the command is refused)."""

    def __init__(self, out: Path, kind: Optional[str], locks: List[Path], created: bool, folder: bool):
        self.out, self.kind, self.locks, self.created, self.folder = out, kind, locks, created, folder
        self.before = set(out.rglob("*")) if folder and out.is_dir() else set()

    def release(self, refused: bool = False) -> None:
        """Remove the locks; ``refused``: also what the command wrote (and the folder it made)."""
        for lock in self.locks:
            try:
                data = _read_json(lock) or {}
                if data.get("pid") == os.getpid():
                    lock.unlink()
            except OSError:
                pass
        if not self.folder:
            if self.created and self.out.parent.is_dir() and not any(self.out.parent.iterdir()):
                self.out.parent.rmdir()  # the folder this claim made for an output file, still empty
            return
        if refused and self.out.is_dir() and not getattr(self, "shared", False):
            if self.created:
                shutil.rmtree(self.out, ignore_errors=True)
                return
            for p in sorted(set(self.out.rglob("*")) - self.before, reverse=True):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        elif self.created and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()


_CLAIMS: List[OutputClaim] = []


def claimed_kind(folder) -> Optional[str]:
    """The kind this process claimed ``folder`` for (None: not claimed here)."""
    real = os.path.realpath(str(folder))
    for c in _CLAIMS:
        if c.folder and os.path.realpath(str(c.out)) == real:
            return c.kind
    return None


def release_claims(refused: bool = False) -> None:
    """Release every output this process claimed (the command line does it when a verb ends)."""
    while _CLAIMS:
        _CLAIMS.pop().release(refused)


def _lock_text(lock: Path) -> Optional[str]:
    """Who holds ``lock`` ("`gmmcore VERB` (PID n on HOST, since T)"), or None when it is free or
    stale (its process is gone on this host; a stale lock is removed)."""
    import socket

    data = _read_json(lock)
    if data is None:
        if lock.exists():
            try:  # a half-written lock (killed while writing it): stale
                lock.unlink()
            except OSError:
                pass
        return None
    pid, host = data.get("pid"), data.get("host")
    if pid == os.getpid() and host == socket.gethostname():
        return None
    if host == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
        try:
            lock.unlink()
        except OSError:
            pass
        return None
    text = f"`gmmcore {data.get('verb', '?')}` (PID {pid} on {host}, since {data.get('since', '?')})"
    if host != socket.gethostname():  # its process cannot be checked from here
        text += f" — if it no longer runs there, delete {lock}"
    return text


def claim_output(out, kind: Optional[str], verb: str, inputs: Iterable = (), input_runs: Iterable = (),
                 folder: bool = True, field: str = "--out", lock_keys: Optional[Iterable[str]] = None) -> OutputClaim:
    """The one rule of every verb's output, before anything is written: ``out`` (a folder when
    ``folder``, else a file) is a usable path (:func:`check_output_path`); it is not, and does not
    hold, any of ``inputs`` (files or folders); it does not lie inside a run that holds an input
    (or one of ``input_runs``, e.g. ``--from``) nor inside any other gmmcore run; a folder does not
    hold a run of another ``kind``; and no other command is writing it (a lock file with PID and
    host; a lock whose process is gone on this host is stale and removed).  Each refusal is one
    :class:`InputError` line; then the lock is taken (``lock_keys``: per-part locks, e.g. one per
    patch, that only exclude the same parts and the whole) and the kind recorded for
    :class:`~gmmcore.refine.rundir.RunDir`.  Released by :func:`release_claims`."""
    import socket
    import time

    check_output_path(out, field, folder=folder)
    given = Path(out)
    real = os.path.realpath(str(out))
    ins = [str(i) for i in inputs if i]
    for i in ins:
        ri = os.path.realpath(i)
        if ri == real:
            raise InputError(f"is the input {i}; choose another output", path=out, field=field)
        if folder and _within(ri, real):
            raise InputError(f"holds the input {i}: writing there could replace it; choose another output folder",
                             path=out, field=field)
    runs = [os.path.realpath(str(r)) for r in input_runs if r]
    runs += [str(r) for r in (enclosing_run(i) for i in ins) if r is not None]
    for r in runs:
        if _within(real, r):
            what = "is" if real == r else "lies inside"
            raise InputError(f"{what} the input run {r}; choose an output folder outside it", path=out, field=field)
    home = enclosing_run(real if folder else os.path.dirname(real))
    if home is not None and (not folder or str(home) != real):
        raise InputError(f"lies inside the gmmcore {KIND_VERBS.get(folder_kind(home), 'run')} output {home}; "
                         "choose an output folder outside it", path=out, field=field)
    if folder and kind is not None:
        old = folder_kind(real)
        if old is not None and old != kind and old != "run":
            raise InputError(f"holds a `gmmcore {KIND_VERBS.get(old, old)}` run (kind {old!r}); this is a "
                             f"`gmmcore {verb}` run: choose another --out", path=out, field=field)
    # the lock
    base = given if folder else given.parent
    stem = LOCK_NAME if folder else f".{given.name}{LOCK_NAME}"
    names = [stem] if lock_keys is None else [f"{stem}.{k}" for k in lock_keys]
    if base.is_dir():
        held = [p for p in base.glob(stem + "*") if p.is_file()]
        for p in held:
            if lock_keys is not None and p.name != stem and p.name not in names:
                continue  # another part of the same run (e.g. another patch)
            who = _lock_text(p)
            if who is not None:
                raise InputError(f"is in use by {who}; wait for it to finish, or choose another output", path=out,
                                 field=field)
    created = not base.exists()
    base.mkdir(parents=True, exist_ok=True)
    stamp = {"pid": os.getpid(), "host": socket.gethostname(), "verb": verb,
             "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    locks = []
    claim = OutputClaim(given, kind, locks, created, folder)
    claim.shared = lock_keys is not None  # other commands write the same folder now: never clean it up
    for name in names:
        lock = base / name
        # written under a private name, then linked to the lock's name: a lock is never seen half-written
        tmp = base / f"{name}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(stamp))
        try:
            try:
                os.link(tmp, lock)
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links: exclusive create, then write
                fd = os.open(str(lock), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                with os.fdopen(fd, "w") as fh:
                    fh.write(json.dumps(stamp))
        except FileExistsError:
            who = _lock_text(lock) or "another command"
            claim.release(refused=True)
            raise InputError(f"is in use by {who}; wait for it to finish, or choose another output", path=out,
                             field=field) from None
        finally:
            tmp.unlink(missing_ok=True)
        locks.append(lock)
    claim.before = set(given.rglob("*")) if folder else set()
    if not _CLAIMS:
        import atexit

        atexit.register(release_claims)  # library use (no command line around it): released at exit at the latest
    _CLAIMS.append(claim)
    return claim


def is_lock(name: str) -> bool:
    """A lock file of :func:`claim_output` (not an output)."""
    return name.startswith(LOCK_NAME) or (name.startswith(".") and LOCK_NAME in name)
