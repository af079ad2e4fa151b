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


def check_split(table: ParticleTable) -> HalfPair:
    """The gold-standard rule: every particle in half 1 or 2 and both halves non-empty.
    Returns the rows of each half; raises InputError naming the file and field otherwise."""
    half = np.asarray(table.half)
    if len(table) == 0:
        raise InputError("no particles", path=table.source or None)
    if not np.isin(half, (1, 2)).all():
        what = "no half-set split" if not (half > 0).any() else f"{int((~np.isin(half, (1, 2))).sum())} particles without a half set"
        raise InputError(f"{what} (rlnRandomSubset / alignments3D/split) in the input; gold-standard refinement "
                         "needs one: use --new-split to assign a random split", path=table.source or None,
                         field=split_field(table))
    rows = table.half_rows()
    for h, r in rows.items():
        if r.size == 0:
            raise InputError(f"no particles in half set {h}: a gold-standard reconstruction needs both halves "
                             "(use --new-split to assign a random split)", path=table.source or None,
                             field=split_field(table))
    return rows


def assign_split(table: ParticleTable, new_split: bool, seed: int) -> str:
    """Check the half split (:func:`check_split`), or, when ``new_split`` and the input has none,
    assign a random balanced one with ``seed`` (in place).  Returns "input" or "new-random"."""
    half = np.asarray(table.half)
    if len(table) and (half > 0).all():
        return "input"
    if not new_split:
        check_split(table)  # raises: the input has no (complete) split
    rng = np.random.default_rng(seed)
    n = len(table)
    perm = rng.permutation(n)
    new = np.empty(n, dtype=np.int8)
    new[perm[: (n + 1) // 2]] = 1
    new[perm[(n + 1) // 2:]] = 2
    table.half = new
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
