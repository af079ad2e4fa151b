"""Building a GMM from one half map: seeding, choosing N, fitting.

The refinement driver calls :func:`build_gmm` once per half map; nothing here looks at the other
half (one map in, one GMM out).

Coordinates: Å relative to the box centre (index n//2 on every axis); x = column, y = row,
z = section — the convention of :mod:`gmmcore.gmm.model`.  Maps are indexed [z, y, x] and hold
mass per voxel (as :func:`gmmcore.gmm.render.render_map` writes them), so the map's transform
``rfftn(ifftshift(map))`` sampled at k/L equals the GMM's continuous transform
Σ a·exp(−2π²σ²|s|²)·exp(−2πi s·c) — amplitudes of a fitted GMM are masses in map units.

Rules (each a documented default, all overridable):

* **Threshold** (:func:`auto_threshold`): background b = median of the map, noise σ_n =
  1.4826·MAD.  ``t = max(b + 3σ_n, t_mass)``, where ``t_mass`` is the value such that the voxels
  above it hold ``mass_fraction`` (0.9) of the map's mass above b.  The first term keeps solvent
  noise out of noisy maps; the second keeps faint tails out of clean maps.  Connected pieces of the
  thresholded region holding < 1 % of its mass (noise specks) are then dropped.
* **K-means seeds** (:func:`seed_kmeans`): coordinates of the voxels kept, weighted by
  (value − b); scikit-learn ``KMeans`` (k-means++, one init, fixed ``random_state``), or
  ``MiniBatchKMeans`` for large problems; at most ``max_points`` voxels (a uniform random subset,
  fixed seed).
* **Seeds from atoms** (:func:`seed_from_atoms`): one Gaussian per non-H atom, coordinates shifted
  to the box-centre frame (origin ``(box//2)·apix`` — i.e. the model sits on the map as ChimeraX
  shows a map with origin 0) and randomised by normal noise of σ = 0.187·resolution per axis
  (√(2 ln 2)/(2π)·res): that noise multiplies the model's expected transform by
  exp(−2π²σ²s²), which is 1/2 at s = 1/resolution — detail beyond the gold-standard resolution
  is not carried into the seeds (the paper's randomisation at the "gold-standard" resolution).
* **N** (:func:`estimate_n_gaussians`): the nearest-neighbour distance of the K-means seeds
  should equal the target resolution (the paper's rule).  First guess from the kept volume V:
  N₀ = V·(1.09/res)³ (a body-centred-cubic packing of spacing res — the optimal 3-D quantiser);
  K-means at N₀ and at the power-law correction N₁ = N₀·(d₀/res)³; then N from the power law
  d = C·N^b through the two measurements.  We use the *median* nearest-neighbour distance by
  default (``statistic="mean"`` is the paper's literal rule): seeds caught on isolated noise blobs of
  a half map have huge neighbour distances and drag the mean up (on clean maps the two agree to
  within a few per cent in N).
* **Fit** (:func:`fit_gmm`): all parameters against the map's 3-D transform, cropped to the target
  resolution (kz, ky ∈ −kmax..kmax, kx ∈ 0..kmax; the band of :func:`gmmcore.grids.band_limits`),
  with the backend's GMM volume transform.  Loss = 1 − mean over shells minres → resolution (1-voxel shells, each
  normalised on its own) of the map-vs-GMM FSC, + ``amp_weight`` (0.1) · Σ_r (‖G‖_r − ‖M‖_r)² / Σ_r ‖M‖²_r
  over all shells 1..kmax — a power-spectrum match that pins amplitudes to the map's mass scale
  (unbiased by phase errors, unlike ‖G − M‖²).  Shell sums are segment sums; voxels with kx > 0
  count twice (they stand for their Hermitian mates).  Amplitude = a₀·softplus(u), width =
  σ₀·softplus(w), u and w starting at softplus⁻¹(1), so both stay positive.  Start: width σ₀ =
  ``sigma_factor``·resolution (0.3·res: the Gaussian envelope exp(−2π²σ²/res²) is 0.17 at the
  resolution), amplitudes ∝ the map value at each seed, times the least-squares scale against the
  map's transform.  Optimiser: Adam (in NumPy on the backend's gradients), ``iterations`` steps, centre step
  ``lr_center``·resolution Å, amplitude/width steps ``lr_shape`` (relative), both decaying linearly
  to 10 %; the best parameters met are returned.  Large grids are processed in z-slabs with a
  two-pass gradient (shell sums first, then the gradient slab by slab), so memory stays bounded.
"""
from __future__ import annotations

import math
import time
from typing import Optional, Tuple

import numpy as np

from ..backend import get_backend
from ..errors import InputError
from ..grids import band_limits
from ..progress import progress
from .model import GMM

SIGMA_FACTOR = 0.3  # initial width / resolution
ATOM_NOISE_FACTOR = math.sqrt(2.0 * math.log(2.0)) / (2.0 * math.pi)  # ≈ 0.187
NN_PACKING = 1.09  # nearest-neighbour distance of a BCC packing / (volume per point)^(1/3)
KMEANS_DENSITY_POWER = 5.0 / 3.0  # K-means centres ∝ (weight density)^(3/5) in 3-D: weights × f^(5/3) → centres × f
N_MIN, N_MAX = 8, 100_000  # bounds of an estimated number of Gaussians (fresh or warm-started)


# --------------------------------------------------------------------------------------------
# geometry helpers


def _check_map(map_, name="map") -> np.ndarray:
    m = np.asarray(map_, dtype=np.float32)
    if m.ndim != 3 or len(set(m.shape)) != 1:
        raise InputError(f"a cubic 3-D map is needed, got shape {m.shape}", field=name)
    if not np.all(np.isfinite(m)):
        raise InputError("map contains NaN or infinite values", field=name)
    return m


def voxel_coords_A(shape, apix: float, index: np.ndarray) -> np.ndarray:
    """Flat voxel indices of a [z, y, x] array → (k, 3) coordinates (x, y, z) Å from the box centre."""
    z, y, x = np.unravel_index(index, shape)
    c = np.stack([x - shape[2] // 2, y - shape[1] // 2, z - shape[0] // 2], axis=1)
    return c.astype(np.float64) * float(apix)


def sample_map(map_, apix: float, centers_A: np.ndarray) -> np.ndarray:
    """Map value at the voxel nearest each centre (0 outside the box)."""
    n = np.array(map_.shape)
    idx = np.rint(np.asarray(centers_A)[:, ::-1] / apix).astype(np.int64) + n // 2  # (z, y, x)
    inside = np.all((idx >= 0) & (idx < n), axis=1)
    out = np.zeros(len(idx), np.float32)
    i = idx[inside]
    out[inside] = map_[i[:, 0], i[:, 1], i[:, 2]]
    return out


# --------------------------------------------------------------------------------------------
# threshold and seeding


def robust_background(map_) -> Tuple[float, float]:
    """(background b, noise σ_n) of a map: its median and 1.4826 × the median absolute deviation."""
    v = np.asarray(map_, dtype=np.float64).ravel()
    b = float(np.median(v))
    return b, 1.4826 * float(np.median(np.abs(v - b)))


def auto_threshold(map_, mass_fraction: float = 0.9, noise_sigmas: float = 3.0) -> Tuple[float, float]:
    """(threshold, background) by the module's rule: max(b + 3σ_n, value holding 90 % of the mass above b)."""
    v = np.asarray(map_, dtype=np.float64).ravel()
    b, noise = robust_background(v)
    w = v[v > b] - b
    if len(w) == 0 or w.sum() <= 0:
        raise InputError("map is flat (no density above its median)", field="map")
    w = np.sort(w)[::-1]
    cum = np.cumsum(w)
    i = int(np.searchsorted(cum, mass_fraction * cum[-1]))
    t_mass = b + float(w[min(i, len(w) - 1)])
    return max(b + noise_sigmas * noise, t_mass), b


def _drop_specks(m, mask, background, fraction):
    """Remove connected pieces of ``mask`` holding < ``fraction`` of its mass (noise specks)."""
    from scipy import ndimage

    lab, nlab = ndimage.label(mask)
    if nlab <= 1:
        return mask
    mass = ndimage.sum(m - background, lab, index=np.arange(1, nlab + 1))
    keep = np.concatenate([[False], mass >= fraction * mass.sum()])
    if not keep.any():
        return mask
    return keep[lab]


def _density_points(map_, apix, threshold, seed, max_points, min_component_fraction=0.01, density=None):
    """(coordinates Å, amplitude weights, threshold, ``density`` at each point or None) of the voxels
    kept (above the threshold, specks dropped, at most ``max_points``)."""
    m = _check_map(map_)
    if threshold is None:
        threshold, background = auto_threshold(m)
    else:
        background = min(float(np.median(m)), float(threshold))
    mask = m > threshold
    if min_component_fraction > 0:
        mask = _drop_specks(m, mask, background, min_component_fraction)
    flat = m.ravel()
    idx = np.flatnonzero(mask.ravel())
    if len(idx) == 0:
        raise InputError(f"no voxels above the threshold {threshold:g}", field="map")
    if max_points and len(idx) > max_points:
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(idx, size=max_points, replace=False))
    weights = flat[idx].astype(np.float64) - background
    weights = np.maximum(weights, 1e-12 * max(weights.max(), 1e-30))
    factor = None
    if density is not None:
        d = np.asarray(density, np.float64)
        if d.shape != m.shape or not np.all(np.isfinite(d)) or np.any(d <= 0):
            raise InputError("the seed density must be a positive map on the same grid", field="seed_density")
        factor = d.ravel()[idx]
    return voxel_coords_A(m.shape, apix, idx), weights, float(threshold), factor


def kept_voxels(map_, apix: float) -> int:
    """How many voxels K-means and the N estimate cluster: above :func:`auto_threshold`, noise
    specks dropped."""
    pts, _, _, _ = _density_points(map_, apix, None, 0, 0)
    return len(pts)


def _kmeans(points, weights, n, seed, max_iter=100):
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if n > len(points):
        raise InputError(f"only {len(points)} voxels above the threshold for {n} Gaussians "
                         "(lower the threshold or the number of Gaussians)", field="map")
    if len(points) * n <= 3e8:
        km = KMeans(n_clusters=n, init="k-means++", n_init=1, max_iter=max_iter, tol=1e-5, random_state=seed)
    else:
        km = MiniBatchKMeans(n_clusters=n, init="k-means++", n_init=1, max_iter=max_iter,
                             batch_size=max(4096, 3 * n), random_state=seed, reassignment_ratio=0.0)
    km.fit(points, sample_weight=weights)
    return km.cluster_centers_.astype(np.float64)


def seed_kmeans(map_, apix: float, n_gaussians: int, threshold: Optional[float] = None, seed: int = 0,
                max_points: int = 200_000, max_iter: int = 100, density=None) -> np.ndarray:
    """Amplitude-weighted K-means of the voxels above ``threshold`` (default :func:`auto_threshold`)
    → centres (N, 3) Å from the box centre, x = column, y = row, z = section.  ``density``: a
    per-voxel factor (same grid) by which the seeds' number density is to change (module notes)."""
    n = int(n_gaussians)
    if n < 1:
        raise InputError("the number of Gaussians must be at least 1", field="n_gaussians")
    pts, w, _, factor = _density_points(map_, apix, threshold, seed, max_points, density=density)
    return _kmeans(pts, w if factor is None else w * factor ** KMEANS_DENSITY_POWER, n, seed, max_iter)


def seed_from_atoms(coords_A, resolution_A: float, seed: int = 0, origin_A=0.0) -> np.ndarray:
    """One Gaussian per atom: ``coords_A − origin_A`` plus normal noise of σ = 0.187·resolution per
    axis (see the module notes).  For a model in a map's frame pass ``origin_A = (box//2)·apix``."""
    c = np.asarray(coords_A, dtype=np.float64).reshape(-1, 3)
    if len(c) == 0:
        raise InputError("no atoms to seed from", field="seed_model")
    rng = np.random.default_rng(seed)
    return c - np.asarray(origin_A, dtype=np.float64) + rng.normal(0.0, ATOM_NOISE_FACTOR * resolution_A, c.shape)


def mean_nn_distance(centers: np.ndarray, statistic: str = "mean") -> float:
    """Mean (or ``statistic="median"``) distance from each centre to its nearest neighbour (Å)."""
    from scipy.spatial import cKDTree

    c = np.asarray(centers, dtype=np.float64)
    if len(c) < 2:
        return float("inf")
    d, _ = cKDTree(c).query(c, k=2)
    return float(np.median(d[:, 1]) if statistic == "median" else np.mean(d[:, 1]))


def estimate_n_gaussians(map_, apix: float, resolution_A: float, threshold: Optional[float] = None,
                         seed: int = 0, n_min: int = N_MIN, n_max: int = N_MAX, max_points: int = 60_000,
                         statistic: str = "median", return_details: bool = False, scale: float = 1.0,
                         density=None):
    """N such that the mean nearest-neighbour distance of the K-means seeds ≈ ``resolution_A``
    (two K-means runs and a power-law interpolation; see the module notes), × ``scale`` (``--gmm-n-scale``:
    2 packs the Gaussians 2^(1/3) ≈ 1.26× closer).  ``density``: a per-voxel factor (same grid) of
    the Gaussians' number density; the estimate × its mean over the kept voxels (``scale`` then
    belongs in the factor, :func:`gmmcore.gmm.localwidth.seed_density`)."""
    if resolution_A <= 0:
        raise InputError("resolution must be positive", field="resolution")
    m = _check_map(map_)
    if threshold is None:
        threshold, _ = auto_threshold(m)
    pts, w, _, factor = _density_points(m, apix, threshold, seed, 0, density=density)
    volume = float(len(pts)) * apix**3  # the estimate itself is made at uniform density, then × mean(factor)
    if max_points and len(pts) > max_points:
        sel = np.sort(np.random.default_rng(seed).choice(len(pts), size=max_points, replace=False))
        pts, w = pts[sel], w[sel]
    nn = lambda c: mean_nn_distance(c, statistic)  # noqa: E731
    cap = min(n_max, len(pts))
    clamp = lambda n: int(min(max(round(n), n_min), cap))  # noqa: E731
    n0 = clamp(volume * (NN_PACKING / resolution_A) ** 3)
    d0 = nn(_kmeans(pts, w, n0, seed, max_iter=30))
    n1 = clamp(n0 * (d0 / resolution_A) ** 3)
    if n1 == n0:
        n1 = clamp(n0 * 1.3) if d0 > resolution_A else clamp(n0 / 1.3)
    tried = [(n0, d0)]
    if n1 != n0:
        d1 = nn(_kmeans(pts, w, n1, seed, max_iter=30))
        tried.append((n1, d1))
        b = math.log(d1 / d0) / math.log(n1 / n0) if d0 > 0 and d1 > 0 else -1.0 / 3.0
        if not (-0.7 < b < -0.15):
            b = -1.0 / 3.0
        n_est = clamp(n1 * (resolution_A / d1) ** (1.0 / b))
    else:
        n_est = n0
    n_uniform = n_est
    n_est = clamp(n_est * scale) if scale != 1.0 else n_est
    if factor is not None:
        n_est = clamp(n_est * float(factor.mean()))
    if return_details:
        return n_est, {"threshold": float(threshold), "volume_A3": volume, "nn_statistic": statistic,
                       "tried": tried, "n_scale": float(scale), "n_uniform": int(n_uniform),
                       **({} if factor is None else {"density_mean": float(factor.mean()),
                                                     "density_range": [float(factor.min()), float(factor.max())]})}
    return n_est


# --------------------------------------------------------------------------------------------
# fitting


class _FitProblem:
    """The map's cropped 3-D transform, shell ids and weights, split in z-slabs.

    Shells 1..kmax are summed (shell r has id r − 1); the FSC uses shells rmin..kmax, the power
    term all of them (so the overall mass is pinned by the low shells too)."""

    def __init__(self, map_, apix, resolution_A, minres_A, max_slab_elems):
        m = _check_map(map_)
        n = m.shape[0]
        self.box, self.apix = n, float(apix)
        rmin, kmax = band_limits(n, apix, resolution_A, minres_A)
        L = n * apix
        self.kmax, self.rmin, self.nshells = kmax, rmin, kmax  # nshells: all shells 1..kmax
        k = np.arange(-kmax, kmax + 1)
        kx = np.arange(0, kmax + 1)
        ft = np.fft.rfftn(np.fft.ifftshift(m.astype(np.float64)))
        rows = k % n
        M = ft[rows][:, rows][:, :, : kmax + 1]
        r = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)).astype(np.int64)
        use = (r >= 1) & (r <= kmax)
        shell = np.where(use, r - 1, kmax).astype(np.int32)  # unused voxels → dump bin kmax
        wgt = np.where(kx[None, None, :] > 0, 2.0, 1.0) * use
        self.s = (k / L).astype(np.float32)
        self.sx = (kx / L).astype(np.float32)
        mm = np.bincount(shell.ravel(), weights=(wgt * np.abs(M) ** 2).ravel(), minlength=kmax + 1)
        self.S_mm = mm[:kmax].astype(np.float64)
        if np.any(self.S_mm[rmin - 1:] <= 0):
            raise InputError("the map has no signal in some Fourier shells of the fitted range", field="map")
        self.freq = (np.arange(rmin, kmax + 1) / L).astype(np.float64)
        nz = len(k)
        self.slab = max(1, min(nz, int(max_slab_elems // max(1, nz))))
        self.slabs = []
        for z0 in range(0, nz, self.slab):
            z1 = min(z0 + self.slab, nz)
            self.slabs.append((self.s[z0:z1], M[z0:z1].real.astype(np.float32), M[z0:z1].imag.astype(np.float32),
                               shell[z0:z1].ravel(), wgt[z0:z1].ravel().astype(np.float32)))

    @property
    def symmetric_z(self) -> bool:
        """Whether the fit runs in one slab, whose z rows are symmetric about 0 as the Hermitian transform needs."""
        return len(self.slabs) == 1


def fit_gmm(map_, apix: float, centers0, resolution_A: float, minres_A: float = 25.0, iterations: int = 300,
            amplitudes0=None, sigmas0=None, sigma_factor: float = SIGMA_FACTOR, amp_weight: float = 0.1,
            lr_center: float = 0.03, lr_shape: float = 0.05, max_slab_elems: int = 40_000_000,
            verbose: bool = False, backend=None, desc: Optional[str] = None,
            hermitian: bool = False) -> Tuple[GMM, dict]:
    """Fit centres, amplitudes and widths of a GMM to ``map_`` within ``resolution_A`` (module notes).

    ``max_slab_elems`` bounds the complex (slab-z × y × N) intermediate of one slab (larger grids are
    done slab by slab, two passes).  ``desc``: report progress under this name.  ``hermitian``: the
    backend computes the GMM transform from its k_z ≥ 0 half (TF: ~1.4× faster steps on the CPU;
    the same loss up to float32 rounding, so the fitted numbers differ slightly — off by default).  Returns (GMM, report) with report ``{"fsc_mean", "fsc", "freq",
    "steps", "seconds", "n_gaussians", "loss", "loss_start", "minres_A", "resolution_A"}``; the
    returned parameters are the best (lowest loss) met.
    """
    t0 = time.perf_counter()
    m = _check_map(map_)
    c0 = np.asarray(centers0, dtype=np.float32).reshape(-1, 3)
    N = len(c0)
    if N < 1:
        raise InputError("no Gaussians to fit", field="centers")
    if resolution_A <= 0:
        raise InputError("resolution must be positive", field="resolution")
    prob = _FitProblem(m, apix, resolution_A, minres_A, max(1, max_slab_elems // N))

    if sigmas0 is None:
        sig0 = np.full(N, sigma_factor * resolution_A, np.float32)
    else:
        sig0 = np.asarray(sigmas0, np.float32).reshape(-1)
    if amplitudes0 is None:
        v = sample_map(m, apix, c0)
        pos = v[v > 0]
        floor = 0.1 * float(np.median(pos)) if len(pos) else 1.0
        amp0 = np.maximum(v, floor).astype(np.float32)
    else:
        amp0 = np.asarray(amplitudes0, np.float32).reshape(-1)
    if sig0.shape != (N,) or amp0.shape != (N,):
        raise InputError("initial amplitudes/widths do not match the number of centres", field="centers")
    if np.any(sig0 <= 0) or np.any(amp0 <= 0):
        raise InputError("initial amplitudes and widths must be positive", field="centers")

    be = backend or get_backend()
    fit = be.gmm_fit(prob, sig0, amp_weight, hermitian=hermitian)

    u0 = np.float32(math.log(math.e - 1.0))  # softplus(u0) = 1
    params = [c0.copy(), np.full(N, u0, np.float32), np.full(N, u0, np.float32)]
    if amplitudes0 is None:  # overall scale: least squares of the GMM transform against the map's
        S = fit.sums(params, amp0)
        alpha = float(S[:, 0].sum() / max(S[:, 1].sum(), 1e-30))
        amp0 = amp0 * np.float32(abs(alpha) if alpha != 0 else 1.0)

    steps = int(iterations)
    lrs = [np.float32(lr_center * resolution_A), np.float32(lr_shape), np.float32(lr_shape)]
    b1, b2, eps = 0.9, 0.999, 1e-8
    mom = [np.zeros_like(p) for p in params]
    vel = [np.zeros_like(p) for p in params]
    best_loss, best_p, first = float("inf"), [p.copy() for p in params], None
    bar = progress(total=steps, desc=desc, unit="step") if desc else None
    for t in range(steps + 1):
        loss, fsc, grads = fit.value_and_grad(params, amp0)
        if first is None:
            first = loss
        if loss < best_loss:
            best_loss, best_p = loss, [p.copy() for p in params]
        if verbose and (t % 50 == 0 or t == steps):
            print(f"step {t:4d} loss {loss:.4f} mean FSC {np.mean(fsc):.4f}")
        if t == steps:
            break
        if bar is not None:
            bar.update(1)
        decay = 1.0 - 0.9 * t / max(steps - 1, 1)
        for i, g in enumerate(grads):
            g = np.where(np.isfinite(g), g, 0.0).astype(np.float32)
            mom[i] = b1 * mom[i] + (1 - b1) * g
            vel[i] = b2 * vel[i] + (1 - b2) * g * g
            mh = mom[i] / (1 - b1 ** (t + 1))
            vh = vel[i] / (1 - b2 ** (t + 1))
            params[i] = (params[i] - decay * lrs[i] * mh / (np.sqrt(vh) + eps)).astype(np.float32)
    if bar is not None:
        bar.close()
    loss, fsc, _ = fit.value_and_grad(best_p, amp0)
    softplus = lambda x: np.logaddexp(0.0, x.astype(np.float64))  # noqa: E731
    gmm = GMM(best_p[0], amp0 * softplus(best_p[1]), sig0 * softplus(best_p[2]),
              {"box": prob.box, "apix": prob.apix, "resolution_A": float(resolution_A), "minres_A": float(minres_A)})
    fsc = np.asarray(fsc, np.float64)
    report = {"fsc_mean": float(np.mean(fsc)), "fsc": fsc.tolist(), "freq": prob.freq.tolist(),
              "steps": steps, "seconds": time.perf_counter() - t0, "n_gaussians": N, "loss": float(loss),
              "loss_start": float(first), "resolution_A": float(resolution_A), "minres_A": float(minres_A),
              "slabs": len(prob.slabs), "hermitian": bool(hermitian and prob.symmetric_z)}
    return gmm, report


# --------------------------------------------------------------------------------------------
# entry point


def build_gmm(map_, apix: float, resolution_A: float, n_gaussians: Optional[int] = None, seed_model=None,
              seed: int = 0, minres_A: float = 25.0, iterations: int = 300, threshold: Optional[float] = None,
              init: Optional[GMM] = None, seed_points: Optional[int] = None, n_scale: float = 1.0,
              seed_map=None, seed_density=None, **fit_kwargs) -> Tuple[GMM, dict]:
    """Build a GMM of one (half) map at ``resolution_A``.

    ``seed_model``: None (K-means seeds; N = ``n_gaussians`` or :func:`estimate_n_gaussians`), a PDB
    path / ``builtin:...`` name, or an (n, 3) array of atomic coordinates in the map's frame (Å, origin
    at voxel 0 — as ChimeraX places a map with origin 0): one Gaussian per atom, shifted by
    −(box//2)·apix and randomised at the resolution (``n_gaussians`` is then ignored).
    ``init``: a GMM to start the fit from (its centres, amplitudes and widths — e.g. the previous
    iteration's GMM of the same half): no seeding and no N estimate.  ``seed_points``: K-means (the N
    estimate's and the seeding's) on at most this many of the voxels above the threshold (a uniform
    random subset, fixed seed) instead of 60,000 / 200,000 — faster on large maps, different seeds;
    off by default.  Off by default: it changes
    the result (benchmarks/bench_iteration.py ``--compare-warm`` measures by how much).  ``n_scale``:
    the estimated N × this (:func:`estimate_n_gaussians`; not applied to a given ``n_gaussians``).
    ``seed_map``: the map the N estimate and the K-means seeds see instead of ``map_`` (same grid);
    the fit is always to ``map_``.  ``seed_density``: a per-voxel factor of the seeds' number density
    (same grid; :func:`gmmcore.gmm.localwidth.seed_density`) for the N estimate and K-means.
    Returns (GMM with meta {box, apix, resolution_A, minres_A, seeding, seed, ...}, report).
    """
    t0 = time.perf_counter()
    m = _check_map(map_)
    if apix <= 0:
        raise InputError("pixel size must be positive", field="apix")
    if resolution_A <= 0:
        raise InputError("resolution must be positive", field="resolution")
    if resolution_A < 2 * apix:
        raise InputError(f"resolution {resolution_A:g} Å is beyond Nyquist ({2 * apix:g} Å)", field="resolution")
    box = m.shape[0]
    details = {}
    if init is not None:
        gmm, report = fit_gmm(m, apix, init.centers, resolution_A, minres_A=minres_A, iterations=iterations,
                              amplitudes0=init.amplitudes, sigmas0=init.sigmas, **fit_kwargs)
        gmm.meta.update({"seeding": "warm", "seed": int(seed)})
        report["seeding"] = {"method": "warm", "n_gaussians": len(init),
                             **{k: v for k, v in init.meta.items() if k.startswith("warm_from")}}
        report["seconds_total"] = time.perf_counter() - t0
        return gmm, report
    if seed_model is not None:
        if isinstance(seed_model, np.ndarray):
            coords = seed_model
            source = "array"
        else:
            from ..io.pdb import read_atoms, resolve_model

            path = resolve_model(seed_model)
            coords, _ = read_atoms(path)
            source = str(seed_model)
        centers = seed_from_atoms(coords, resolution_A, seed, origin_A=(box // 2) * apix)
        seeding = {"method": "atoms", "model": source, "noise_sigma_A": ATOM_NOISE_FACTOR * resolution_A}
    else:
        seen = m if seed_map is None else _check_map(seed_map)
        if n_gaussians is None:
            n_gaussians, details = estimate_n_gaussians(seen, apix, resolution_A, threshold=threshold, seed=seed,
                                                        return_details=True, scale=n_scale, density=seed_density,
                                                        **({} if seed_points is None else {"max_points": seed_points}))
            estimated = True
        else:
            estimated = False
        centers = seed_kmeans(seen, apix, int(n_gaussians), threshold=threshold, seed=seed, density=seed_density,
                              **({} if seed_points is None else {"max_points": seed_points}))
        seeding = {"method": "kmeans", "n_estimated": estimated, **details}
    gmm, report = fit_gmm(m, apix, centers, resolution_A, minres_A=minres_A, iterations=iterations, **fit_kwargs)
    gmm.meta.update({"seeding": seeding["method"], "seed": int(seed)})
    report["seeding"] = seeding
    report["mean_nn_distance_seeds_A"] = mean_nn_distance(centers)
    report["seconds_total"] = time.perf_counter() - t0
    return gmm, report
