"""Particle image stacks: ``index@path`` names, path resolution, streamed reading, stack writing.

* :func:`parse_image_name` — RELION ``"12@path.mrcs"`` (1-based) → ``(11, "path.mrcs")``.
* :func:`resolve_stack_path` — find a stack named relatively in a star/.cs file.
* :func:`iter_images` — stream a table's images in chunks (memory bounded by the chunk size, not by
  the number of particles), grouped by file, through ``mrcfile`` memory maps; :class:`StackRefs` /
  :func:`iter_stack_images` — the same from compact (stack, index) references (what a worker is sent).
* :class:`StackWriter` — write an ``.mrcs`` incrementally; it appears under its name only when
  closed successfully.
* :func:`match_image_names` — map particles to the rows of a reference file by image index + path.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import mrcfile
import numpy as np

from ..errors import STACK_ROOT, InputError
from ..safewrite import _umask
from ..particles import KEYS_BLOCK, image_keys
from .mrc import set_label


# --------------------------------------------------------------------------------------------------
# names and paths
# --------------------------------------------------------------------------------------------------
def parse_image_name(name) -> Tuple[int, str]:
    """``"12@path.mrcs"`` → ``(11, "path.mrcs")`` (0-based index).  A bare path means image 0."""
    s = str(name).strip()
    if "@" not in s:
        if not s:
            raise InputError("empty image name", field="rlnImageName")
        return 0, s
    i, p = s.split("@", 1)
    try:
        idx = int(i)
    except ValueError:
        raise InputError(f"bad image name {s!r} (expected index@path)", field="rlnImageName") from None
    if idx < 1 or not p:
        raise InputError(f"bad image name {s!r} (index is 1-based, path must not be empty)",
                         field="rlnImageName")
    return idx - 1, p


def format_image_name(index0: int, path: str) -> str:
    """``(0, "a.mrcs")`` → ``"000001@a.mrcs"`` (RELION style)."""
    return f"{int(index0) + 1:06d}@{path}"


class StackLocator:
    """Finds the stacks a star/.cs file names, where RELION and cryoSPARC users keep them.

    A name is tried (in this order, the first existing file wins):

    1. as given, when absolute;
    2. relative to ``image_root`` (``--stack-root``), the star/.cs file's folder ``star_dir``, the
       working folder, then every folder above ``star_dir`` — RELION names are relative to the
       project folder (the one holding ``Extract/jobNNN/``), cryoSPARC's to the project folder
       (holding ``J12/extract/``), and the star/.cs usually sits one or more folders below it;
    3. without its leading folders (``/old/disk/proj/Extract/job012/a.mrcs`` →
       ``Extract/job012/a.mrcs`` → ``job012/a.mrcs`` → ``a.mrcs``), longest first, relative to
       ``image_root``, ``star_dir`` and the folders above it: stacks moved or copied elsewhere.

    A leading ``>`` (cryoSPARC) is ignored.  Folder look-ups are cached, so thousands of stacks
    resolve quickly.
    """

    def __init__(self, star_dir=None, image_root=None, source=None):
        self.star_dir = Path(star_dir).resolve() if star_dir else None
        self.image_root = Path(image_root).resolve() if image_root else None
        self.source = source if source is not None else (None if star_dir is None else str(star_dir))
        self.cwd = Path.cwd()
        above = list(self.star_dir.parents) if self.star_dir else []
        as_given = [self.image_root, self.star_dir, self.cwd] + above
        moved = [self.image_root, self.star_dir] + above
        self._as_given = list(dict.fromkeys(b for b in as_given if b is not None))
        self._moved = list(dict.fromkeys(b for b in moved if b is not None))
        self._dirs: Dict[Path, bool] = {}

    def _isdir(self, d: Path) -> bool:
        hit = self._dirs.get(d)
        if hit is None:
            hit = self._dirs[d] = d.is_dir()
        return hit

    def _rules(self, parts: Tuple[str, ...]):
        """(base, k): try base / parts[k:]."""
        for base in self._as_given:
            yield base, 0
        for k in range(1, len(parts)):
            for base in self._moved:
                yield base, k

    def find(self, path) -> Optional[str]:
        """Absolute path of the stack named ``path``, or None."""
        path = str(path).strip()
        if path.startswith(">"):
            path = path[1:]
        p = Path(path)
        if p.is_absolute():
            if p.is_file():
                return str(p.resolve())
            parts = p.parts[1:]
            rules = [(b, k) for k in range(0, len(parts)) for b in self._moved]
        else:
            parts = p.parts
            rules = list(self._rules(parts))
        for base, k in rules:
            rest = parts[k:]
            if not rest:
                continue
            cand = base.joinpath(*rest)
            if self._isdir(cand.parent) and cand.is_file():
                return str(cand.resolve())
        return None

    def searched(self) -> str:
        """The folders searched, in words (for error messages)."""
        out = []
        if self.image_root is not None and self.image_root != self.star_dir:
            out.append(f"the stacks folder {self.image_root}")
        if self.star_dir is not None:
            out.append(f"{self.star_dir} and the folders above it")
        out.append(f"the working folder {self.cwd}")
        return "; ".join(out)

    def missing_error(self, path, n_missing: int = 1, n_total: int = 1) -> InputError:
        count = f" (and {n_missing - 1} more of {n_total} stacks)" if n_missing > 1 else ""
        return InputError(f"image stack {str(path).lstrip('>')!r} not found{count}; looked for it, and for it "
                          f"without its leading folders, in: {self.searched()}",
                          path=self.source, field="rlnImageName", remedy=STACK_ROOT)

    def resolve(self, path) -> str:
        """Like :meth:`find`, but a missing stack is an :class:`InputError` naming the folders searched."""
        hit = self.find(path)
        if hit is None:
            raise self.missing_error(path)
        return hit


def resolve_stack_path(path, star_dir=None, image_root=None, source=None) -> str:
    """Absolute path of a stack named ``path`` in a star/.cs file (see :class:`StackLocator` for
    where it is looked for).  :class:`InputError` names ``source`` (the star file), rlnImageName and
    the folders searched when none exists."""
    return StackLocator(star_dir, image_root, source).resolve(path)


STAMP_BYTES = 1 << 20  # bytes hashed at each end of a stack by :func:`stack_stamp`


def stack_stamp(path) -> str:
    """A cheap content stamp of a stack: its size and a BLAKE2 hash of its first and last MiB
    ("SIZE:HEX").  A star written together with its stack records it (``gmmcore import``), so a
    star read with a stack written by another import (a kill between the two renames) is refused."""
    import hashlib

    size = os.path.getsize(path)
    h = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as fh:
        h.update(fh.read(STAMP_BYTES))
        if size > STAMP_BYTES:
            fh.seek(max(STAMP_BYTES, size - STAMP_BYTES))
            h.update(fh.read(STAMP_BYTES))
    return f"{size}:{h.hexdigest()}"


def stack_shape(path) -> Tuple[int, int, int]:
    """(n_images, ny, nx) of an MRC stack, from its header."""
    from .mrc import open_mrc

    with open_mrc(path, what="MRC stack", header_only=True) as m:
        h = m.header
        nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
    return nz, ny, nx


def _table_dirs(table):
    star_dir = table.meta.get("star_dir") if table.meta else None
    if star_dir is None and table.source:
        star_dir = str(Path(table.source).resolve().parent)
    return star_dir, table.image_root


def table_locator(table) -> StackLocator:
    """The :class:`StackLocator` of a particle table (its file's folder, its image root)."""
    star_dir, root = _table_dirs(table)
    return StackLocator(star_dir, root, table.source or None)


def locate_image_names(table) -> Tuple[np.ndarray, List[str]]:
    """``(names, missing)``: the table's image names with the stacks that exist made absolute
    (``index@/abs/path``) and the others as given; ``missing`` lists the stack paths not found."""
    loc = table_locator(table)
    keys = image_keys(table.image_name, table.source or None)
    found = [loc.find(p) for p in keys.paths]
    raw = [str(nm).strip() for nm in table.image_name]
    out = [raw[r] if found[c] is None else f"{i + 1:06d}@{found[c]}"
           for r, (i, c) in enumerate(zip(keys.index0.tolist(), keys.path_code.tolist()))]
    missing = [p for p, hit in zip(keys.paths, found) if hit is None]
    return np.asarray(out, dtype=object), missing


def resolved_image_names(table) -> np.ndarray:
    """The table's image names with their stack paths made absolute (``index@/abs/path``);
    :class:`InputError` naming the first missing stack and the folders searched otherwise."""
    names, missing = locate_image_names(table)
    if missing:
        raise table_locator(table).missing_error(missing[0], len(missing), len(image_keys(table.image_name).paths))
    return names


def referenced_stacks(table, required: bool = False) -> List[str]:
    """The absolute paths of the stacks the table names (inputs an output must not replace): those
    that exist, or with ``required`` all of them (else :class:`InputError` naming the first missing
    one and the folders searched — for verbs that will read the images, before they write)."""
    loc = table_locator(table)
    paths = image_keys(table.image_name, table.source or None).paths
    found = [loc.find(p) for p in paths]
    missing = [p for p, f in zip(paths, found) if f is None]
    if required and missing:
        raise loc.missing_error(missing[0], len(missing), len(paths))
    return [f for f in found if f is not None]


def names_resolving_from(table, folder) -> np.ndarray:
    """The table's image names rewritten so they resolve from ``folder`` (where a star will be
    written): stacks inside ``folder`` (or below it) relative to it, all others absolute.  Stacks
    that cannot be found keep their names.  (The rule for every star gmmcore writes for its own
    outputs: ``gmmcore import``, ``refine``'s ``final/particles.star``.)"""
    folder = Path(folder).resolve()
    loc = table_locator(table)
    keys = image_keys(table.image_name, table.source or None)
    # a found stack's absolute path as written (once per stack, not per particle); None: not found
    written = [None if f is None else _path_from(folder, f) for f in (loc.find(p) for p in keys.paths)]
    kept: Dict[str, Optional[str]] = {}  # a missing stack's path as named → as written (None: kept)
    out = np.empty(len(keys.index0), dtype=object)  # each name made once (a million rows: no second copy)
    rows = ((r, i, c) for b0 in range(0, out.size, KEYS_BLOCK)  # Python ints KEYS_BLOCK at a time
            for r, i, c in zip(range(b0, b0 + KEYS_BLOCK), keys.index0[b0:b0 + KEYS_BLOCK].tolist(),
                               keys.path_code[b0:b0 + KEYS_BLOCK].tolist()))
    for r, i, c in rows:
        q = written[c]
        if q is not None:
            out[r] = format_image_name(i, q)
            continue
        nm = str(table.image_name[r]).strip()  # stack not found: the name as given, an absolute path rewritten
        i, p = parse_image_name(nm)
        if p not in kept:
            kept[p] = _path_from(folder, p)
        out[r] = nm if kept[p] is None else format_image_name(i, kept[p])
    return out


def _path_from(folder: Path, path: str) -> Optional[str]:
    """An absolute stack ``path`` as written in a star in ``folder`` (relative when inside it, else
    as given); None for a relative path (kept as it is)."""
    if not os.path.isabs(path):
        return None
    try:
        return str(Path(path).relative_to(folder))
    except ValueError:
        return path


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------
def _open_stack(path):
    from .mrc import open_mrc

    return open_mrc(path, what="MRC stack", mmap=True)


@dataclass(frozen=True)
class StackRefs:
    """Where n particles' images are, without their names: image ``index0[j]`` (0-based) of the
    stack ``paths[code[j]]`` (absolute, resolved), ``size[j]`` pixels square; ``bare[j]``: the
    particle named its stack without ``index@``.  Codes number the stacks in order of first
    appearance among these particles (as :func:`gmmcore.particles.image_keys` does), so
    :func:`iter_stack_images` gives the images in the order :func:`iter_images` gives them.
    17 bytes per particle: what a worker process is sent instead of name strings (≈ 110 bytes each)."""

    index0: np.ndarray  # (n,) int64
    code: np.ndarray  # (n,) int32 into paths
    paths: Tuple[str, ...]
    size: np.ndarray  # (n,) int32, pixels
    bare: np.ndarray  # (n,) bool

    def __len__(self) -> int:
        return int(self.index0.size)


def stack_refs(table, indices=None) -> StackRefs:
    """The :class:`StackRefs` of ``table``'s rows ``indices`` (default all): names parsed, stacks
    found (:class:`StackLocator`; a missing one is an :class:`InputError` naming the folders searched)."""
    rows = np.arange(len(table)) if indices is None else np.arange(len(table))[np.asarray(indices)]
    star_dir, root = _table_dirs(table)
    src = table.source or None
    keys = image_keys(np.asarray(table.image_name)[rows], src)
    locator = StackLocator(star_dir, root, src)
    return StackRefs(keys.index0, keys.path_code.astype(np.int32), tuple(locator.resolve(p) for p in keys.paths),
                     np.asarray(table.image_size, dtype=np.int32)[rows], keys.bare)


def iter_images(table, indices=None, chunk: int = 20000) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Stream the images of ``table`` (rows ``indices``, default all) in chunks.

    Yields ``(rows, images)``: ``rows`` are row indices into ``table`` and ``images`` a float32 array
    ``(k, ny, nx)`` with ``images[j]`` the image of row ``rows[j]``.  Chunks hold at most ``chunk``
    images, are ordered by stack file and index within the file (not by row), and never mix image
    sizes.  Memory is bounded by the chunk size.  NaN/inf images and images whose size differs from
    ``table.image_size`` raise :class:`InputError` naming the file and the image index.
    """
    n = len(table)
    rows = np.arange(n) if indices is None else np.arange(n)[np.asarray(indices)]
    if rows.size == 0:
        return
    for pos, images in iter_stack_images(stack_refs(table, rows), chunk):
        yield rows[pos], images


def iter_stack_images(refs: StackRefs, chunk: int = 20000) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """:func:`iter_images` of the particles ``refs`` describes: yields ``(positions, images)``,
    ``positions`` into ``refs``."""
    if len(refs) == 0:
        return
    chunk = max(1, int(chunk))
    index0, pid, resolved, size = refs.index0, refs.code, refs.paths, refs.size
    bare_pid = set(pid[refs.bare].tolist())
    order = np.lexsort((index0, pid, size))

    # chunk boundaries: every `chunk` images and wherever the image size changes
    sz_sorted = size[order]
    cuts = set(range(0, order.size, chunk)) | set((np.flatnonzero(np.diff(sz_sorted)) + 1).tolist())
    cuts = sorted(cuts) + [order.size]

    current = {"pid": None, "mrc": None}
    try:
        for a, b in zip(cuts[:-1], cuts[1:]):
            sel = order[a:b]
            box = int(sz_sorted[a])
            out = np.empty((sel.size, box, box), dtype=np.float32)
            p_sel = pid[sel]
            runs = np.flatnonzero(np.diff(p_sel)) + 1
            for lo, hi in zip([0] + runs.tolist(), runs.tolist() + [sel.size]):
                k = int(p_sel[lo])
                fname = resolved[k]
                if current["pid"] != k:
                    if current["mrc"] is not None:
                        current["mrc"].close()
                        current["mrc"] = None
                    current["mrc"] = _open_stack(fname)
                    current["pid"] = k
                data = current["mrc"].data
                if data.ndim == 2:
                    data = data[None]
                if k in bare_pid and data.shape[0] > 1:
                    raise InputError(f"a particle names this stack of {data.shape[0]} images without an image "
                                     "index: write index@path (1-based)", path=fname, field="rlnImageName")
                idx = index0[sel[lo:hi]]
                if idx.max() >= data.shape[0]:
                    bad = int(idx[idx >= data.shape[0]][0]) + 1
                    raise InputError(f"image {bad} requested but the stack holds {data.shape[0]} images",
                                     path=fname, field="rlnImageName")
                if data.shape[1:] != (box, box):
                    raise InputError(f"images are {data.shape[2]}x{data.shape[1]} pixels but the particle "
                                     f"table says {box}x{box} (rlnImageSize)", path=fname, field="rlnImageSize")
                out[lo:hi] = data[idx]
                finite = np.isfinite(out[lo:hi]).all(axis=(1, 2))
                if not finite.all():
                    bad = int(idx[np.flatnonzero(~finite)[0]]) + 1
                    raise InputError(f"image {bad} contains NaN or infinite values", path=fname,
                                     field=f"image {bad}")
            yield sel, out
    finally:
        if current["mrc"] is not None:
            current["mrc"].close()


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------
class StackWriter:
    """Write an ``.mrcs`` stack of ``box`` × ``box`` float32 images incrementally, atomically.

    ``StackWriter(path, box, apix)`` then ``write(images)`` appends (the number of images need not
    be known); with ``n`` given, ``write(rows, images)`` also puts images at positions ``rows``
    (any order).  Data go to a temporary file beside ``path`` (``.NAME.XXXXXXXX.part.mrcs``) which
    :meth:`close` renames to ``path`` with the usual permissions (umask); :meth:`abort` (or leaving
    a ``with`` block by any exception, Ctrl-C included) removes it.  Memory use is one chunk.  The
    header is an image stack (ispg 0) with voxel size ``apix`` and statistics.

    Images are written with ordinary positioned writes, never through a memory map: on a full
    disk a write fails with ``OSError`` (ENOSPC) instead of killing the process with SIGBUS, and
    the file grows only as far as it is written.
    """

    _HEADER = 1024

    def __init__(self, path, box: int, apix: float, n: Optional[int] = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + self.path.name + ".", suffix=".part.mrcs", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.box, self.apix = int(box), float(apix)
        self.n = None if n is None else int(n)
        self._count = 0  # images appended / highest position written + 1
        self._stats = [np.inf, -np.inf, 0.0, 0.0, 0]  # min, max, sum, sumsq, count
        self._closed = False
        self._f = None
        try:
            # a valid 1-image stack header made by mrcfile; data are then written raw after it
            with mrcfile.new(str(self.tmp), overwrite=True) as m:
                m.set_data(np.zeros((1, self.box, self.box), dtype=np.float32))
                m.set_image_stack()
                m.voxel_size = self.apix
                set_label(m)
                offset = int(m.header.nsymbt) + self._HEADER
            self._offset = offset
            self._f = open(self.tmp, "r+b")
            self._f.truncate(offset)
        except BaseException:
            self.abort()
            raise

    @property
    def _image_bytes(self) -> int:
        return self.box * self.box * 4

    def _update_stats(self, images: np.ndarray) -> None:
        if images.size == 0:
            return
        s = self._stats
        s[0] = min(s[0], float(images.min()))
        s[1] = max(s[1], float(images.max()))
        s[2] += float(images.sum(dtype=np.float64))
        s[3] += float(np.square(images, dtype=np.float64).sum())
        s[4] += images.size

    def _check(self, images) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 2:
            images = images[None]
        if images.shape[1:] != (self.box, self.box):
            raise ValueError(f"expected images of {self.box}x{self.box}, got {images.shape}")
        return images

    def _write_header(self, nz: int) -> None:
        """The final header: nz images, statistics, an image stack (ispg 0, mz 1) of voxel size apix."""
        from mrcfile.dtypes import HEADER_DTYPE

        fd = self._f.fileno()
        h = np.frombuffer(bytearray(os.pread(fd, self._HEADER, 0)), dtype=HEADER_DTYPE)  # one record
        h["nz"] = nz
        h["mz"] = 1
        h["ispg"] = 0
        cella = h["cella"]
        cella["x"], cella["y"], cella["z"] = self.apix * self.box, self.apix * self.box, self.apix
        mn, mx, sm, sq, cnt = self._stats
        if cnt:
            mean = sm / cnt
            h["dmin"], h["dmax"], h["dmean"] = mn, mx, mean
            h["rms"] = float(np.sqrt(max(sq / cnt - mean * mean, 0.0)))
        os.pwrite(fd, h.tobytes(), 0)

    def _pwrite(self, position: int, images: np.ndarray) -> None:
        data = np.ascontiguousarray(images, dtype="<f4").tobytes()
        at = self._offset + int(position) * self._image_bytes
        fd = self._f.fileno()
        done = 0
        while done < len(data):  # os.pwrite may write less than asked
            done += os.pwrite(fd, data[done:], at + done)

    def write(self, rows_or_images, images=None) -> None:
        """``write(images)`` appends; ``write(rows, images)`` writes at positions (needs ``n``)."""
        if images is None:
            self.append(rows_or_images)
            return
        rows = np.asarray(rows_or_images, dtype=np.int64).reshape(-1)
        images = self._check(images)
        if images.shape[0] != rows.size:
            raise ValueError(f"{rows.size} positions for {images.shape[0]} images")
        if rows.size == 0:
            return
        if self.n is None:
            raise ValueError("write(rows, images) needs the number of images n at construction")
        if rows.min() < 0 or rows.max() >= self.n:
            raise IndexError(f"positions must be in [0, {self.n})")
        order = np.argsort(rows, kind="stable")
        r, im = rows[order], images[order]
        breaks = np.flatnonzero(np.diff(r) != 1) + 1  # runs of consecutive positions: one write each
        for lo, hi in zip([0] + breaks.tolist(), breaks.tolist() + [r.size]):
            self._pwrite(int(r[lo]), im[lo:hi])
        self._update_stats(images)
        self._count = max(self._count, int(rows.max()) + 1)

    def append(self, images) -> None:
        images = self._check(images)
        k = images.shape[0]
        if self.n is not None:
            self.write(np.arange(self._count, self._count + k), images)
            return
        self._pwrite(self._count, images)
        self._update_stats(images)
        self._count += k

    def close(self) -> Path:
        if self._closed:
            return self.path
        try:
            nz = self.n if self.n is not None else self._count
            self._f.truncate(self._offset + nz * self._image_bytes)
            self._write_header(nz)
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def abort(self) -> None:
        self._closed = True
        try:
            if self._f is not None and not self._f.closed:
                self._f.close()
        except Exception:  # noqa: BLE001 - best-effort cleanup
            pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "StackWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


# --------------------------------------------------------------------------------------------------
# matching particles to a reference file
# --------------------------------------------------------------------------------------------------
def _norm(p: str) -> str:
    p = str(p).strip()
    if p.startswith(">"):
        p = p[1:]
    return os.path.normpath(p).replace("\\", "/")


def original_image_names(table) -> np.ndarray:
    """Each particle's image name before import (``rlnImageOriginalName`` after a phase-flipping
    import), else its current image name."""
    sp = table.star_particles
    if sp is not None and "rlnImageOriginalName" in getattr(sp, "columns", []):
        return sp["rlnImageOriginalName"].astype(str).to_numpy()
    return np.asarray(table.image_name).astype(str)


def reference_rows(table, ref_names, ref_path, field: str, what: str = "particles") -> np.ndarray:
    """Rows of a reference file (its images as :class:`~gmmcore.particles.ImageKeys` or a list of
    ``(index0, path)``) holding ``table``'s particles.

    Matched by original image name (:func:`match_image_names`); when names do not match, by order
    if the counts agree; otherwise :class:`InputError` naming ``ref_path`` and ``field``."""
    rows = match_image_names(image_keys(original_image_names(table), table.source or None), ref_names)
    if rows is not None:
        return rows
    n_ref = len(ref_names)
    if n_ref == len(table):
        return np.arange(n_ref)
    raise InputError(f"the particles ({len(table)}) do not match the reference ({n_ref} {what}) by "
                     "image name, and the counts differ", path=ref_path, field=field)


def _index_codes(names) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """(index0, code into paths, distinct normalised paths) of ImageKeys or ``(index0, path)`` pairs."""
    if hasattr(names, "index0"):
        idx, code, raw = np.asarray(names.index0, np.int64), np.asarray(names.path_code, np.int64), names.paths
    else:
        idx = np.fromiter((int(i) for i, _ in names), dtype=np.int64, count=len(names))  # (index0, path) pairs
        codes: Dict[str, int] = {}
        code = np.fromiter((codes.setdefault(p, len(codes)) for _, p in names), dtype=np.int64, count=len(names))
        raw = list(codes)
    norm = [_norm(p) for p in raw]
    uniq: Dict[str, int] = {}
    remap = np.array([uniq.setdefault(p, len(uniq)) for p in norm], dtype=np.int64)
    return idx, (remap[code] if code.size else code), list(uniq)


def match_image_names(names, ref) -> Optional[np.ndarray]:
    """Rows of ``ref`` holding the same images as ``names`` (each :class:`~gmmcore.particles.ImageKeys`
    or a list of ``(index0, path)``).

    Paths match when equal or when one is a trailing part of the other (an absolute path against the
    relative one in the reference).  Returns None unless every particle matches exactly one
    reference row.  Vectorised: Python work per distinct stack path, array work per particle.
    """
    idx, code, paths = _index_codes(names)
    ridx, rcode, ref_paths = _index_codes(ref)
    where = {p: c for c, p in enumerate(ref_paths)}
    hit = np.empty(len(paths), dtype=np.int64)  # our path code -> reference path code (-1: none)
    for c, p in enumerate(paths):
        h = None
        parts = p.split("/")
        for k in range(len(parts)):
            h = where.get("/".join(parts[k:]))
            if h is not None:
                break
        if h is None:  # reference path longer than ours (ours relative, reference absolute)
            ends = [rc for rp, rc in where.items() if rp.endswith("/" + p)]
            h = ends[0] if len(ends) == 1 else None
        hit[c] = -1 if h is None else h
    if idx.size == 0:
        return np.zeros(0, np.int64)
    mapped = hit[code]
    if (mapped < 0).any():
        return None
    span = int(max(idx.max(initial=0), ridx.max(initial=0))) + 1
    rkey = rcode * span + ridx
    order = np.argsort(rkey, kind="stable")
    skey = rkey[order]
    if skey.size > 1 and (skey[1:] == skey[:-1]).any():
        return None  # duplicated image in the reference: ambiguous
    key = mapped * span + idx
    pos = np.searchsorted(skey, key)
    pos[pos >= skey.size] = 0
    if skey.size == 0 or (skey[pos] != key).any():
        return None
    out = order[pos]
    if np.unique(out).size != out.size:
        return None
    return out


def worker_table(table):
    """The particle table as work units on other machines need it: image names with absolute
    stack paths (a worker's working directory is not ours), no star/cryoSPARC pass-through."""
    from dataclasses import replace

    return replace(table, image_name=resolved_image_names(table), star_particles=None, cs_records=None,
                   meta=dict(table.meta))
