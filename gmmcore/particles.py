"""The internal particle table: one form for particles read from RELION or cryoSPARC.

Conventions (see docs/ARCHITECTURE.md):

* ``rotation``: RELION's matrix A per particle, shape (n, 3, 3) (see :mod:`gmmcore.geometry`).
* ``origin``: RELION's rlnOriginX/YAngst in Å, shape (n, 2): the particle centre sits at
  (box centre − origin); shifting the image by +origin centres it.
* ``half``: gold-standard half set, 1 or 2 (0 = not assigned).
* ``apix`` (Å/pixel) and ``image_size`` (pixels) per particle, from the particle's optics group.
* ``image_name``: RELION ``index@path`` (1-based index); ``image_root`` is the folder relative
  paths are resolved against (see :func:`gmmcore.io.stacks.resolve_stack_path`).
* ``ctf``: per-particle :class:`CTFParams`.
* Poses travel as :class:`Poses` (rotations + origins, saved atomically as ``poses.npz``);
  "the same thing once per half set" as :class:`HalfPair` (gold standard as a type).
* Pass-through: ``star_particles`` / ``star_optics`` (pandas DataFrames exactly as read, all
  columns) and ``cs_records`` (the cryoSPARC structured array as read).  Writers start from these
  so every column a user had survives a round trip; the fields above always win.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Callable, Generic, Iterator, Optional, Tuple, TypeVar

import numpy as np

from .errors import InputError
from .geometry import angular_distance, matrix_to_euler

T = TypeVar("T")
U = TypeVar("U")

# Relative pixel-size spread accepted within one refinement/reconstruction (optics groups whose
# pixel sizes differ by less are treated as one; by more: an error).
APIX_TOLERANCE = 1e-3


@dataclass(frozen=True)
class HalfPair(Generic[T]):
    """The same thing once per gold-standard half set (half 1 = ``one``, half 2 = ``two``).

    :meth:`map` and :meth:`build` call their function once per half with that half alone, so
    code written through them cannot let one half see the other."""

    one: T
    two: T

    def __getitem__(self, h) -> T:
        h = int(h)
        if h == 1:
            return self.one
        if h == 2:
            return self.two
        raise KeyError(f"half set {h} (must be 1 or 2)")

    def __iter__(self) -> Iterator[int]:
        """The half numbers 1, 2 (a HalfPair reads like the dict {1: one, 2: two})."""
        return iter((1, 2))

    def items(self) -> Iterator[Tuple[int, T]]:
        yield 1, self.one
        yield 2, self.two

    def map(self, f: Callable[[int, T], U]) -> "HalfPair[U]":
        return HalfPair(f(1, self.one), f(2, self.two))

    @classmethod
    def build(cls, f: Callable[[int], T]) -> "HalfPair[T]":
        return cls(f(1), f(2))

    def to_json(self) -> dict:
        return {"1": self.one, "2": self.two}


@dataclass(frozen=True)
class Poses:
    """Particle poses: ``rotation`` (n, 3, 3) RELION A, ``origin_A`` (n, 2) Å (RELION's sign).

    Saved as ``.npz`` with arrays ``rotation`` and ``origin`` (the run-directory layout)."""

    rotation: np.ndarray
    origin_A: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "rotation", np.asarray(self.rotation, np.float64).reshape(-1, 3, 3))
        object.__setattr__(self, "origin_A", np.asarray(self.origin_A, np.float64).reshape(-1, 2))
        if len(self.rotation) != len(self.origin_A):
            raise ValueError("poses: as many rotations as origins are needed")

    def __len__(self) -> int:
        return int(self.rotation.shape[0])

    def subset(self, rows) -> "Poses":
        return Poses(self.rotation[rows], self.origin_A[rows])

    def with_rows(self, rows, other: "Poses") -> "Poses":
        """A copy whose ``rows`` take the poses of ``other`` (len(other) == len(rows))."""
        R, o = self.rotation.copy(), self.origin_A.copy()
        R[rows], o[rows] = other.rotation, other.origin_A
        return Poses(R, o)

    def change_from(self, other: "Poses", apix: float) -> Tuple[np.ndarray, np.ndarray]:
        """Per-particle change from ``other`` to these poses: (angle degrees, shift pixels)."""
        return angular_distance(other.rotation, self.rotation), \
            np.linalg.norm(self.origin_A - other.origin_A, axis=1) / float(apix)

    def save(self, path) -> None:
        """Write ``path`` (.npz: rotation, origin) atomically."""
        from .safewrite import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, rotation=self.rotation, origin=self.origin_A)

    @classmethod
    def load(cls, path) -> "Poses":
        try:
            with np.load(path) as z:
                return cls(z["rotation"], z["origin"])
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"not a poses file ({exc})", path=path) from None


@dataclass
class CTFParams:
    """Per-particle CTF parameters; every field is an array of shape (n,)."""

    defocus_u: np.ndarray  # Å
    defocus_v: np.ndarray  # Å
    defocus_angle: np.ndarray  # degrees (RELION rlnDefocusAngle)
    voltage: np.ndarray  # kV
    cs: np.ndarray  # mm (spherical aberration)
    amp_contrast: np.ndarray  # fraction, e.g. 0.1
    phase_shift: np.ndarray  # degrees
    bfactor: np.ndarray  # Å² (0 = none)

    def subset(self, idx) -> "CTFParams":
        return CTFParams(**{f.name: np.asarray(getattr(self, f.name))[idx] for f in fields(self)})

    @classmethod
    def constant(cls, n: int, defocus: float = 15000.0, voltage: float = 300.0, cs: float = 2.7,
                 amp_contrast: float = 0.1) -> "CTFParams":
        """n particles with the same (non-astigmatic) CTF; handy for tests."""
        full = lambda v: np.full(n, float(v))  # noqa: E731
        return cls(full(defocus), full(defocus), full(0), full(voltage), full(cs), full(amp_contrast),
                   full(0), full(0))


# Sane bounds of CTF values (outside them a value is a unit mistake or a corrupt file, never data):
# voltage 1–1000 kV; |Cs| <= 20 mm; amplitude contrast in [0, 1) (RELION uses atan(q/sqrt(1-q²)));
# |defocus| <= 200,000 Å (20 µm; RELION defoci are in Å, single-particle data use 0.2–5 µm).
VOLTAGE_RANGE_KV = (1.0, 1000.0)
CS_MAX_MM = 20.0
DEFOCUS_MAX_A = 200_000.0
# RELION's value when rlnAmplitudeContrast is absent (and cryoSPARC's usual one)
DEFAULT_AMPLITUDE_CONTRAST = 0.1


def check_ctf(ctf: CTFParams, source=None, labels: Optional[dict] = None) -> None:
    """Refuse CTF values outside the sane bounds above (:class:`InputError` naming the file, the
    file's label for the value (``labels``: CTFParams field → label) and the first bad row)."""
    labels = labels or {}
    tests = [
        ("voltage", lambda v: (v >= VOLTAGE_RANGE_KV[0]) & (v <= VOLTAGE_RANGE_KV[1]),
         f"outside {VOLTAGE_RANGE_KV[0]:g}–{VOLTAGE_RANGE_KV[1]:g} kV"),
        ("cs", lambda v: np.abs(v) <= CS_MAX_MM, f"outside ±{CS_MAX_MM:g} mm"),
        ("amp_contrast", lambda v: (v >= 0) & (v < 1), "outside [0, 1)"),
        ("defocus_u", lambda v: np.abs(v) <= DEFOCUS_MAX_A, f"outside ±{DEFOCUS_MAX_A:,.0f} Å (20 µm; defocus is in Å)"),
        ("defocus_v", lambda v: np.abs(v) <= DEFOCUS_MAX_A, f"outside ±{DEFOCUS_MAX_A:,.0f} Å (20 µm; defocus is in Å)"),
    ]
    for name, ok, why in tests:
        v = np.asarray(getattr(ctf, name), np.float64)
        good = np.isfinite(v) & ok(v)
        if not good.all():
            r = int(np.flatnonzero(~good)[0])
            raise InputError(f"value {v[r]:g} in row {r + 1} is {why}", path=source, field=labels.get(name, name))


def one_value(a) -> Optional[np.ndarray]:
    """The single value (a 1-element array) of a 1-D array whose n ≥ 2 values are all one value,
    bit for bit (a per-dataset setting such as the voltage); None otherwise."""
    a = np.asarray(a)
    if a.ndim != 1 or a.size < 2 or a.dtype.kind not in "biuf":
        return None
    bits = a.view(f"u{a.itemsize}") if a.itemsize in (1, 2, 4, 8) else a
    return a[:1].copy() if (bits == bits[0]).all() else None


def shared_value(a) -> np.ndarray:
    """``a``, or when :func:`one_value` finds one value, a read-only view of that one value with
    ``a``'s shape (equal values and bytes, no memory per particle)."""
    v = one_value(a)
    return np.asarray(a) if v is None else np.broadcast_to(v, np.shape(a))


@dataclass
class ParticleTable:
    image_name: np.ndarray  # (n,) str, "index@path"
    rotation: np.ndarray  # (n, 3, 3) float64, RELION A
    origin: np.ndarray  # (n, 2) float64, Å
    half: np.ndarray  # (n,) int8, 1/2 (0 = unassigned)
    optics_group: np.ndarray  # (n,) int32
    apix: np.ndarray  # (n,) float64, Å/pixel
    image_size: np.ndarray  # (n,) int32, pixels
    ctf: CTFParams
    phase_flipped: bool = False
    image_root: Optional[str] = None
    star_particles: Optional[object] = None  # pandas.DataFrame pass-through
    star_optics: Optional[object] = None  # pandas.DataFrame pass-through
    cs_records: Optional[np.ndarray] = None  # cryoSPARC structured array pass-through
    source: str = ""  # file the table was read from
    meta: dict = field(default_factory=dict)  # free-form provenance (format, version, ...)

    def __len__(self) -> int:
        return int(self.rotation.shape[0])

    def euler(self) -> np.ndarray:
        """(n, 3) RELION rot, tilt, psi in degrees."""
        return matrix_to_euler(self.rotation)

    def origin_px(self) -> np.ndarray:
        """(n, 2) origins in pixels (rlnOriginX/Y of RELION 3.0)."""
        return self.origin / self.apix[:, None]

    def subset(self, idx) -> "ParticleTable":
        """Rows ``idx`` (boolean mask or integer indices), pass-through kept in step."""
        idx = np.arange(len(self))[idx]
        sp = None if self.star_particles is None else self.star_particles.iloc[idx].reset_index(drop=True)
        cs = None if self.cs_records is None else self.cs_records[idx]
        return replace(
            self,
            image_name=self.image_name[idx], rotation=self.rotation[idx], origin=self.origin[idx],
            half=self.half[idx], optics_group=self.optics_group[idx], apix=self.apix[idx],
            image_size=self.image_size[idx], ctf=self.ctf.subset(idx), star_particles=sp, cs_records=cs,
            meta=dict(self.meta),
        )

    def slim(self) -> "ParticleTable":
        """The table without the pass-through columns (what reading images and reconstructing
        need; small to send to a worker process)."""
        return replace(self, star_particles=None, star_optics=None, cs_records=None, meta=dict(self.meta))

    @property
    def poses(self) -> Poses:
        return Poses(self.rotation, self.origin)

    def with_shared_values(self) -> "ParticleTable":
        """A copy whose per-particle columns holding one value for every particle (pixel size, box,
        optics group, CTF voltage, Cs, ...) are read-only views of that value (:func:`shared_value`):
        the same values, the same :meth:`content_hash`, no memory per particle.  Everything else shared."""
        return replace(self, apix=shared_value(self.apix), image_size=shared_value(self.image_size),
                       optics_group=shared_value(self.optics_group),
                       ctf=CTFParams(**{f.name: shared_value(getattr(self.ctf, f.name)) for f in fields(self.ctf)}),
                       meta=dict(self.meta))

    def with_poses(self, rotation, origin: Optional[np.ndarray] = None) -> "ParticleTable":
        """A copy with new poses (a :class:`Poses`, or rotation (n,3,3) and origin (n,2) Å);
        everything else shared."""
        if isinstance(rotation, Poses):
            rotation, origin = rotation.rotation, rotation.origin_A
        return replace(self, rotation=np.asarray(rotation, np.float64), origin=np.asarray(origin, np.float64),
                       meta=dict(self.meta))

    def content_hash(self) -> str:
        """SHA-256 of what a refinement reads from the table (image names, poses, half sets,
        optics, CTF): a run is identified by its input's content, not only by the file's path."""
        import hashlib

        h = hashlib.sha256()
        h.update("\n".join(np.asarray(self.image_name).astype(str)).encode())
        for a in (self.rotation, self.origin, self.half, self.optics_group, self.apix, self.image_size,
                  *(getattr(self.ctf, f.name) for f in fields(self.ctf))):
            h.update(np.ascontiguousarray(np.asarray(a, np.float64)).tobytes())
        h.update(b"flipped" if self.phase_flipped else b"raw")
        return h.hexdigest()

    def half_rows(self) -> HalfPair:
        """Row numbers of each half set, HalfPair of int64 arrays."""
        return HalfPair.build(lambda h: np.flatnonzero(self.half == h))


# ------------------------------------------------------------------------------------------------
# the rules every verb shares


def split_field(table: ParticleTable) -> str:
    """The input file's name for the half set (for error messages)."""
    return "alignments3D/split" if table.meta.get("format") == "cryosparc" else "rlnRandomSubset"


# A split whose smaller half holds less than this fraction of the particles is no usable
# gold-standard split: its FSC rests on too few particles on one side (and such files are
# usually a tool's artefact, e.g. every particle in half 1).
MIN_HALF_FRACTION = 0.10


@dataclass(frozen=True)
class ImageKeys:
    """Parsed RELION image names ``index@path`` of n particles.

    ``index0`` (n,) int64, 0-based (0 for a bare path); ``path_code`` (n,) int64 into ``paths``,
    the distinct stack paths (stripped, cryoSPARC's leading '>' removed, normalised) in order of
    first appearance; ``bare`` (n,) bool: the name had no ``index@``."""

    index0: np.ndarray
    path_code: np.ndarray
    paths: list
    bare: np.ndarray

    def __len__(self) -> int:
        return int(self.index0.size)

    def image(self) -> np.ndarray:
        """(n,) int64: one number per distinct image (same stack and index ⇔ same number)."""
        return self.path_code * (int(self.index0.max(initial=0)) + 1) + self.index0


KEYS_BLOCK = 65536  # names parsed at once by image_keys: its Python temporaries are bounded by this, not by n


def image_keys(names, source=None, field: str = "rlnImageName") -> ImageKeys:
    """Parse RELION image names ``index@path`` (fast: one pass, paths normalised once each; names
    parsed :data:`KEYS_BLOCK` at a time, so the temporary strings of a million rows never live at
    once).  A bad name (index not a positive integer, empty path) raises :class:`InputError`
    naming its row."""
    import os

    names = np.asarray(names, dtype=object).reshape(-1)
    n = names.size
    index0 = np.empty(n, dtype=np.int64)
    code = np.empty(n, dtype=np.int64)
    bare = np.empty(n, dtype=bool)
    codes: dict = {}
    paths: list = []
    for b0 in range(0, n, KEYS_BLOCK):
        raw = names[b0:b0 + KEYS_BLOCK].tolist()
        m = len(raw)
        parts = [str(x).strip().partition("@") for x in raw]
        bare[b0:b0 + m] = np.fromiter((not p[1] for p in parts), dtype=bool, count=m)
        idx_txt = ["1" if not p[1] else p[0] for p in parts]
        path_txt = [p[0] if not p[1] else p[2] for p in parts]
        del parts
        try:
            idx = np.array(idx_txt, dtype=object).astype(np.int64) if m else np.zeros(0, np.int64)
            bad = idx < 1
        except (ValueError, OverflowError):
            idx, bad = None, None
        if bad is None or bad.any() or not all(path_txt):
            for r in range(m):
                try:
                    ok = int(idx_txt[r]) >= 1 and bool(path_txt[r])
                except (ValueError, OverflowError):
                    ok = False
                if not ok:
                    name = str(raw[r]).strip()
                    raise InputError(f"row {b0 + r + 1}: bad image name {name!r} (expected index@path, index "
                                     "1-based)", path=source, field=field)
        index0[b0:b0 + m] = idx - 1
        for r, p in enumerate(path_txt, start=b0):
            c = codes.get(p)
            if c is None:
                c = codes[p] = len(paths)
                paths.append(os.path.normpath(p.lstrip(">")))
            code[r] = c
    # raw spellings that normalise to one path ("a//b", "./a/b") share a code
    uniq = {}
    remap = np.array([uniq.setdefault(p, len(uniq)) for p in paths], dtype=np.int64)
    if len(uniq) != len(paths):
        code = remap[code] if n else code
        paths = list(uniq)
    return ImageKeys(index0, code, paths, bare)


def check_image_names(names, source=None, field: str = "rlnImageName") -> None:
    """Every name parses, and a name without ``index@`` (a whole single-image file) is used by one
    particle only: several particles naming the same file without an index would all read its first
    image."""
    keys = image_keys(names, source, field)
    if keys.bare.any():
        rows = np.flatnonzero(keys.bare)
        codes = keys.path_code[rows]
        _, first, counts = np.unique(codes, return_index=True, return_counts=True)
        if (counts > 1).any():
            c = codes[first[np.argmax(counts > 1)]]
            shared = rows[codes == c]
            raise InputError(f"{shared.size} particles name {keys.paths[c]!r} without an image index (rows "
                             f"{shared[0] + 1} and {shared[1] + 1}, ...): write index@path (1-based) so each "
                             "particle reads its own image of the stack", path=source, field=field)


def images_in_both_halves(table: ParticleTable) -> Optional[Tuple[str, np.ndarray, int]]:
    """The first image named by particles of both half sets: ``(name, rows, n_images)`` where
    ``rows`` are its rows and ``n_images`` how many images are shared across halves; None if none."""
    half = np.asarray(table.half)
    if len(table) == 0:
        return None
    key = image_keys(table.image_name, table.source or None).image()
    order = np.argsort(key, kind="stable")
    ks, hs = key[order], half[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    mixed = np.minimum.reduceat(hs, starts) != np.maximum.reduceat(hs, starts)
    if not mixed.any():
        return None
    shared = ks[starts[mixed]]
    first_rows = order[starts[mixed]]  # the first row (stable order) of each shared image
    k = shared[np.argmin(first_rows)]
    rows = np.flatnonzero(key == k)
    return str(table.image_name[rows[0]]), rows, int(mixed.sum())


@dataclass(frozen=True)
class SplitProblem:
    """Why a half split is no usable gold-standard split.  ``kind``: "none" (no split), "partial"
    (some particles without a half), "empty" (a half without particles), "lopsided" (a half below
    :data:`MIN_HALF_FRACTION`), "shared" (an image in both halves)."""

    kind: str
    message: str

    @property
    def kept_at_import(self) -> bool:
        """An empty or lopsided split is kept (with a warning) by ``gmmcore import``; the others stop it."""
        return self.kind in ("empty", "lopsided")


def half_counts_problem(n_half1: int, n_half2: int, n_without: int = 0) -> Optional[SplitProblem]:
    """The counting part of the split rule (what a Scipion form can check from counts alone):
    None when every particle has a half and each half holds ≥ :data:`MIN_HALF_FRACTION`."""
    counts = {1: int(n_half1), 2: int(n_half2)}
    n = counts[1] + counts[2] + int(n_without)
    if n == 0:
        return SplitProblem("none", "no particles")
    if n_without == n:
        return SplitProblem("none", "no half-set split in the input")
    if n_without:
        return SplitProblem("partial", f"{int(n_without)} particles without a half set")
    for h in (1, 2):
        if counts[h] == 0:
            return SplitProblem("empty", f"no particles in half set {h} (all {n} in half set {3 - h})")
    h = 1 if counts[1] < counts[2] else 2
    if counts[h] < MIN_HALF_FRACTION * n:
        return SplitProblem("lopsided", f"lopsided half split: half set {h} holds {counts[h]} of {n} particles "
                                        f"({counts[h] / n:.1%}, below {MIN_HALF_FRACTION:.0%})")
    return None


def split_problem(table: ParticleTable) -> Optional[SplitProblem]:
    """None for a usable gold-standard split, else what is wrong with it (the one rule, used by
    :func:`check_split` and :func:`assign_split`): :func:`half_counts_problem`, then no image in
    both halves."""
    half = np.asarray(table.half)
    usable = np.isin(half, (1, 2))
    problem = half_counts_problem(int((half == 1).sum()), int((half == 2).sum()), int((~usable).sum()))
    if problem is not None:
        return problem
    shared = images_in_both_halves(table)
    if shared is not None:
        name, rows, k = shared
        return SplitProblem("shared", f"image {name} is in both half sets (rows {rows[0] + 1} and {rows[1] + 1}; "
                                      f"{k} image(s) in all): the gold standard needs each image in one half only")
    return None


def check_split(table: ParticleTable) -> HalfPair:
    """The gold-standard rule: every particle in half 1 or 2, each half with at least
    :data:`MIN_HALF_FRACTION` of the particles, no image in both halves.  Returns the rows of each
    half; raises InputError naming the file and field otherwise."""
    from .errors import NEW_SPLIT

    problem = split_problem(table)
    if problem is not None:
        if len(table) == 0:
            raise InputError("no particles", path=table.source or None)
        raise InputError(problem.message, path=table.source or None, field=split_field(table), remedy=NEW_SPLIT)
    return table.half_rows()


def assign_split(table: ParticleTable, new_split: bool, seed: int, keep_unusable: bool = False) -> str:
    """Check the half split, or redo it.  Returns "input" (the input's split is kept) or
    "new-random".

    With ``new_split``, a split that is not usable (:func:`split_problem`: none, partial, empty,
    lopsided, or an image in both halves) is replaced, in place, by a random balanced one with
    ``seed`` that keeps every image in one half; why is recorded in ``table.meta["split_note"]``.  A
    usable split is always kept.  Without ``new_split`` an unusable split raises
    (:func:`check_split`) — except, with ``keep_unusable`` (``gmmcore import``), an empty or lopsided
    one, which is kept and described in ``table.meta["split_warning"]``."""
    import pandas as pd

    problem = split_problem(table)
    if problem is None:
        return "input"
    if not new_split:
        if keep_unusable and problem.kept_at_import:
            table.meta["split_warning"] = problem.message
            return "input"
        check_split(table)  # raises
    n = len(table)
    if n == 0:
        check_split(table)
    inv, uniq = pd.factorize(image_keys(table.image_name, table.source or None).image())
    m = len(uniq)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(m)
    per_image = np.empty(m, dtype=np.int8)
    per_image[perm[: (m + 1) // 2]] = 1
    per_image[perm[(m + 1) // 2:]] = 2
    table.half = per_image[inv]
    table.meta["split_note"] = f"{problem.message}: made a new random split (seed {seed})"
    return "new-random"


def min_particles_per_half(box: int) -> int:
    """The fewest particles per half set a gold-standard refinement accepts: the Crowther count
    π·D/d of views that fill Fourier space to Nyquist (D = box·apix, d = 2·apix → π·box/2) even
    without noise; with fewer, the half maps cannot be complete and the FSC is not a resolution."""
    return int(math.ceil(math.pi * int(box) / 2.0))


def check_geometry(table: ParticleTable, rows=None) -> Tuple[int, float]:
    """The one-box rule: all particles (or ``rows``) share one box size and one pixel size (within
    :data:`APIX_TOLERANCE`).  Returns (box pixels, pixel size Å)."""
    sizes = np.asarray(table.image_size if rows is None else table.image_size[rows])
    apix = np.asarray(table.apix if rows is None else table.apix[rows], np.float64)
    if sizes.size == 0:
        raise InputError("no particles", path=table.source or None)
    if len(np.unique(sizes)) > 1:
        raise InputError(f"particles of several box sizes {sorted(set(sizes.tolist()))}; "
                         "use one box size at a time", path=table.source or None, field="rlnImageSize")
    if np.ptp(apix) > APIX_TOLERANCE * apix.max():
        raise InputError(f"optics groups with different pixel sizes {sorted(set(np.round(apix, 4).tolist()))} "
                         "cannot be combined", path=table.source or None, field="rlnImagePixelSize")
    return int(sizes[0]), float(apix[0])
