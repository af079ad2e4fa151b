"""A GMM as real-space images and maps (simulation, map-vs-GMM comparisons), via the backend.

Projections are I(p) = ∫V(Aᵀp)dz with the box centre at index box//2 and a Gaussian at c centred
at (A c)_xy − origin; values are mass per pixel (per voxel for maps).
"""
from __future__ import annotations

import numpy as np

from ..backend import get_backend
from .model import GMM


def project_images(gmm: GMM, rotations: np.ndarray, origins_A: np.ndarray, apix: float, box: int,
                   batch: int = 64, backend=None) -> np.ndarray:
    """Projections (k, box, box) float32 of ``gmm`` at RELION rotations (k, 3, 3), origins (k, 2) Å."""
    return (backend or get_backend()).project_images(gmm, rotations, origins_A, apix, box, batch)


def render_map(gmm: GMM, box: int, apix: float, backend=None) -> np.ndarray:
    """The GMM as a map (box, box, box) float32 indexed [z, y, x] (Å/voxel = ``apix``)."""
    return (backend or get_backend()).render_map(gmm, box, apix)
