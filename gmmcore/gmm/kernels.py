"""The numeric kernels: GMM projector, FRC, pose step, GMM volume transform (TensorFlow).

This is the only module that does TensorFlow maths, so another array backend can be added by
re-implementing the functions here.  Everything runs on the GPU when TensorFlow sees one
(standard device placement) and on all CPU cores otherwise.

Fourier conventions: transforms of centred images are ``rfft2(ifftshift(img))``; index k of a box of
N pixels is the spatial frequency s = k / (N·apix) in 1/Å.  For a Gaussian of amplitude a (mass),
width σ (Å) whose projected centre is μ (Å, in the image plane, from the box centre), the 2-D
transform is  a·exp(−2π²σ²|s|²)·exp(−2πi s·μ).  With Gaussians c_j in 3-D, a pose (A, origin):
μ_j = (A c_j)_xy − origin (RELION: the particle centre sits at the box centre − origin).

The transform is separable in s_x and s_y, so a whole projection on a (ny × nx) grid is one matrix
product of an (ny × N) table by an (N × nx) table.  We work on a half-plane grid cropped to the
current resolution (:class:`FourierGrid`), so cost scales with resolution⁻² and nothing is
interpolated.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

from ..fourier import ft  # noqa: E402
from .model import GMM  # noqa: E402

TWO_PI = 2.0 * math.pi
_DEVICES_CONFIGURED = False


# --------------------------------------------------------------------------------------------
# devices


def configure_devices(gpu: Optional[Sequence[int]] = None, cpu_only: bool = False) -> str:
    """Choose devices before TensorFlow starts: ``gpu`` = ids to use (None: all visible),
    ``cpu_only``: hide GPUs.  Turns memory growth on.  Returns a one-line description."""
    global _DEVICES_CONFIGURED
    gpus = tf.config.list_physical_devices("GPU")
    if not _DEVICES_CONFIGURED:
        try:
            if cpu_only or not gpus:
                tf.config.set_visible_devices([], "GPU")
                gpus = []
            else:
                if gpu is not None:
                    gpus = [gpus[i] for i in gpu if i < len(gpus)]
                tf.config.set_visible_devices(gpus, "GPU")
                for g in gpus:
                    tf.config.experimental.set_memory_growth(g, True)
        except RuntimeError:  # TF already initialised: keep what it has
            gpus = tf.config.get_visible_devices("GPU")
        _DEVICES_CONFIGURED = True
    else:
        gpus = tf.config.get_visible_devices("GPU")
    if gpus:
        return "GPU: " + ", ".join(g.name for g in gpus)
    return f"CPU ({os.cpu_count()} cores)"


# --------------------------------------------------------------------------------------------
# Fourier grids


def crop_size(box: int, apix: float, resolution_A: float) -> int:
    """Even size n = ceil(2·L/res) of the Fourier grid reaching ``resolution_A`` (L = box·apix),
    never beyond Nyquist (n ≤ box)."""
    n = int(math.ceil(2.0 * box * apix / resolution_A))
    n += n % 2
    return int(min(max(n, 4), box - box % 2))


@dataclass
class FourierGrid:
    """Half-plane Fourier grid of a ``box`` cropped to ``resolution_A``, with the rings from
    ``minres_A`` to ``resolution_A`` used by the FRC.

    Rows hold k_y = −kmax..kmax, columns k_x = 0..kmax (Fourier pixels).  ``pix`` are the flat
    indices (into ny·nx) of the pixels the FRC uses, ``ring`` their ring number (0-based from the
    first ring used); duplicate Hermitian pixels (k_x = 0, k_y < 0) are left out.
    """

    box: int
    apix: float
    resolution_A: float
    minres_A: float

    def __post_init__(self):
        n = crop_size(self.box, self.apix, self.resolution_A)
        self.kmax = n // 2
        self.ky = np.arange(-self.kmax, self.kmax + 1)
        self.kx = np.arange(0, self.kmax + 1)
        L = self.box * self.apix
        self.sy = (self.ky / L).astype(np.float32)
        self.sx = (self.kx / L).astype(np.float32)
        r = np.rint(np.hypot(self.ky[:, None], self.kx[None, :])).astype(np.int64)
        rmin = max(1, int(math.ceil(L / self.minres_A))) if self.minres_A > 0 else 1
        rmin = min(rmin, self.kmax)
        use = (r >= rmin) & (r <= self.kmax) & ~((self.kx[None, :] == 0) & (self.ky[:, None] < 0))
        self.pix = np.flatnonzero(use.ravel()).astype(np.int32)
        self.ring = (r.ravel()[self.pix] - rmin).astype(np.int32)
        self.nrings = int(self.kmax - rmin + 1)
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


# --------------------------------------------------------------------------------------------
# projector


def _gmm_tensors(gmm: GMM):
    return (tf.constant(gmm.centers, tf.float32), tf.constant(gmm.amplitudes, tf.float32),
            tf.constant(gmm.sigmas, tf.float32))


def project_ft(centers, amplitudes, sigmas, rotations, origins, sy, sx):
    """Fourier transforms of GMM projections on a separable grid.

    centers (N,3) Å, amplitudes (N,), sigmas (N,) Å, rotations (B,3,3) RELION A, origins (B,2) Å,
    sy (ny,), sx (nx,) in 1/Å.  Returns (real, imag), each (B, ny, nx) float32.
    """
    mu = tf.einsum("bij,nj->bni", rotations[:, :2, :], centers) - origins[:, None, :]  # (B,N,2)
    s2 = -2.0 * math.pi**2 * tf.square(sigmas)[:, None]  # (N,1)
    ex = tf.exp(s2 * tf.square(sx)[None, :])  # (N,nx)
    ey = tf.exp(s2 * tf.square(sy)[None, :]) * amplitudes[:, None]  # (N,ny)
    px = TWO_PI * mu[:, :, 0:1] * sx[None, None, :]  # (B,N,nx)
    py = TWO_PI * mu[:, :, 1:2] * sy[None, None, :]  # (B,N,ny)
    cx, sxn = tf.cos(px) * ex, tf.sin(px) * ex
    cy, syn = tf.cos(py) * ey, tf.sin(py) * ey
    # exp(-iθy)·exp(-iθx): Re = cy·cx − sy·sx, Im = −(sy·cx + cy·sx).  One matmul for both.
    left = tf.concat([tf.concat([cy, -syn], axis=1), tf.concat([syn, cy], axis=1)], axis=2)  # (B,2N,2ny)
    right = tf.concat([cx, sxn], axis=1)  # (B,2N,nx)
    out = tf.matmul(left, right, transpose_a=True)  # (B,2ny,nx)
    ny = tf.shape(sy)[0]
    return out[:, :ny], -out[:, ny:]


# --------------------------------------------------------------------------------------------
# FRC


def ring_sums(values, ring, nrings):
    """Sum (B, P, C) values over rings: ``ring`` (P,) ring ids → (B, nrings, C)."""
    t = tf.transpose(values, [1, 0, 2])  # (P,B,C)
    return tf.transpose(tf.math.unsorted_segment_sum(t, ring, nrings), [1, 0, 2])


def frc(model_re, model_im, part_re, part_im, pix, ring, nrings):
    """Per-ring FRC between model and particle transforms, each ring normalised on its own.

    Inputs (B, ny, nx); ``pix`` flat indices of used pixels, ``ring`` their ring ids.
    Returns (B, nrings)."""
    B = tf.shape(model_re)[0]
    g = lambda x: tf.gather(tf.reshape(x, [B, -1]), pix, axis=1)  # noqa: E731
    mr, mi, pr, pi = g(model_re), g(model_im), g(part_re), g(part_im)
    vals = tf.stack([mr * pr + mi * pi, mr * mr + mi * mi, pr * pr + pi * pi], axis=-1)
    s = ring_sums(vals, ring, nrings)
    return s[..., 0] / tf.sqrt(s[..., 1] * s[..., 2] + 1e-30)


# --------------------------------------------------------------------------------------------
# rotations


def rotvec_matrix(v):
    """Rodrigues: rotation vectors (B,3) radians → matrices (B,3,3), smooth at 0."""
    t2 = tf.reduce_sum(tf.square(v), axis=-1)[:, None, None]
    small = t2 < 1e-8
    t = tf.sqrt(tf.where(small, tf.ones_like(t2), t2))
    a = tf.where(small, 1.0 - t2 / 6.0, tf.sin(t) / t)
    b = tf.where(small, 0.5 - t2 / 24.0, (1.0 - tf.cos(t)) / tf.where(small, tf.ones_like(t2), t2))
    z = tf.zeros_like(v[:, 0])
    K = tf.stack([tf.stack([z, -v[:, 2], v[:, 1]], -1),
                  tf.stack([v[:, 2], z, -v[:, 0]], -1),
                  tf.stack([-v[:, 1], v[:, 0], z], -1)], axis=1)
    eye = tf.eye(3, batch_shape=[tf.shape(v)[0]])
    return eye + a * K + b * tf.matmul(K, K)


# --------------------------------------------------------------------------------------------
# pose refinement


@dataclass
class PoseSettings:
    """Local pose optimisation (Adam on a rotation-vector update and a shift update).

    ``lr_angle_deg``: Adam step for the rotation update, degrees; ``lr_shift_px``: for the shift,
    pixels.  The step decays linearly to ``final_lr_fraction`` of its start over ``steps``; the
    best-scoring pose seen is kept.

    Pose prior (MAP; off when ``prior_angle_deg`` is None): the objective becomes
    ``data_scale·S − θ²/(2σ_a²) − |t|²/(2σ_s²)``, where S is the ring-weighted FRC, θ (degrees) and
    t (pixels) the deviation of the pose from the prior centre (the input pose), σ_a =
    ``prior_angle_deg``, σ_s = ``prior_shift_px``.  ``data_scale`` (given to :class:`PoseRefiner`)
    converts S to log-likelihood units: for SSNR weights w_r ∝ n_r·f_r, the per-ring profile
    log-likelihood Σ n_r·FRC_r² changes by ≈ 2·Σ_r n_r f_r · ΔS (see :func:`ssnr_ring_weights`).
    """

    steps: int = 10
    lr_angle_deg: float = 0.5
    lr_shift_px: float = 0.25
    final_lr_fraction: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.999
    prior_angle_deg: Optional[float] = None
    prior_shift_px: Optional[float] = None


def _pose_fn(settings: PoseSettings, apix: float):
    steps = int(settings.steps)
    lr_rot = math.radians(settings.lr_angle_deg)
    lr_shift = settings.lr_shift_px * apix
    b1, b2 = settings.beta1, settings.beta2
    decay = [(1.0 - (1.0 - settings.final_lr_fraction) * t / max(steps - 1, 1)) for t in range(steps)]
    use_prior = settings.prior_angle_deg is not None
    inv_var_a = 0.0 if not use_prior else 1.0 / math.radians(settings.prior_angle_deg) ** 2
    inv_var_s = 0.0 if not use_prior or not settings.prior_shift_px else 1.0 / (settings.prior_shift_px * apix) ** 2

    @tf.function(reduce_retracing=True)
    def run(centers, amps, sigmas, rot0, org0, part_re, part_im, sy, sx, pix, ring, nrings, ring_w,
            data_scale, prior_rot, prior_org):
        B = tf.shape(rot0)[0]
        params = tf.zeros([B, 5])  # 3 rotation-vector (rad) + 2 shift (Å)
        m = tf.zeros_like(params)
        v = tf.zeros_like(params)
        lr = tf.constant([lr_rot] * 3 + [lr_shift] * 2, tf.float32)

        def score(p):
            """(objective, weighted FRC) per particle."""
            R = tf.matmul(rotvec_matrix(p[:, :3]), rot0)
            org = org0 + p[:, 3:]
            mre, mim = project_ft(centers, amps, sigmas, R, org, sy, sx)
            s = tf.reduce_sum(frc(mre, mim, part_re, part_im, pix, ring, nrings) * ring_w[None, :], axis=1)
            if not use_prior:
                return s, s
            # deviation from the prior centre: D = R·Pᵀ; its skew part is sin(θ)·axis (θ² for small θ)
            D = tf.matmul(R, prior_rot, transpose_b=True)
            v = tf.stack([D[:, 2, 1] - D[:, 1, 2], D[:, 0, 2] - D[:, 2, 0], D[:, 1, 0] - D[:, 0, 1]], -1) / 2.0
            pen = 0.5 * inv_var_a * tf.reduce_sum(tf.square(v), -1)
            pen += 0.5 * inv_var_s * tf.reduce_sum(tf.square(org - prior_org), -1)
            return data_scale * s - pen, s

        best_p = params
        best_j = tf.fill([B], -1e30)
        best_s = tf.fill([B], -2.0)
        first = None
        for t in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(params)
                j, s = score(params)
                loss = -tf.reduce_sum(j)
            if first is None:
                first = s
            better = j > best_j
            best_j = tf.where(better, j, best_j)
            best_s = tf.where(better, s, best_s)
            best_p = tf.where(better[:, None], params, best_p)
            g = tape.gradient(loss, params)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * tf.square(g)
            mh = m / (1 - b1 ** (t + 1))
            vh = v / (1 - b2 ** (t + 1))
            params = params - decay[t] * lr * mh / (tf.sqrt(vh) + 1e-12)
        j, s = score(params)
        better = j > best_j
        best_s = tf.where(better, s, best_s)
        best_p = tf.where(better[:, None], params, best_p)
        return tf.matmul(rotvec_matrix(best_p[:, :3]), rot0), org0 + best_p[:, 3:], best_s, first

    return run


class PoseRefiner:
    """Refines poses of particles against one GMM on one Fourier grid.

    Batches are padded to a fixed size so the compiled function is reused; results do not depend
    on the batch size (every particle's loss and Adam state are its own).
    """

    def __init__(self, gmm: GMM, grid: FourierGrid, settings: PoseSettings = PoseSettings(), batch: int = 16,
                 ring_weights: Optional[np.ndarray] = None, data_scale: float = 1.0):
        self.gmm = gmm
        self.grid = grid
        self.batch = int(batch)
        self.settings = settings
        self._g = _gmm_tensors(gmm)
        self._grid_t = (tf.constant(grid.sy), tf.constant(grid.sx), tf.constant(grid.pix),
                        tf.constant(grid.ring), tf.constant(grid.nrings))
        self._fn = _pose_fn(settings, grid.apix)
        w = np.ones(grid.nrings) if ring_weights is None else np.clip(np.asarray(ring_weights, np.float64), 0, None)
        if w.shape != (grid.nrings,) or w.sum() <= 0:
            w = np.ones(grid.nrings)
        self.ring_weights = (w / w.sum()).astype(np.float32)
        self._w = tf.constant(self.ring_weights)
        self._scale = tf.constant(float(data_scale), tf.float32)

    def refine(self, particle_ft: np.ndarray, rotations: np.ndarray, origins_A: np.ndarray,
               prior_rotations: Optional[np.ndarray] = None, prior_origins_A: Optional[np.ndarray] = None):
        """particle_ft (k, ny, nx) complex (cropped, phase-flipped), rotations (k,3,3), origins (k,2) Å
        → (rotations, origins_A, score, initial_score) as float64 / float32 arrays.

        ``prior_rotations`` / ``prior_origins_A``: centre of the pose prior (default: the start pose);
        used only when the settings switch the prior on."""
        if prior_rotations is None:
            prior_rotations = rotations
        if prior_origins_A is None:
            prior_origins_A = origins_A
        k = len(rotations)
        out_R = np.empty((k, 3, 3))
        out_o = np.empty((k, 2))
        out_s = np.empty(k, np.float32)
        out_s0 = np.empty(k, np.float32)
        B = self.batch
        for i0 in range(0, k, B):
            i1 = min(i0 + B, k)
            sl = slice(i0, i1)
            pad = B - (i1 - i0)
            ft = particle_ft[sl]
            R = rotations[sl]
            o = origins_A[sl]
            PR = prior_rotations[sl]
            PO = prior_origins_A[sl]
            if pad:
                ft, R, o, PR, PO = (np.concatenate([x, np.repeat(x[-1:], pad, 0)]) for x in (ft, R, o, PR, PO))
            Rn, on, s, s0 = self._fn(*self._g, tf.constant(R, tf.float32), tf.constant(o, tf.float32),
                                     tf.constant(ft.real, tf.float32), tf.constant(ft.imag, tf.float32),
                                     *self._grid_t, self._w, self._scale, tf.constant(PR, tf.float32),
                                     tf.constant(PO, tf.float32))
            n = i1 - i0
            out_R[sl] = _orthonormalise(Rn.numpy()[:n].astype(np.float64))
            out_o[sl] = on.numpy()[:n]
            out_s[sl] = s.numpy()[:n]
            out_s0[sl] = s0.numpy()[:n]
        return out_R, out_o, out_s, out_s0


def _orthonormalise(R: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(R)
    return u @ vt


def frc_rings(gmm: GMM, grid: FourierGrid, particle_ft: np.ndarray, rotations: np.ndarray,
              origins_A: np.ndarray, batch: int = 64) -> np.ndarray:
    """Per-ring FRC of each particle against the GMM at its given pose, (k, nrings)."""
    c, a, s = _gmm_tensors(gmm)
    sy, sx = tf.constant(grid.sy), tf.constant(grid.sx)
    out = []
    for i0 in range(0, len(rotations), batch):
        sl = slice(i0, i0 + batch)
        mre, mim = project_ft(c, a, s, tf.constant(rotations[sl], tf.float32), tf.constant(origins_A[sl], tf.float32), sy, sx)
        f = frc(mre, mim, tf.constant(particle_ft[sl].real), tf.constant(particle_ft[sl].imag),
                tf.constant(grid.pix), tf.constant(grid.ring), grid.nrings)
        out.append(f.numpy())
    return np.concatenate(out) if out else np.zeros((0, grid.nrings), np.float32)


def frc_scores(gmm: GMM, grid: FourierGrid, particle_ft: np.ndarray, rotations: np.ndarray,
               origins_A: np.ndarray, batch: int = 64) -> np.ndarray:
    """Mean FRC (uniform over rings) of each particle against the GMM at its pose, (k,)."""
    return frc_rings(gmm, grid, particle_ft, rotations, origins_A, batch).mean(axis=1)


def ssnr_data_scale(ring_frc: np.ndarray, grid: FourierGrid) -> float:
    """2·Σ_r n_r f_r: converts a change of the SSNR-weighted FRC into log-likelihood units."""
    f = np.clip(np.nanmean(ring_frc, axis=0), 0.0, None)
    n_r = np.bincount(grid.ring, minlength=grid.nrings).astype(np.float64)
    return float(2.0 * np.sum(f * n_r))


def ssnr_ring_weights(ring_frc: np.ndarray, grid: FourierGrid) -> np.ndarray:
    """Ring weights for the FRC average from the population FRC of a set of particles.

    Each ring's per-particle FRC is a noisy estimate of the population FRC f_r with variance
    ≈ 1/n_r (n_r pixels in the ring); weighting ring r by f_r·n_r (clipped at 0) is the
    matched-filter choice.  Returns (nrings,) summing to 1; uniform if no ring has signal."""
    f = np.clip(np.nanmean(ring_frc, axis=0), 0.0, None)
    n_r = np.bincount(grid.ring, minlength=grid.nrings).astype(np.float64)
    w = f * n_r
    return w / w.sum() if w.sum() > 0 else np.full(grid.nrings, 1.0 / grid.nrings)


# --------------------------------------------------------------------------------------------
# real-space projections and maps (simulation, rendering)


def project_images(gmm: GMM, rotations: np.ndarray, origins_A: np.ndarray, apix: float, box: int,
                   batch: int = 64) -> np.ndarray:
    """Real-space projections I(p) = ∫V(Aᵀp)dz of the GMM, (k, box, box) float32, mass per pixel,
    box centre at index box//2; a Gaussian at c is centred at (A c)_xy − origin."""
    c, a, s = _gmm_tensors(gmm)
    ky = np.fft.fftfreq(box) * box
    kx = np.arange(box // 2 + 1)
    L = box * apix
    sy, sx = tf.constant((ky / L).astype(np.float32)), tf.constant((kx / L).astype(np.float32))
    out = np.empty((len(rotations), box, box), np.float32)
    for i0 in range(0, len(rotations), batch):
        sl = slice(i0, i0 + batch)
        re, im = project_ft(c, a, s, tf.constant(rotations[sl], tf.float32),
                            tf.constant(origins_A[sl], tf.float32), sy, sx)
        ft = re.numpy() + 1j * im.numpy()
        out[sl] = np.fft.fftshift(np.fft.irfft2(ft, s=(box, box)), axes=(-2, -1))
    return out


def volume_ft(centers, amplitudes, sigmas, sz, sy, sx):
    """3-D transform of the GMM on a separable grid: (nz, ny, nx) complex64.

    sz, sy, sx in 1/Å.  G(s) = Σ a·exp(−2π²σ²|s|²)·exp(−2πi s·c)."""
    s2 = -2.0 * math.pi**2 * tf.square(sigmas)[:, None]

    def axis_table(freq, coord, scale=None):
        env = tf.exp(s2 * tf.square(freq)[None, :])
        if scale is not None:  # real factor folded in before the complex table (clean gradients)
            env = env * scale[:, None]
        ph = -TWO_PI * coord[:, None] * freq[None, :]
        return tf.complex(env * tf.cos(ph), env * tf.sin(ph))  # (N, n)

    tz = axis_table(sz, centers[:, 2], amplitudes)
    ty = axis_table(sy, centers[:, 1])
    tx = axis_table(sx, centers[:, 0])
    zy = tf.transpose(tz)[:, None, :] * tf.transpose(ty)[None, :, :]  # (nz, ny, N)
    return tf.einsum("zyn,nx->zyx", zy, tx)


def render_map(gmm: GMM, box: int, apix: float, z_chunk: int = 16) -> np.ndarray:
    """The GMM as a map (box, box, box) float32 indexed [z,y,x], mass per voxel."""
    c, a, s = _gmm_tensors(gmm)
    k = (np.fft.fftfreq(box) * box / (box * apix)).astype(np.float32)
    kx = (np.arange(box // 2 + 1) / (box * apix)).astype(np.float32)
    ft = np.empty((box, box, box // 2 + 1), np.complex64)
    for z0 in range(0, box, z_chunk):
        ft[z0:z0 + z_chunk] = volume_ft(c, a, s, tf.constant(k[z0:z0 + z_chunk]), tf.constant(k), tf.constant(kx)).numpy()
    return np.fft.fftshift(np.fft.irfftn(ft, s=(box, box, box))).astype(np.float32)
