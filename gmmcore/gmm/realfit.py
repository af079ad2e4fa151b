"""The GMM fit's loss and gradients through a real-space rendering and FFTs (CPU, NumPy/SciPy).

Same loss as the backends' Fourier-space fit (:mod:`gmmcore.gmm.build`, module notes: 1 − mean
shell FSC + the power term, on the same cropped band, shells and weights), but the GMM's transform
is obtained by rendering the Gaussians on a grid of the same box and one real FFT, and the
gradient by one inverse real FFT and a gather over each Gaussian's window.  The rendering grid is
set by the band and the narrowest Gaussian, not by the map's pixel size (:meth:`RealSpaceFit.grid_size`:
≈ 4 voxels per period of the band's resolution d when the narrowest σ is 0.3·d).  The cost per step is O(N·w³ + n³ log n) —
each Gaussian touches only its footprint (w ≈ 8σ/spacing + 2 voxels per axis) — instead of the
Fourier product's O(N·n_k³) over the whole cropped grid (n_k = 2·kmax + 1), so it wins for many
Gaussians (``benchmarks/bench_gmm_build.py``).

Approximations (both far below a half map's noise): the rendering is cut where each window ends
(≥ 4σ from the centre on every side: mass outside < 2·10⁻⁴) and the sampled Gaussians alias: at the
band edge k = 1/d the first alias is exp(−2π²σ²(s² − 2s/d)) of the signal (s = 1/spacing), kept
below 10⁻⁶ for the narrowest Gaussian up to a grid of twice the box.  (Rendering on the map's own grid
instead would alias by 4 % at 1.5 Å/px and a 4 Å band — measured to cost 0.1 Å on the realistic
rigid set.)  Fitted numbers therefore differ slightly from the Fourier fit's.

Conventions: centres in Å from the box centre (x = column, y = row, z = section); the map's
transform is ``rfftn(ifftshift(map))`` (voxel n//2 at index 0); values are mass per voxel, so a
Gaussian of amplitude a renders as a·v·(2πσ²)^(−3/2)·exp(−|r − c|²/2σ²) with v the rendering
voxel's volume (the DFT of masses per voxel approximates the continuous transform on any grid).
"""
from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np
import scipy.fft as sfft

ALIAS = 1e-6  # the largest first alias, relative to the signal at the band edge, of the narrowest Gaussian
TRUNCATION_SIGMAS = 4.0  # each window reaches at least this many σ from the centre on every side


def _softplus(x):
    return np.logaddexp(0.0, x)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class RealSpaceFit:
    """Loss and gradients of the GMM-to-map fit for one :class:`gmmcore.gmm.build._FitProblem`,
    with the interface of the backends' fit (``sums``, ``value_and_grad``; parameters
    [centres (N,3) Å, u (N,), w (N,)] float32, amplitude = a0·softplus(u), width = σ0·softplus(w))."""

    def __init__(self, prob, sigmas0, amp_weight: float, workers: int = -1):
        self.kmax = prob.kmax
        self.length = prob.box * prob.apix  # Å: the box; frequencies are k / length on any grid of it
        self.max_n = 2 * prob.box  # the finest rendering grid (a Gaussian narrower than it allows aliases)
        self.workers = workers
        self._grids = {}
        self.k = np.arange(-prob.kmax, prob.kmax + 1)
        nk, nx = len(self.k), prob.kmax + 1
        self.Mr = np.concatenate([mr for _, mr, _, _, _ in prob.slabs]).astype(np.float32)
        self.Mi = np.concatenate([mi for _, _, mi, _, _ in prob.slabs]).astype(np.float32)
        self.shell = np.concatenate([sh for *_, sh, _ in prob.slabs]).reshape(nk, nk, nx)
        self.wgt = np.concatenate([wg for *_, wg in prob.slabs]).reshape(nk, nk, nx).astype(np.float32)
        self.nseg = prob.nshells
        self.S_mm = np.asarray(prob.S_mm, np.float64)
        self.f0 = prob.rmin - 1
        self.aw = float(amp_weight)
        self.s0 = np.asarray(sigmas0, np.float64)
        # the adjoint of keeping only k_x ≥ 0: entries with k_x > 0 stand for two (see _adjoint)
        self.half_factor = np.where(np.arange(nx) > 0, 0.5, 1.0).astype(np.float32)

    def grid_size(self, sigma_min: float) -> int:
        """Rendering voxels per axis for Gaussians of width ≥ ``sigma_min`` (Å): the first alias of
        the narrowest, exp(−2π²σ²(s² − 2sk)) at the band edge k, stays below ALIAS (s = voxels per Å;
        ≈ 4 per period of the band's resolution d at σ = 0.3·d); at least 2·kmax + 2, at most twice the box."""
        k = self.kmax / self.length
        c = math.log(1.0 / ALIAS) / (2.0 * math.pi ** 2 * max(float(sigma_min), 1e-6) ** 2)
        n = int(math.ceil(self.length * (k + math.sqrt(k * k + c))))
        return int(min(max(sfft.next_fast_len(n, real=True), 2 * self.kmax + 2), self.max_n))

    def _use_grid(self, sig):
        """Set the rendering grid for widths ``sig`` (and the adjoint's zero-padded buffers: only the
        band's entries are ever written into them, the rest stays 0)."""
        n = self.grid_size(float(np.min(sig)))
        if n not in self._grids:
            nk, nx = len(self.k), self.kmax + 1
            self._grids[n] = (np.zeros((n, nk, nx), np.complex64), np.zeros((n, n, nx), np.complex64),
                              np.zeros((n, n, n // 2 + 1), np.complex64))
        self.n, self.apix, self.rows = n, self.length / n, self.k % n
        self._pad_z, self._pad_y, self._pad_x = self._grids[n]

    # ---------------------------------------------------------------- rendering and its adjoint
    def _groups(self, sig):
        """Gaussians grouped by window half-width h = ⌈4σ/apix + ½⌉ voxels, so the window about the
        centre's nearest voxel reaches 4σ on every side (a few wide Gaussians do not widen every
        window)."""
        h = np.minimum(self.n // 2, np.ceil(TRUNCATION_SIGMAS * sig / self.apix + 0.5).astype(np.int64))  # apix: the rendering spacing
        return [(int(v), np.flatnonzero(h == v)) for v in np.unique(h)]

    def _windows(self, c, sig, h):
        """Per Gaussian: flat voxel indices of its (2h+1)³ window (in ifftshift order) and the 1-D
        factors exp(−d²/2σ²) along x, y, z with the offsets d (Å)."""
        n, apix = self.n, self.apix
        off = np.arange(-h, h + 1)
        i0 = np.rint(c / apix).astype(np.int64)  # (N, 3) voxel of the centre, x y z, from the box centre
        vox = i0[:, :, None] + off[None, None, :]  # (N, 3, W)
        d = vox * apix - c[:, :, None]  # Å
        e = np.exp(-0.5 * (d / sig[:, None, None]) ** 2)
        idx = vox % n  # ifftshift order: the box centre is index 0
        flat = ((idx[:, 2, :, None, None] * n + idx[:, 1, None, :, None]) * n + idx[:, 0, None, None, :])
        return flat, e, d

    def _render(self, c, amp, sig):
        A = amp * self.apix ** 3 * (2.0 * math.pi * sig ** 2) ** -1.5
        parts, flats, vals = [], [], []
        for h, sel in self._groups(sig):
            flat, e, d = self._windows(c[sel], sig[sel], h)
            v = A[sel, None, None, None] * e[:, 2, :, None, None] * e[:, 1, None, :, None] * e[:, 0, None, None, :]
            flats.append(flat.ravel())
            vals.append(v.ravel())
            parts.append((sel, flat, e, d))
        grid = np.bincount(np.concatenate(flats), weights=np.concatenate(vals), minlength=self.n ** 3)
        return grid.reshape(self.n, self.n, self.n).astype(np.float32), (parts, A)

    def _transform(self, grid):
        """Cropped transform (k_z, k_y ∈ −kmax..kmax, k_x ∈ 0..kmax) of the rendered grid."""
        kx = self.kmax + 1
        t = sfft.rfft(grid, axis=2, workers=self.workers)[:, :, :kx]
        t = sfft.fft(t, axis=1, workers=self.workers)[:, self.rows, :]
        return sfft.fft(t, axis=0, workers=self.workers, overwrite_x=True)[self.rows]

    def _adjoint(self, g):
        """Gradient on the grid of a loss whose gradient on the cropped transform is ``g``
        (dL/dRe + i·dL/dIm): the transpose of :meth:`_transform`."""
        n, kx = self.n, self.kmax + 1
        self._pad_z[self.rows] = g
        t = sfft.ifft(self._pad_z, axis=0, norm="forward", workers=self.workers)
        self._pad_y[:, self.rows, :] = t
        u = sfft.ifft(self._pad_y, axis=1, norm="forward", workers=self.workers)
        # irfft's x pass counts every k_x > 0 entry twice (it adds its Hermitian mate): hence the ½
        np.multiply(u, self.half_factor, out=self._pad_x[:, :, :kx])
        return sfft.irfft(self._pad_x, n=n, axis=2, norm="forward", workers=self.workers)

    # ---------------------------------------------------------------- loss
    def _shell_sums(self, G):
        gm = self.wgt * (G.real * self.Mr + G.imag * self.Mi)
        gg = self.wgt * (G.real ** 2 + G.imag ** 2)
        sh = self.shell.ravel()
        S_gm = np.bincount(sh, weights=gm.ravel(), minlength=self.nseg + 1)[: self.nseg]
        S_gg = np.bincount(sh, weights=gg.ravel(), minlength=self.nseg + 1)[: self.nseg]
        return S_gm, S_gg

    def _params(self, p, a0):
        c = np.asarray(p[0], np.float64)
        amp = np.asarray(a0, np.float64) * _softplus(np.asarray(p[1], np.float64))
        sig = self.s0 * _softplus(np.asarray(p[2], np.float64))
        return c, amp, sig

    def sums(self, p, amplitudes0) -> np.ndarray:
        """(nshells, 2) shell sums [S_gm, S_gg] of the GMM against the map."""
        c, amp, sig = self._params(p, amplitudes0)
        self._use_grid(sig)
        grid, _ = self._render(c, amp, sig)
        return np.stack(self._shell_sums(self._transform(grid)), axis=1)

    def value_and_grad(self, p, amplitudes0) -> Tuple[float, np.ndarray, List[np.ndarray]]:
        """(loss, FSC per fitted shell, [grad centres, grad u, grad w]) as NumPy float32."""
        c, amp, sig = self._params(p, amplitudes0)
        self._use_grid(sig)
        grid, (parts, A) = self._render(c, amp, sig)
        G = self._transform(grid)
        S_gm, S_gg = self._shell_sums(G)
        f0, S_mm = self.f0, self.S_mm
        den = np.sqrt(S_gg[f0:] * S_mm[f0:] + 1e-30)
        fsc = S_gm[f0:] / den
        rg = np.sqrt(S_gg + 1e-30)
        power = np.sum((rg - np.sqrt(S_mm)) ** 2) / np.sum(S_mm)
        loss = 1.0 - np.mean(fsc) + self.aw * power
        # dL/dS
        nf = len(fsc)
        dS_gm = np.zeros(self.nseg)
        dS_gm[f0:] = -1.0 / nf / den
        dS_gg = self.aw * (rg - np.sqrt(S_mm)) / rg / np.sum(S_mm)
        dS_gg[f0:] += 0.5 / nf * S_gm[f0:] * S_mm[f0:] / den ** 3
        ext = lambda v: np.append(v, 0.0).astype(np.float32)[self.shell]  # noqa: E731  (dump shell → 0)
        a_gm, a_gg = ext(dS_gm) * self.wgt, ext(dS_gg) * self.wgt
        g = np.empty(G.shape, np.complex64)
        g.real = a_gm * self.Mr + 2.0 * a_gg * G.real
        g.imag = a_gm * self.Mi + 2.0 * a_gg * G.imag
        dgrid = self._adjoint(g).ravel()
        S0, S1, S2 = np.zeros(len(c)), np.zeros((len(c), 3)), np.zeros(len(c))
        for sel, flat, e, d in parts:
            S0[sel], S1[sel], S2[sel] = _window_moments(dgrid[flat].astype(np.float64), e, d)
        inv2 = 1.0 / sig ** 2
        g_c = (A * inv2)[:, None] * S1
        g_amp = A / amp * S0
        g_sig = A * (S2 * inv2 / sig - 3.0 * S0 / sig)
        g_u = g_amp * np.asarray(amplitudes0, np.float64) * _sigmoid(np.asarray(p[1], np.float64))
        g_w = g_sig * self.s0 * _sigmoid(np.asarray(p[2], np.float64))
        return float(loss), fsc.astype(np.float32), [g_c.astype(np.float32), g_u.astype(np.float32),
                                                     g_w.astype(np.float32)]


def _window_moments(gw, e, d):
    """Σ over each window of gw·e_x·e_y·e_z times 1, (d_x, d_y, d_z) and |d|², contracted axis by
    axis: (N,), (N, 3), (N,).  ``gw`` (N, W, W, W) [z, y, x]; ``e``, ``d`` (N, 3, W) x, y, z."""
    ex, ey, ez = e[:, 0], e[:, 1], e[:, 2]
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    x0 = np.einsum("nzyx,nx->nzy", gw, ex)
    x1 = np.einsum("nzyx,nx->nzy", gw, ex * dx)
    x2 = np.einsum("nzyx,nx->nzy", gw, ex * dx * dx)
    y00 = np.einsum("nzy,ny->nz", x0, ey)
    y01 = np.einsum("nzy,ny->nz", x0, ey * dy)
    y02 = np.einsum("nzy,ny->nz", x0, ey * dy * dy)
    y10 = np.einsum("nzy,ny->nz", x1, ey)
    y20 = np.einsum("nzy,ny->nz", x2, ey)
    s0 = np.einsum("nz,nz->n", y00, ez)
    s1 = np.stack([np.einsum("nz,nz->n", y10, ez), np.einsum("nz,nz->n", y01, ez),
                   np.einsum("nz,nz->n", y00, ez * dz)], axis=1)
    s2 = np.einsum("nz,nz->n", y20 + y02, ez) + np.einsum("nz,nz->n", y00, ez * dz * dz)
    return s0, s1, s2
