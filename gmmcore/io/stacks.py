"""Particle image stacks: ``index@path`` names, path resolution, streamed reading, stack writing.

* :func:`parse_image_name` — RELION ``"12@path.mrcs"`` (1-based) → ``(11, "path.mrcs")``.
* :func:`resolve_stack_path` — find a stack named relatively in a star/.cs file.
* :func:`iter_images` — stream a table's images in chunks (memory bounded by the chunk size, not by
  the number of particles), grouped by file, through ``mrcfile`` memory maps.
* :class:`StackWriter` — write an ``.mrcs`` incrementally; it appears under its name only when
  closed successfully.
* :func:`match_image_names` — map particles to the rows of a reference file by image index + path.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import mrcfile
import numpy as np

from ..errors import InputError


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


def _candidates(path: str, star_dir, image_root) -> List[Path]:
    p = Path(path)
    if p.is_absolute():
        return [p]
    out: List[Path] = []
    if image_root:
        out.append(Path(image_root) / p)
    if star_dir:
        out.append(Path(star_dir) / p)
    out.append(Path.cwd() / p)
    if star_dir:
        # RELION names are relative to the project folder, cryoSPARC's to the project folder too;
        # star/.cs files usually sit one or two folders below it (Refine3D/job012/, J12/).
        sd = Path(star_dir).resolve()
        out.extend([sd.parent / p, sd.parent.parent / p])
    return out


def resolve_stack_path(path, star_dir=None, image_root=None, source=None) -> str:
    """Absolute path of a stack named ``path`` in a star/.cs file.

    Absolute paths are used as they are; relative ones are tried against ``image_root``, the star
    file's folder ``star_dir``, the working directory, then the two folders above ``star_dir``.
    A leading ``>`` (cryoSPARC) is ignored.  :class:`InputError` names ``source`` (the star file)
    and rlnImageName when none exists.
    """
    path = str(path).strip()
    if path.startswith(">"):
        path = path[1:]
    cands = _candidates(path, star_dir, image_root)
    for c in cands:
        if c.is_file():
            return str(c.resolve())
    tried = ", ".join(dict.fromkeys(str(c.parent) for c in cands))
    raise InputError(f"image stack {path!r} not found (looked in: {tried}); use --stack-root DIR",
                     path=source if source is not None else star_dir, field="rlnImageName")


def stack_shape(path) -> Tuple[int, int, int]:
    """(n_images, ny, nx) of an MRC stack, from its header."""
    try:
        with mrcfile.open(str(path), mode="r", header_only=True, permissive=True) as m:
            h = m.header
            nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read MRC header ({exc})", path=path) from None
    return nz, ny, nx


def _table_dirs(table):
    star_dir = table.meta.get("star_dir") if table.meta else None
    if star_dir is None and table.source:
        star_dir = str(Path(table.source).resolve().parent)
    return star_dir, table.image_root


def resolved_image_names(table) -> np.ndarray:
    """The table's image names with their stack paths made absolute (``index@/abs/path``)."""
    star_dir, root = _table_dirs(table)
    cache: Dict[str, str] = {}
    out = []
    for r, name in enumerate(table.image_name):
        try:
            i, p = parse_image_name(name)
        except InputError as exc:
            raise InputError(f"row {r + 1}: {exc.message}", path=table.source or None, field=exc.field) from None
        if p not in cache:
            cache[p] = resolve_stack_path(p, star_dir, root, source=table.source or None)
        out.append(format_image_name(i, cache[p]))
    return np.asarray(out, dtype=object)


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------
def _open_stack(path):
    try:
        m = mrcfile.mmap(path, mode="r")
    except ValueError:
        try:
            m = mrcfile.mmap(path, mode="r", permissive=True)
        except (OSError, ValueError) as exc:
            raise InputError(f"not a readable MRC stack ({exc})", path=path) from None
        if m.data is None:
            m.close()
            raise InputError("not a readable MRC stack (bad header)", path=path)
    except OSError as exc:
        raise InputError(f"cannot open stack ({exc})", path=path) from None
    return m


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
    chunk = max(1, int(chunk))
    star_dir, root = _table_dirs(table)
    src = table.source or None

    path_ids: Dict[str, int] = {}
    paths: List[str] = []
    index0 = np.empty(rows.size, dtype=np.int64)
    pid = np.empty(rows.size, dtype=np.int64)
    for j, r in enumerate(rows):
        try:
            i, p = parse_image_name(table.image_name[r])
        except InputError as exc:
            raise InputError(f"row {r + 1}: {exc.message}", path=src, field=exc.field) from None
        k = path_ids.get(p)
        if k is None:
            k = path_ids[p] = len(paths)
            paths.append(p)
        index0[j] = i
        pid[j] = k
    resolved = [resolve_stack_path(p, star_dir, root, source=src) for p in paths]
    size = np.asarray(table.image_size)[rows]
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
            yield rows[sel], out
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
    (any order).  Data go to a temporary file beside ``path`` which :meth:`close` renames to
    ``path``; :meth:`abort` (or leaving a ``with`` block by an exception) removes it.  Memory use is
    one chunk.  The header is an image stack (ispg 0) with voxel size ``apix`` and statistics.
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
        try:
            # a valid 1-image stack header made by mrcfile; data are then written raw after it
            with mrcfile.new(str(self.tmp), overwrite=True) as m:
                m.set_data(np.zeros((1, self.box, self.box), dtype=np.float32))
                m.set_image_stack()
                m.voxel_size = self.apix
                offset = int(m.header.nsymbt) + self._HEADER
            self._offset = offset
            self._f = open(self.tmp, "r+b")
            self._f.truncate(offset)
            self._mm = None
            if self.n is not None:
                self._f.truncate(offset + self.n * self.box * self.box * 4)
                if self.n:
                    self._mm = np.memmap(self.tmp, dtype="<f4", mode="r+", offset=offset,
                                         shape=(self.n, self.box, self.box))
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise

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
        if self._mm is None:
            raise ValueError("write(rows, images) needs the number of images n at construction")
        if rows.min() < 0 or rows.max() >= self.n:
            raise IndexError(f"positions must be in [0, {self.n})")
        self._mm[rows] = images
        self._update_stats(images)
        self._count = max(self._count, int(rows.max()) + 1)

    def append(self, images) -> None:
        images = self._check(images)
        k = images.shape[0]
        if self.n is not None:
            self.write(np.arange(self._count, self._count + k), images)
            return
        self._f.seek(self._offset + self._count * self.box * self.box * 4)
        self._f.write(np.ascontiguousarray(images, dtype="<f4").tobytes())
        self._update_stats(images)
        self._count += k

    def close(self) -> Path:
        if self._closed:
            return self.path
        try:
            nz = self.n if self.n is not None else self._count
            if self._mm is not None:
                self._mm.flush()
                del self._mm
                self._mm = None
            self._f.truncate(self._offset + nz * self.box * self.box * 4)
            self._f.seek(8)  # header word 3: nz
            self._f.write(np.array([nz], dtype="<i4").tobytes())
            self._f.close()
            with mrcfile.mmap(str(self.tmp), mode="r+", permissive=True) as m:
                h = m.header
                mn, mx, sm, sq, cnt = self._stats
                if cnt:
                    mean = sm / cnt
                    h.dmin, h.dmax, h.dmean = mn, mx, mean
                    h.rms = float(np.sqrt(max(sq / cnt - mean * mean, 0.0)))
                m.set_image_stack()
                m.voxel_size = self.apix
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def abort(self) -> None:
        self._closed = True
        try:
            if self._mm is not None:
                del self._mm
                self._mm = None
            if not self._f.closed:
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


def reference_rows(table, ref_names: Sequence[Tuple[int, str]], ref_path, field: str,
                   what: str = "particles") -> np.ndarray:
    """Rows of a reference file (its images as ``(index0, path)``) holding ``table``'s particles.

    Matched by original image name (:func:`match_image_names`); when names do not match, by order
    if the counts agree; otherwise :class:`InputError` naming ``ref_path`` and ``field``."""
    names = [parse_image_name(s) for s in original_image_names(table)]
    rows = match_image_names(names, ref_names)
    if rows is not None:
        return rows
    if len(ref_names) == len(table):
        return np.arange(len(ref_names))
    raise InputError(f"the particles ({len(table)}) do not match the reference ({len(ref_names)} {what}) by "
                     "image name, and the counts differ", path=ref_path, field=field)


def match_image_names(names: Sequence[Tuple[int, str]], ref: Sequence[Tuple[int, str]]) -> Optional[np.ndarray]:
    """Rows of ``ref`` holding the same images as ``names`` (both lists of ``(index0, path)``).

    Paths match when equal or when one is a trailing part of the other (an absolute path against the
    relative one in the reference).  Returns None unless every particle matches exactly one
    reference row.
    """
    ref_map: Dict[Tuple[int, str], int] = {}
    for r, (i, p) in enumerate(ref):
        key = (int(i), _norm(p))
        if key in ref_map:
            return None  # duplicated image in the reference: ambiguous
        ref_map[key] = r
    ref_paths = {k[1] for k in ref_map}
    path_map: Dict[str, Optional[str]] = {}
    out = np.empty(len(names), dtype=np.int64)
    for j, (i, p) in enumerate(names):
        p = _norm(p)
        if p not in path_map:
            hit = None
            parts = p.split("/")
            for k in range(len(parts)):
                cand = "/".join(parts[k:])
                if cand in ref_paths:
                    hit = cand
                    break
            if hit is None:  # reference path longer than ours (ours relative, reference absolute)
                ends = [rp for rp in ref_paths if rp.endswith("/" + p)]
                hit = ends[0] if len(ends) == 1 else None
            path_map[p] = hit
        rp = path_map[p]
        if rp is None:
            return None
        r = ref_map.get((int(i), rp))
        if r is None:
            return None
        out[j] = r
    if np.unique(out).size != out.size:
        return None
    return out


def worker_table(table):
    """The particle table as work units on other machines need it: image names with absolute
    stack paths (a worker's working directory is not ours), no star/cryoSPARC pass-through."""
    from dataclasses import replace

    return replace(table, image_name=resolved_image_names(table), star_particles=None, cs_records=None,
                   meta=dict(table.meta))
