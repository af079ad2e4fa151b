"""The numba kernel of :mod:`gmmcore.insertion` (imported only when numba is installed; the
functions are module-level so numba's on-disk cache serves every process)."""
from __future__ import annotations

import numba
import numpy as np

from .ctf import ctf_contrast

contrast = numba.njit(cache=True, nogil=True)(ctf_contrast(np))  # the CTF formula, one sample


@numba.njit(cache=True, nogil=True, inline="always")
def add(acc, j, w, re, im, wt):  # pragma: no cover - compiled
    """One trilinear corner: the record (re, im, wt) times w added to row j."""
    acc[j, 0] += w * re
    acc[j, 1] += w * im
    acc[j, 2] += w * wt


@numba.njit(cache=True, nogil=True)
def insert(acc, tz, ty, tx, kx, ky, A, F, origins, c, mult, P, terms, u2, azim):  # pragma: no cover
    """See :func:`gmmcore.insertion.kernel`."""
    b, S = F.shape
    own_ctf = terms.shape[0] > 0
    m = A.shape[1]
    half = P // 2
    one = np.float32(1.0)
    scale = -2.0 * np.pi / P
    ex = np.empty(half + 1, np.complex128)  # exp(−2πi·kx·ox/P), kx = 0..P/2
    ey = np.empty(P, np.complex128)  # exp(−2πi·ky·oy/P), ky = −P/2..P/2−1 at index ky + P/2
    rec = np.empty((S, 3))  # the image's records (value.real·c·mult, value.imag·c·mult, c²·mult)
    cs = np.empty(S)  # the last |CTF| evaluated: the next image reuses it if its terms are the same
    for i in range(b):
        ox, oy = origins[i, 0], origins[i, 1]
        for j in range(half + 1):
            ph = scale * (ox * np.float64(j))
            ex[j] = complex(np.cos(ph), np.sin(ph))
        for j in range(P):
            ph = scale * (oy * np.float64(j - half))
            ey[j] = complex(np.cos(ph), np.sin(ph))
        # particles of one micrograph share their CTF: the same terms give the same values
        same = own_ctf and i > 0 and np.all(terms[i] == terms[i - 1])
        for s in range(S):
            # the sample centred (content moved by +origin: F·exp(−2πi k·origin/P)), weighted
            v = np.complex128(F[i, s]) * (ex[np.int64(kx[s])] * ey[np.int64(ky[s]) + half])
            if own_ctf:  # |CTF| rounded to float32, as the NumPy path's c
                if not same:
                    cs[s] = np.float64(abs(np.float32(contrast(terms[i, 0], terms[i, 1], terms[i, 2], terms[i, 3],
                                                               terms[i, 4], terms[i, 5], terms[i, 6], u2[s],
                                                               azim[s]))))
                ci = cs[s]
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
