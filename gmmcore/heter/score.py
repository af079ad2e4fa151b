"""The one comparison of heterogeneity training: ring-weighted FRC of GMM projections against
particles, on the cropped Fourier grid, through the backend's projector and FRC.

S = Σ_r w_r·FRC_r (Σ w_r = 1), FRC_r the FRC of ring r between the GMM's projection at the
particle's pose and the phase-flipped particle (:func:`gmmcore.backend.tf.frc`), rings from the
grid's ``minres_A`` to its resolution.  Centres may be one set (N, 3) or one per particle (B, N, 3).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from ..backend.tf import frc, project_ft
from ..grids import FourierGrid

F32 = tf.float32


@dataclass
class GridTensors:
    """A :class:`FourierGrid` and ring weights as tensors."""

    sy: tf.Tensor
    sx: tf.Tensor
    pix: tf.Tensor
    ring: tf.Tensor
    nrings: int
    ring_weights: tf.Tensor

    @classmethod
    def of(cls, grid: FourierGrid, ring_weights: np.ndarray) -> "GridTensors":
        return cls(tf.constant(grid.sy), tf.constant(grid.sx), tf.constant(grid.pix), tf.constant(grid.ring),
                   int(grid.nrings), tf.constant(np.asarray(ring_weights, np.float32)))


def weighted_frc(g: GridTensors, centers, amplitudes, sigmas, rotations, origins, part_re, part_im):
    """(B,) ring-weighted FRC of each particle against the GMM at its pose."""
    mre, mim = project_ft(centers, amplitudes, sigmas, rotations, origins, g.sy, g.sx)
    rings = frc(mre, mim, part_re, part_im, g.pix, g.ring, g.nrings)
    return tf.reduce_sum(rings * g.ring_weights[None, :], axis=1)
