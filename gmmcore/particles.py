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
* Pass-through: ``star_particles`` / ``star_optics`` (pandas DataFrames exactly as read, all
  columns) and ``cs_records`` (the cryoSPARC structured array as read).  Writers start from these
  so every column a user had survives a round trip; the fields above always win.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Optional

import numpy as np

from .geometry import matrix_to_euler


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

    def with_poses(self, rotation: np.ndarray, origin: np.ndarray) -> "ParticleTable":
        """A copy with new poses (rotation (n,3,3), origin (n,2) Å); everything else shared."""
        return replace(self, rotation=np.asarray(rotation, np.float64), origin=np.asarray(origin, np.float64),
                       meta=dict(self.meta))

    def halves(self):
        """Yield (h, indices) for h = 1, 2."""
        for h in (1, 2):
            yield h, np.flatnonzero(self.half == h)
