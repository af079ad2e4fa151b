"""Fourier grids of the GMM kernels, the resolution band, and the FRC ring weights (NumPy only).

Conventions: transforms of centred images are ``rfft2(ifftshift(img))``; index k of a box of N
pixels is the spatial frequency s = k / (N·apix) in 1/Å.  The kernels (projector, FRC, volume
transform; :mod:`gmmcore.backend`) work on a half-plane grid *cropped* to the current target
resolution, so their cost scales with resolution⁻² and nothing is interpolated.

The band is the one rule for the frequencies a comparison uses: rings/shells ``rmin..kmax`` with
``kmax = crop_size/2`` (the target resolution) and ``rmin = ceil(L / minres)`` (L = box·apix Å),
at least 1 and at most kmax (:func:`band_limits`).  Alignment (2-D rings) and GMM fitting (3-D
shells) both use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from .fourier import ft


def crop_size(box: int, apix: float, resolution_A: float) -> int:
    """Even size n = ceil(2·L/res) of the Fourier grid reaching ``resolution_A`` (L = box·apix),
    never beyond Nyquist (n ≤ box)."""
    n = int(math.ceil(2.0 * box * apix / resolution_A))
    n += n % 2
    return int(min(max(n, 4), box - box % 2))


def band_limits(box: int, apix: float, resolution_A: float, minres_A: float) -> Tuple[int, int]:
    """(rmin, kmax): the first and last ring/shell (Fourier pixels) of the band ``minres_A`` →
    ``resolution_A``.  ``minres_A`` ≤ 0 means from ring 1."""
    kmax = crop_size(box, apix, resolution_A) // 2
    L = box * apix
    rmin = max(1, int(math.ceil(L / minres_A))) if minres_A and minres_A > 0 else 1
    return min(rmin, kmax), kmax


@dataclass
class FourierGrid:
    """Half-plane Fourier grid of a ``box`` cropped to ``resolution_A``, with the rings from
    ``minres_A`` to ``resolution_A`` used by the FRC.

    Rows hold k_y = −kmax..kmax, columns k_x = 0..kmax (Fourier pixels).  ``pix`` are the flat
    indices (into ny·nx) of the pixels the FRC uses, ``ring`` their ring number (0-based from the
    first ring used); duplicate Hermitian pixels (k_x = 0, k_y < 0) are left out.  ``sy``, ``sx``
    are the frequencies of rows and columns in 1/Å.
    """

    box: int
    apix: float
    resolution_A: float
    minres_A: float

    def __post_init__(self):
        rmin, kmax = band_limits(self.box, self.apix, self.resolution_A, self.minres_A)
        self.kmax = kmax
        self.ky = np.arange(-kmax, kmax + 1)
        self.kx = np.arange(0, kmax + 1)
        L = self.box * self.apix
        self.sy = (self.ky / L).astype(np.float32)
        self.sx = (self.kx / L).astype(np.float32)
        r = np.rint(np.hypot(self.ky[:, None], self.kx[None, :])).astype(np.int64)
        use = (r >= rmin) & (r <= kmax) & ~((self.kx[None, :] == 0) & (self.ky[:, None] < 0))
        self.pix = np.flatnonzero(use.ravel()).astype(np.int32)
        self.ring = (r.ravel()[self.pix] - rmin).astype(np.int32)
        self.nrings = int(kmax - rmin + 1)
        self.rmin = rmin

    @property
    def shape(self) -> Tuple[int, int]:
        return len(self.ky), len(self.kx)

    def crop(self, ft_full: np.ndarray) -> np.ndarray:
        """Crop rfft2 transforms (k, box, box//2+1) to this grid → (k, ny, nx) complex64."""
        rows = self.ky % self.box
        return np.ascontiguousarray(ft_full[:, rows][:, :, : self.kmax + 1]).astype(np.complex64)

    def image_ft(self, images: np.ndarray) -> np.ndarray:
        """Centred real images (k, box, box) → cropped transforms (k, ny, nx) complex64."""
        return self.crop(ft(images, 2))

    def ring_sizes(self) -> np.ndarray:
        """Pixels per FRC ring n_r, (nrings,) float64."""
        return np.bincount(self.ring, minlength=self.nrings).astype(np.float64)


def full_grid_frequencies(box: int, apix: float) -> Tuple[np.ndarray, np.ndarray]:
    """(sy, sx) of the uncropped rfft2 grid of a box, 1/Å, float32 (rows in FFT order)."""
    L = box * apix
    ky = np.fft.fftfreq(box) * box
    kx = np.arange(box // 2 + 1)
    return (ky / L).astype(np.float32), (kx / L).astype(np.float32)


# --------------------------------------------------------------------------------------------
# FRC ring weights (matched filter) and the log-likelihood scale of the weighted FRC


def ssnr_ring_weights(ring_frc: np.ndarray, grid: FourierGrid) -> np.ndarray:
    """Ring weights for the FRC average from the population FRC of a set of particles.

    Each ring's per-particle FRC is a noisy estimate of the population FRC f_r with variance
    ≈ 1/n_r (n_r pixels in the ring); weighting ring r by f_r·n_r (clipped at 0) is the
    matched-filter choice.  Returns (nrings,) summing to 1; uniform if no ring has signal."""
    f = np.clip(np.nanmean(ring_frc, axis=0), 0.0, None)
    w = f * grid.ring_sizes()
    return w / w.sum() if w.sum() > 0 else np.full(grid.nrings, 1.0 / grid.nrings)


def ssnr_data_scale(ring_frc: np.ndarray, grid: FourierGrid) -> float:
    """2·Σ_r n_r f_r: converts a change of the SSNR-weighted FRC into log-likelihood units
    (the per-ring profile log-likelihood Σ n_r·FRC_r² changes by ≈ 2·Σ_r n_r f_r · ΔS)."""
    f = np.clip(np.nanmean(ring_frc, axis=0), 0.0, None)
    return float(2.0 * np.sum(f * grid.ring_sizes()))


def normalised_ring_weights(ring_weights, nrings: int) -> np.ndarray:
    """Ring weights clipped at 0 and summing to 1, (nrings,) float32; uniform when None or unusable."""
    w = np.ones(nrings) if ring_weights is None else np.clip(np.asarray(ring_weights, np.float64), 0, None)
    if w.shape != (nrings,) or w.sum() <= 0:
        w = np.ones(nrings)
    return (w / w.sum()).astype(np.float32)
