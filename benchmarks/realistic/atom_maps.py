"""Density maps from atomic models, independent of the engine's GMM: atoms as Gaussians on a fine grid,
then Fourier-cropped to the particle pixel size.

Physics: atom j contributes Z_j · N(x; x_j, s_j²) with s_j² = ATOM_SIGMA_A² + B_j / (8π²) (Å²), Z_j its
atomic number (:func:`gmmcore.io.pdb.atomic_numbers`), B_j its B-factor (clipped to ≥ B_MIN; the
PDB's own column), ATOM_SIGMA_A the atom's own scattering width.  The sum is sampled at voxel centres
on a grid ``oversample`` times finer than the particle pixel (≤ 1 Å: 0.5 Å for 1.5 Å/px), then
Fourier-cropped to the particle grid — the map a perfect reconstruction at that pixel size gives.
Grid convention: the box centre is voxel N//2 (as everywhere in gmmcore), coordinates (x, y, z) Å
from that centre, the map indexed [z, y, x].
"""
from __future__ import annotations

import math
from pathlib import Path
import numpy as np

ATOM_SIGMA_A = 0.5  # Å, the atom's own width (electron scattering potential) before the B-factor
B_MIN = 10.0  # Å², floor on the B-factor column (some atoms carry 0)


def read_b_factors(path) -> np.ndarray:
    """B-factors (Å², columns 61–66) of the ATOM/HETATM records of a heavy-atom file such as the
    bundled ADK models (no hydrogens, waters or alternate locations: the same atoms, in the same
    order, as :func:`gmmcore.io.pdb.read_atoms` returns — the caller checks the count)."""
    out = []
    with open(path) as fh:
        for line in fh:
            if line[:6].strip().upper() in ("ATOM", "HETATM"):
                out.append(float(line[60:66]) if line[60:66].strip() else 0.0)
    return np.asarray(out, np.float64)


def atom_sigmas(b_factors: np.ndarray) -> np.ndarray:
    """Per-atom Gaussian width (Å) from B-factors (Å²): sqrt(ATOM_SIGMA_A² + max(B, B_MIN)/(8π²))."""
    b = np.maximum(np.asarray(b_factors, np.float64), B_MIN)
    return np.sqrt(ATOM_SIGMA_A ** 2 + b / (8.0 * math.pi ** 2))


def sample_atoms(coords_A: np.ndarray, amplitudes: np.ndarray, sigmas_A: np.ndarray, box: int,
                 apix: float, cutoff_sigma: float = 4.0) -> np.ndarray:
    """Σ_j a_j N(x; x_j, σ_j²) sampled at the voxel centres of a (box,)*3 grid of ``apix`` Å
    (float64, [z, y, x]); each atom within ``cutoff_sigma`` σ of its centre (separable per axis)."""
    c = np.asarray(coords_A, np.float64) / apix + box // 2  # voxel coordinates (x, y, z)
    s = np.asarray(sigmas_A, np.float64) / apix
    a = np.asarray(amplitudes, np.float64) / ((2 * math.pi) ** 1.5 * s ** 3)  # density per voxel
    r = int(math.ceil(cutoff_sigma * s.max()))
    base = np.floor(c).astype(np.int64)
    off = np.arange(-r, r + 1)
    idx = base[:, :, None] + off[None, None, :]  # (n, 3, w)
    g = np.exp(-0.5 * ((idx - c[:, :, None]) / s[:, None, None]) ** 2)
    g[(idx < 0) | (idx >= box)] = 0.0
    idx = np.clip(idx, 0, box - 1)
    w = g[:, 2, :, None, None] * g[:, 1, None, :, None] * g[:, 0, None, None, :] * a[:, None, None, None]
    flat = (idx[:, 2, :, None, None] * box + idx[:, 1, None, :, None]) * box + idx[:, 0, None, None, :]
    vol = np.bincount(flat.ravel(), weights=w.ravel(), minlength=box ** 3)
    return vol.reshape((box,) * 3)


def fourier_crop(volume: np.ndarray, box: int) -> np.ndarray:
    """Band-limit a cubic map to a ``box``-voxel grid of the same extent (keeps the low frequencies;
    fine voxel k·f ↔ coarse voxel k with f = N/box, so the centre N//2 maps to box//2 when f is an
    integer and N, box are even)."""
    n = volume.shape[0]
    F = np.fft.fftshift(np.fft.fftn(volume))
    lo = n // 2 - box // 2
    Fc = F[lo:lo + box, lo:lo + box, lo:lo + box]
    out = np.fft.ifftn(np.fft.ifftshift(Fc)).real
    return out * (box / n) ** 3  # same values as the fine map (a constant stays that constant)


def atom_map(coords_A: np.ndarray, amplitudes: np.ndarray, sigmas_A: np.ndarray, box: int, apix: float,
             fine_A: float = 0.5) -> np.ndarray:
    """The map (float32 (box,)*3, [z, y, x]) at ``apix`` Å/px of atoms as Gaussians, sampled at
    apix/f ≤ ``fine_A`` Å (f integer) then Fourier-cropped to ``box``.  Units: atomic-number
    density per fine voxel (a constant scale; projections are normalised by the noise level)."""
    f = max(1, int(math.ceil(apix / fine_A - 1e-9)))
    fine = sample_atoms(coords_A, amplitudes, sigmas_A, box * f, apix / f)
    return fourier_crop(fine, box).astype(np.float32)


def write(path: Path, volume: np.ndarray, apix: float) -> Path:
    """Write an MRC map (gmmcore's atomic writer)."""
    from gmmcore.io.maps import write_map

    return write_map(path, np.asarray(volume, np.float32), apix)
