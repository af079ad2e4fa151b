"""Trilinear insertion of central-slice samples into the reconstructor's accumulator, compiled.

The CPU kernel of :class:`gmmcore.reconstruct.Reconstructor` (numba).  For each image i, sample s
at 2-D frequency (kx, ky) (padded-grid units) and symmetry operator r, the 3-D frequency is
q = A_{ir}ᵀ(kx, ky, 0); samples with q_x < 0 are moved to −q with the conjugate value (Friedel),
and the record (value.real, value.imag, weight) is added with trilinear weights to the 8 voxels
around q, at the accumulator rows ``tz[z] + ty[y] + tx[x]`` (:class:`gmmcore.reconstruct.Bricks`).

It also centres each sample (phase shift by the origin) and weights it by |CTF| — given, or
evaluated here from the particle's :func:`gmmcore.ctf.ctf_image_terms` by the compiled
:func:`gmmcore.ctf.ctf_contrast` (the same formula, operation for operation, and the same libm
cos/sin as NumPy's, rounded to float32 as the NumPy path rounds it) — so no (images × samples)
temporaries are made.  The arithmetic is the NumPy path's except for the centring phase:
there each sample's exp(−2πi(kx·ox + ky·oy)/P) is one cos/sin of the float64 phase; here it is the
product of the image's per-axis factors exp(−2πi·kx·ox/P)·exp(−2πi·ky·oy/P) (481 cos/sin pairs
per image at box 160 instead of 40,344), equal up to float64 rounding (a few 1e-16 relative).  The
rest is operation for operation: the value (complex128) times c·mult, weight c·c·mult; q, floors
and fractions in float32, each corner's weight (w_z·w_y)·w_x in float32, widened to float64 and
multiplied by the float64 record.  The additions come in another order — a sample's operators and
8 corners one after the other (the NumPy path adds corner by corner over a pass of images and one
operator after the other) — so a voxel's sums may differ in the last bits of float64, which the
float32 map does not show.  Each sample's corners share 4 cache lines of one brick most of the
time, and neighbouring samples land in the same bricks: on a memory-bound scatter that is what
makes it fast.

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
    from .ctf import ctf_contrast

    contrast = numba.njit(cache=True, nogil=True)(ctf_contrast(np))  # the CTF formula, one sample

    @numba.njit(cache=True, nogil=True, inline="always")
    def add(acc, j, w, re, im, wt):  # pragma: no cover - compiled
        acc[j, 0] += w * re
        acc[j, 1] += w * im
        acc[j, 2] += w * wt

    @numba.njit(cache=True, nogil=True)
    def insert(acc, tz, ty, tx, kx, ky, A, F, origins, c, mult, P, terms, u2, azim):  # pragma: no cover
        b, S = F.shape
        own_ctf = terms.shape[0] > 0
        m = A.shape[1]
        half = P // 2
        one = np.float32(1.0)
        scale = -2.0 * np.pi / P
        ex = np.empty(half + 1, np.complex128)  # exp(−2πi·kx·ox/P), kx = 0..P/2
        ey = np.empty(P, np.complex128)  # exp(−2πi·ky·oy/P), ky = −P/2..P/2−1 at index ky + P/2
        rec = np.empty((S, 3))  # the image's records (value.real·c·mult, value.imag·c·mult, c²·mult)
        for i in range(b):
            ox, oy = origins[i, 0], origins[i, 1]
            for j in range(half + 1):
                ph = scale * (ox * np.float64(j))
                ex[j] = complex(np.cos(ph), np.sin(ph))
            for j in range(P):
                ph = scale * (oy * np.float64(j - half))
                ey[j] = complex(np.cos(ph), np.sin(ph))
            for s in range(S):
                # the sample centred (content moved by +origin: F·exp(−2πi k·origin/P)), weighted
                v = np.complex128(F[i, s]) * (ex[np.int64(kx[s])] * ey[np.int64(ky[s]) + half])
                if own_ctf:  # |CTF| rounded to float32, as the NumPy path's c
                    ci = np.float64(abs(np.float32(contrast(terms[i, 0], terms[i, 1], terms[i, 2], terms[i, 3],
                                                            terms[i, 4], terms[i, 5], terms[i, 6], u2[s], azim[s]))))
                else:
                    ci = c[i, s]
                cm = ci * mult[s]
                rec[s, 0] = v.real * cm
                rec[s, 1] = v.imag * cm
                rec[s, 2] = ci * ci * mult[s]
            for r in range(m):
                a00, a10, a01, a11 = A[i, r, 0, 0], A[i, r, 1, 0], A[i, r, 0, 1], A[i, r, 1, 1]
                a02, a12 = A[i, r, 0, 2], A[i, r, 1, 2]
                for s in range(S):
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
                    gx, gy, gz = one - fx, one - fy, one - fz
                    re, im, wt = rec[s, 0], rec[s, 1] * sg, rec[s, 2]
                    jx, jy, jz = np.int64(x0), np.int64(y0) + half, np.int64(z0) + half
                    x_0, x_1 = tx[jx], tx[jx + 1]
                    zy = tz[jz] + ty[jy]  # corners (z, y) = (0, 0), (0, 1), (1, 0), (1, 1): weight (w_z·w_y)·w_x
                    add(acc, zy + x_0, np.float64((gz * gy) * gx), re, im, wt)
                    add(acc, zy + x_1, np.float64((gz * gy) * fx), re, im, wt)
                    zy = tz[jz] + ty[jy + 1]
                    add(acc, zy + x_0, np.float64((gz * fy) * gx), re, im, wt)
                    add(acc, zy + x_1, np.float64((gz * fy) * fx), re, im, wt)
                    zy = tz[jz + 1] + ty[jy]
                    add(acc, zy + x_0, np.float64((fz * gy) * gx), re, im, wt)
                    add(acc, zy + x_1, np.float64((fz * gy) * fx), re, im, wt)
                    zy = tz[jz + 1] + ty[jy + 1]
                    add(acc, zy + x_0, np.float64((fz * fy) * gx), re, im, wt)
                    add(acc, zy + x_1, np.float64((fz * fy) * fx), re, im, wt)

    return insert


def kernel() -> Optional[Callable]:
    """The compiled kernel ``insert(acc, tz, ty, tx, kx, ky, A, F, origins, c, mult, P, terms, u2, azim)`` — ``acc``
    (V, 3) float64 and its row offsets ``tz``/``ty``/``tx`` (int64, per z/y/x index); ``kx``/``ky``
    (S,) float32 sample frequencies; ``A`` (b, m, 3, 3) float32, image i's rotation times each of
    the m symmetry operators; ``F`` (b, S) complex64 padded transforms, not yet centred; ``origins``
    (b, 2) float64 pixels; ``c`` (b, S) float64 CTF weights; ``mult`` (S,) float64; ``terms`` (b, 7)
    float64 the particles' CTF terms, the weights then |CTF| at the samples' |k|² ``u2`` and azimuth
    ``azim`` (S,) float64 (``c`` is not read), or (0, 7) to use ``c`` — or None without numba, or
    with ``GMMCORE_NUMPY_INSERTION=1`` (the NumPy path)."""
    global _KERNEL, _TRIED
    if os.environ.get("GMMCORE_NUMPY_INSERTION") == "1":
        return None
    if not _TRIED:
        _TRIED = True
        _KERNEL = _compile()
    return _KERNEL
