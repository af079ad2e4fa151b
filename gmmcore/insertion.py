"""Trilinear insertion of central-slice samples into the reconstructor's accumulator, compiled.

The CPU kernel of :class:`gmmcore.reconstruct.Reconstructor` (numba).  For each image i and sample
s at 2-D frequency (kx, ky) (padded-grid units) the 3-D frequency is q = Aᵢᵀ(kx, ky, 0); samples
with q_x < 0 are moved to −q with the conjugate value (Friedel), and the record
(value.real, value.imag, weight) is added with trilinear weights to the 8 voxels around q.

It also centres each sample (phase shift by the origin) and weights it by the CTF, so no (images ×
samples) temporaries are made.  The arithmetic is the NumPy path's, operation for operation: the
phase in float64, the shifted value (complex128) times c·mult, weight c·c·mult; q, floors and
fractions in float32, each corner's weight (w_z·w_y)·w_x in float32, widened to float64 and
multiplied by the float64 record.  Only the order of the additions differs — a
sample's 8 corners one after the other (the NumPy path adds corner by corner over a pass of
images) — so a voxel's sums may differ in the last bits of float64 (≈ 1e-16 relative), which the
float32 map does not show.  Each sample's corners share 4 cache lines, and neighbouring samples
land on neighbouring voxels: on a memory-bound scatter that is what makes it fast.

:func:`kernel` is None where numba is not installed (e.g. a GPU machine whose environment lacks
it; a device insertion kernel serves there); the reconstructor then uses its NumPy path.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

_KERNEL = None
_TRIED = False


def _compile() -> Optional[Callable]:
    try:
        import numba
        import numpy as np
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True)
    def insert(acc, kx, ky, A, F, origins, c, mult, P, nx):  # pragma: no cover - compiled
        b, S = F.shape
        half = P // 2
        plane = (P + 1) * nx
        one = np.float32(1.0)
        scale = -2.0 * np.pi / P
        for i in range(b):
            a00, a10 = A[i, 0, 0], A[i, 1, 0]
            a01, a11 = A[i, 0, 1], A[i, 1, 1]
            a02, a12 = A[i, 0, 2], A[i, 1, 2]
            ox, oy = origins[i, 0], origins[i, 1]
            for s in range(S):
                # the sample centred (content moved by +origin: F·exp(−2πi k·origin/P)), weighted
                ph = scale * (ox * np.float64(kx[s]) + oy * np.float64(ky[s]))
                v = np.complex128(F[i, s]) * complex(np.cos(ph), np.sin(ph))
                cm = c[i, s] * mult[s]
                wt = c[i, s] * c[i, s] * mult[s]
                # its 3-D frequency, on the x >= 0 side (Friedel: conjugate value)
                qx = kx[s] * a00 + ky[s] * a10
                sg = one
                if qx < 0:
                    sg = np.float32(-1.0)
                qx = qx * sg
                qy = (kx[s] * a01 + ky[s] * a11) * sg
                qz = (kx[s] * a02 + ky[s] * a12) * sg
                x0, y0, z0 = np.floor(qx), np.floor(qy), np.floor(qz)
                fx, fy, fz = qx - x0, qy - y0, qz - z0
                re, im = v.real * cm, (v.imag * cm) * sg
                base = np.int64(x0) + (np.int64(y0) + half) * nx + (np.int64(z0) + half) * plane
                for k in range(8):
                    dz, dy, dx = k >> 2, (k >> 1) & 1, k & 1
                    wx = fx if dx else one - fx
                    wy = fy if dy else one - fy
                    wz = fz if dz else one - fz
                    w = np.float64((wz * wy) * wx)
                    j = base + dx + dy * nx + dz * plane
                    acc[j, 0] += w * re
                    acc[j, 1] += w * im
                    acc[j, 2] += w * wt

    return insert


def kernel() -> Optional[Callable]:
    """The compiled kernel ``insert(acc, kx, ky, A, F, origins, c, mult, P, nx)`` — ``acc`` (V, 3)
    float64; ``kx``/``ky`` (S,) float32 sample frequencies; ``A`` (b, 3, 3) float32; ``F`` (b, S)
    complex64 padded transforms, not yet centred; ``origins`` (b, 2) float64 pixels; ``c`` (b, S)
    float64 CTF weights; ``mult`` (S,) float64 — or None without numba, or with
    ``GMMCORE_NUMPY_INSERTION=1`` (the NumPy path)."""
    global _KERNEL, _TRIED
    if os.environ.get("GMMCORE_NUMPY_INSERTION") == "1":
        return None
    if not _TRIED:
        _TRIED = True
        _KERNEL = _compile()
    return _KERNEL
