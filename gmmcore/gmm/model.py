"""A Gaussian mixture model of a density map.

Each Gaussian j has a centre c_j (Å, relative to the box centre; x = column, y = row, z = section),
an amplitude A_j ≥ 0 (its integrated mass) and a width σ_j > 0 (Å, real-space standard deviation):

    V(r) = Σ_j A_j (2πσ_j²)^(-3/2) exp(−|r − c_j|² / 2σ_j²)

File format (``.gmm.npz``, a NumPy ``savez`` archive):
``centers`` float32 (N, 3) Å; ``amplitudes`` float32 (N,); ``sigmas`` float32 (N,) Å;
``meta`` a JSON string (box, apix, half, resolution, ... — free-form).
A pseudo-atom PDB (one atom per Gaussian, width in the B-factor column) is written beside it for
ChimeraX by :meth:`GMM.save_pdb`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..safewrite import atomic_path
from ..errors import InputError


@dataclass
class GMM:
    centers: np.ndarray  # (N, 3) Å
    amplitudes: np.ndarray  # (N,)
    sigmas: np.ndarray  # (N,) Å
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.centers = np.asarray(self.centers, dtype=np.float32).reshape(-1, 3)
        self.amplitudes = np.asarray(self.amplitudes, dtype=np.float32).reshape(-1)
        self.sigmas = np.asarray(self.sigmas, dtype=np.float32).reshape(-1)
        n = len(self.centers)
        if self.amplitudes.shape != (n,) or self.sigmas.shape != (n,):
            raise ValueError("centers, amplitudes and sigmas must describe the same number of Gaussians")

    def __len__(self) -> int:
        return len(self.centers)

    def copy(self) -> "GMM":
        return GMM(self.centers.copy(), self.amplitudes.copy(), self.sigmas.copy(), dict(self.meta))

    def save(self, path) -> None:
        """Write ``path`` (.gmm.npz) atomically."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, centers=self.centers, amplitudes=self.amplitudes, sigmas=self.sigmas,
                         meta=np.array(json.dumps(self.meta, default=float)))

    @classmethod
    def load(cls, path) -> "GMM":
        path = Path(path)
        if not path.exists():
            raise InputError("file not found", path=path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"])) if "meta" in z else {}
                return cls(z["centers"], z["amplitudes"], z["sigmas"], meta)
        except (KeyError, ValueError, OSError) as exc:
            raise InputError(f"not a GMM file ({exc})", path=path) from None

    def save_pdb(self, path) -> None:
        """One pseudo-atom per Gaussian (coordinates Å from the box centre, width in B-factor)."""
        from ..io.pdb import write_pseudo_atoms

        write_pseudo_atoms(path, self.centers, self.amplitudes, self.sigmas)
