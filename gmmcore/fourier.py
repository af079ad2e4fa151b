"""Fourier conventions and small helpers (the one place for them).

* Data are centred at index N//2 on every axis; their transform is ``rfftn(ifftshift(x))`` so the
  origin sits at index 0.  The inverse is ``fftshift(irfftn(F, s=shape))``.
* Integer frequency index k (the output of :func:`freq_index`) ↔ spatial frequency k / (N·apix) 1/Å.
* rfft grids keep the last axis (x) non-negative: shape (..., N//2 + 1).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


def ft(x: np.ndarray, axes: int = None) -> np.ndarray:
    """rfft of centred data over the last ``axes`` axes (default: all)."""
    axes = x.ndim if axes is None else axes
    ax = tuple(range(-axes, 0))
    return np.fft.rfftn(np.fft.ifftshift(x, axes=ax), axes=ax)


def ift(F: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`ft`: real, centred data of real-space ``shape`` (last len(shape) axes)."""
    ax = tuple(range(-len(shape), 0))
    return np.fft.fftshift(np.fft.irfftn(F, s=tuple(shape), axes=ax), axes=ax)


def freq_index(shape: Sequence[int], rfft: bool = True) -> Tuple[np.ndarray, ...]:
    """Integer frequency indices per axis, broadcastable to the (r)fft grid of real ``shape``.

    Returned in axis order ([z,] y, x); for ``rfft`` the last axis runs 0..N//2.
    """
    shape = tuple(int(s) for s in shape)
    out = []
    for i, n in enumerate(shape):
        if rfft and i == len(shape) - 1:
            k = np.arange(n // 2 + 1)
        else:
            k = np.fft.fftfreq(n, 1.0 / n).round().astype(np.int64)
        sh = [1] * len(shape)
        sh[i] = k.size
        out.append(k.reshape(sh))
    return tuple(out)


def radius_grid(shape: Sequence[int], rfft: bool = True) -> np.ndarray:
    """Frequency radius in pixels (float) on the (r)fft grid of real ``shape``."""
    ks = freq_index(shape, rfft)
    r2 = sum(k.astype(np.float64) ** 2 for k in ks)
    return np.sqrt(r2)


def radial_index(shape: Sequence[int], rfft: bool = True) -> np.ndarray:
    """Shell/ring index (rounded radius in pixels, int) on the (r)fft grid of real ``shape``:
    rint(√|k|²) as :func:`radius_grid` computes it, looked up per integer |k|² (the same numbers)."""
    r2 = sum(k.astype(np.int64) ** 2 for k in freq_index(shape, rfft))
    return np.rint(np.sqrt(np.arange(np.max(r2) + 1, dtype=np.float64))).astype(np.int64)[r2]


def shell_frequencies(box: int, apix: float) -> np.ndarray:
    """Spatial frequency (1/Å) of shells 0..box//2."""
    return np.arange(box // 2 + 1) / (box * float(apix))


def rfft_weights(shape: Sequence[int]) -> np.ndarray:
    """How many full-grid voxels each rfft voxel stands for (1 on the x = 0 / Nyquist planes, else 2).

    Sums over an rfft grid weighted by this equal sums over the full (Hermitian) grid.
    """
    n = int(shape[-1])
    w = np.full(n // 2 + 1, 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    return w


def lowpass(x: np.ndarray, apix: float, resolution_A: float, falloff_px: float = 3.0) -> np.ndarray:
    """Low-pass one centred 2-D image or 3-D map (cubic/square) to ``resolution_A``.

    Raised-cosine edge ``falloff_px`` Fourier pixels wide, centred on the cut-off radius
    box·apix/resolution.
    """
    x = np.asarray(x)
    shape = x.shape
    n = shape[-1]
    k_cut = n * float(apix) / float(resolution_A)  # cut-off radius in Fourier pixels
    r = radius_grid(shape)
    filt = _cosine_edge(r, k_cut, falloff_px)
    return ift(ft(x) * filt, shape).astype(x.dtype if x.dtype.kind == "f" else np.float32)


def _cosine_edge(r: np.ndarray, k_cut: float, width: float) -> np.ndarray:
    """1 below k_cut − width/2, 0 above k_cut + width/2, raised cosine between."""
    width = max(float(width), 1e-6)
    t = np.clip((r - (k_cut - width / 2)) / width, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def shift_phase_2d(n: int, shift_px: np.ndarray, rfft: bool = True) -> np.ndarray:
    """Phase factors that move image content by ``shift_px`` (k, 2) = (dx, dy) pixels.

    Multiplying the FT of an image by the result gives the image translated by +shift:
    g(p) = f(p − shift), i.e. exp(−2πi k·shift / n).  Shape (k, n, n//2+1) (or full grid).
    """
    s = np.atleast_2d(np.asarray(shift_px, dtype=np.float64))
    ky, kx = freq_index((n, n), rfft)
    ph = (kx[None] * s[:, 0, None, None] + ky[None] * s[:, 1, None, None]) * (-2.0 * np.pi / n)
    return np.exp(1j * ph)


def fourier_shift_2d(F: np.ndarray, shift_px: np.ndarray, n: int) -> np.ndarray:
    """Translate images by +shift_px (k, 2) = (dx, dy) pixels, given their rfft F (k, n, n//2+1)."""
    return F * shift_phase_2d(n, shift_px).astype(np.result_type(F, np.complex64))


def shift_images(images: np.ndarray, shift_px: np.ndarray) -> np.ndarray:
    """Translate real images (k, n, n) by +shift_px (k, 2) (x, y) pixels (Fourier, periodic)."""
    images = np.asarray(images)
    n = images.shape[-1]
    return ift(fourier_shift_2d(ft(images, 2), shift_px, n), (n, n)).astype(np.float32)


def rfft_crop(F: np.ndarray, n_in: int, n_out: int, ndim: int = 2) -> np.ndarray:
    """Crop (n_out < n_in) an rfft array over its last ``ndim`` axes to the grid of box n_out.

    Keeps frequencies |k| < n_out/2 plus the n_out Nyquist row taken from +n_out/2.  No rescaling:
    ``ift`` of the result has the same mean density × (n_out/n_in)**ndim sum.
    """
    if n_out > n_in:
        raise ValueError("rfft_crop only crops")
    idx_full = np.fft.fftfreq(n_out, 1.0 / n_out).round().astype(np.int64) % n_in
    out = F[..., : n_out // 2 + 1]
    for ax in range(-ndim, -1):
        out = np.take(out, idx_full, axis=ax)
    return out
