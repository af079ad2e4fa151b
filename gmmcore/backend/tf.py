"""The TensorFlow backend: GMM projector, FRC, pose optimiser, GMM volume transform and fit.

Everything runs on the GPU when TensorFlow sees one (standard device placement) and on all CPU
cores otherwise.  The only module that imports TensorFlow (see :mod:`gmmcore.backend`).

Maths (conventions of :mod:`gmmcore.grids`; the alignment kernel's layout: :mod:`gmmcore.backend.kernels`):
for a Gaussian of amplitude a (mass), width σ (Å)
whose projected centre is μ (Å, in the image plane, from the box centre), the 2-D transform is
a·exp(−2π²σ²|s|²)·exp(−2πi s·μ).  With Gaussians c_j in 3-D and a pose (A, origin):
μ_j = (A c_j)_xy − origin (RELION: the particle centre sits at the box centre − origin).  The
transform is separable in s_x and s_y, so a whole projection on an (ny × nx) grid is one matrix
product of an (ny × N) table by an (N × nx) table.

Pose update: a rotation vector v (radians) and a shift t (Å) per particle; the pose is
(Rodrigues(v)·A₀, origin₀ + t).  Adam on (v, t), step decaying linearly, best pose kept.
"""
from __future__ import annotations

import logging
import math
import os
import sys
from typing import Optional, Sequence

import numpy as np



def _import_tensorflow():
    """Import TensorFlow with its C++ start-up chatter (absl/oneDNN notices printed straight to file
    descriptor 2 before TF_CPP_MIN_LOG_LEVEL applies) kept off the user's stderr; an import error
    is still reported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tempfile

    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr descriptor: import as is
        import tensorflow
        return tensorflow
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return tensorflow


tf = _import_tensorflow()

from ..grids import full_grid_frequencies  # noqa: E402
from . import FRCObjective, PoseSettings, ProjectionRMSDObjective  # noqa: E402
from .kernels import (CPU_BATCH_CAP, CPU_MICRO_BATCH, HermitianLayout, RingLayout, batch_for_memory,  # noqa: E402
                      host_free_bytes, in_micro_batches)

# TensorFlow's CPU step gives the same bits at every batch of 16 or more particles but other last
# bits below 16 (measured: 8 vs 16 differ by 1 ulp, 16 = 32): micro-batches of 16 keep the results
# of the default batch (16) unchanged; the speed of 8 and 16 measured alike (benchmarks/README.md).
TF_CPU_MICRO_BATCH = max(CPU_MICRO_BATCH, 16)

# TF logs a harmless warning while fitting (the gradient of volume_ft's real→complex amplitude cast
# drops an imaginary part that is zero by construction); keep TF's Python logger to errors.
tf.get_logger().setLevel(logging.ERROR)
# TensorFlow runs every float32 product in TF32 on Ampere+ GPUs by default; TF32 in the small
# products (rotations, centres) moves refined poses by up to 0.5°, and TF cannot choose per
# product, so this backend stays in float32 (the JAX backend uses tensor cores where it pays).
tf.config.experimental.enable_tensor_float_32_execution(False)

TWO_PI = 2.0 * math.pi
F32 = tf.float32


# --------------------------------------------------------------------------------------------
# devices

_DEVICES_CONFIGURED = False


def configure_devices(gpu: Optional[Sequence[int]] = None, cpu_only: bool = False) -> str:
    """Choose devices before TensorFlow starts: ``gpu`` = ids to use (None: all visible),
    ``cpu_only``: hide GPUs.  Turns memory growth on; CPU thread pools follow
    :func:`gmmcore.resources.cpu_threads`.  A GPU id that does not exist (when GPUs are visible)
    is an InputError.  Returns a one-line description ("GPU: ..." or "CPU (n threads)")."""
    global _DEVICES_CONFIGURED
    from ..errors import InputError
    from ..resources import cpu_threads, threads_limited

    gpus = tf.config.list_physical_devices("GPU")
    if gpu is not None and gpus and not cpu_only:
        missing = [i for i in gpu if not 0 <= i < len(gpus)]
        if missing:
            raise InputError(f"GPU {','.join(map(str, missing))} does not exist (TensorFlow sees {len(gpus)} GPU(s): "
                             f"ids 0–{len(gpus) - 1})", field="--gpu")
    if not _DEVICES_CONFIGURED:
        if threads_limited():
            try:
                n = cpu_threads()
                tf.config.threading.set_intra_op_parallelism_threads(n)
                tf.config.threading.set_inter_op_parallelism_threads(min(n, 2))
            except RuntimeError:  # TF already initialised: keep its pools
                pass
        try:
            if cpu_only or not gpus:
                tf.config.set_visible_devices([], "GPU")
                gpus = []
            else:
                if gpu is not None:
                    gpus = [gpus[i] for i in gpu]
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
    return f"CPU ({cpu_threads()} threads)"


def _gpu_free_bytes():
    """Free memory of the first visible GPU (bytes) from nvidia-smi, None when unknown."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout.split()
        return float(out[0]) * 2**20 if out else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------------------------
# projector, FRC, rotations (tensor in, tensor out)


def _gmm_tensors(gmm):
    return (tf.constant(gmm.centers, F32), tf.constant(gmm.amplitudes, F32), tf.constant(gmm.sigmas, F32))


def project_ft(centers, amplitudes, sigmas, rotations, origins, sy, sx):
    """Fourier transforms of GMM projections on a separable grid.

    centers (N,3) Å — or (B,N,3): one set of centres per image (e.g. per-particle conformations) —,
    amplitudes (N,) — or (B,N), one set per image —, sigmas (N,) Å, rotations (B,3,3) RELION A, origins (B,2) Å,
    sy (ny,), sx (nx,) in 1/Å.  Returns (real, imag), each (B, ny, nx) float32.
    """
    per_image = len(centers.shape) == 3
    mu = tf.einsum("bij,bnj->bni" if per_image else "bij,nj->bni", rotations[:, :2, :], centers) \
        - origins[:, None, :]  # (B,N,2)
    s2 = -2.0 * math.pi**2 * tf.square(sigmas)[:, None]  # (N,1)
    ex = tf.exp(s2 * tf.square(sx)[None, :])  # (N,nx)
    ey = tf.exp(s2 * tf.square(sy)[None, :])  # (N,ny)
    ey = ey * amplitudes[:, :, None] if len(amplitudes.shape) == 2 else ey * amplitudes[:, None]  # (B,N,ny) or (N,ny)
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


def envelopes(sigmas, amplitudes, k_over_L):
    """Pose-independent tables, once per GMM and grid: E2 (N, 2K) = [E, E], E = exp(−2π²σ²s²) at
    s = k/L, k = 0..K−1 (x tables), and (a·E2)ᵀ (2K, N) (y tables)."""
    E = tf.exp(-2.0 * math.pi**2 * tf.square(sigmas)[:, None] * tf.square(k_over_L)[None, :])
    E2 = tf.concat([E, E], axis=1)
    return E2, tf.transpose(E2 * amplitudes[:, None])


def project_blocks(mu, Ex2, Ey2, kw):
    """The projector on the Hermitian half grid (:mod:`gmmcore.backend.kernels`): (B, 2K, 2K) blocks
    [[P, T], [R, Q]] = [E·a·cos kθy; E·a·sin kθy] · [E cos kθx, E sin kθx], θ = 2π μ/L, for
    projected centres mu (B, N, 2) Å; ``kw`` (K,) = 2πk/L.  The y tables are made in the (2K, N)
    order the product reads; the gradient is analytic (two products of the same size)."""
    K = tf.shape(kw)[0]

    @tf.custom_gradient
    def blocks(m):
        thx = m[:, :, 0:1] * kw[None, None, :]  # (B, N, K)
        thy = kw[None, :, None] * m[:, None, :, 1]  # (B, K, N)
        X = tf.concat([tf.cos(thx), tf.sin(thx)], axis=2) * Ex2  # (B, N, 2K)
        Y = tf.concat([tf.cos(thy), tf.sin(thy)], axis=1) * Ey2  # (B, 2K, N)

        def grad(g):
            # d(E cos kθ)/dμ = −k·(2π/L)·E sin kθ, d(E sin kθ)/dμ = k·(2π/L)·E cos kθ
            dX = tf.matmul(Y, g, transpose_a=True)  # (B, N, 2K)
            dY = tf.matmul(g, X, transpose_b=True)  # (B, 2K, N)
            dmx = tf.reduce_sum((dX[:, :, K:] * X[:, :, :K] - dX[:, :, :K] * X[:, :, K:]) * kw, axis=2)
            dmy = tf.reduce_sum((dY[:, K:] * Y[:, :K] - dY[:, :K] * Y[:, K:]) * kw[:, None], axis=1)
            return tf.stack([dmx, dmy], axis=-1)

        return tf.matmul(Y, X), grad

    return blocks(mu)


def blocks_to_flat(blocks, K):
    """(B, 2K, 2K) blocks → (re, im) (B, 2K²+1): the Hermitian layout [+ky rows; −ky rows; 0]."""
    P, T = blocks[:, :K, :K], blocks[:, :K, K:]
    R, Q = blocks[:, K:, :K], blocks[:, K:, K:]
    B = tf.shape(blocks)[0]
    z = tf.zeros([B, 1])
    flat = lambda x: tf.reshape(x, [B, -1])  # noqa: E731
    re = tf.concat([flat(P - Q), flat(P + Q), z], axis=1)
    im = tf.concat([flat(-(R + T)), flat(R - T), z], axis=1)
    return re, im


def frc_from_rings(m_re, m_im, p_re, p_im, p_pow, ring_index):
    """Per-ring FRC (B, nrings): the model gathered to the ring segments (B, nrings, maxlen) against
    the particle's zero-padded ring arrays and per-ring power."""
    mr = tf.gather(m_re, ring_index, axis=1)
    mi = tf.gather(m_im, ring_index, axis=1)
    s_mp = tf.reduce_sum(mr * p_re + mi * p_im, axis=-1)
    s_mm = tf.reduce_sum(mr * mr + mi * mi, axis=-1)
    return s_mp / tf.sqrt(s_mm * p_pow + 1e-30)


def frc(model_re, model_im, part_re, part_im, pix, ring, nrings):
    """Per-ring FRC on the full cropped grid (heterogeneity training, per-particle centres through
    :func:`project_ft`): inputs (B, ny, nx), ``pix`` flat indices of used pixels, ``ring`` their
    ring ids → (B, nrings), each ring normalised on its own."""
    B = tf.shape(model_re)[0]
    g = lambda x: tf.gather(tf.reshape(x, [B, -1]), pix, axis=1)  # noqa: E731
    mr, mi, pr, pi = g(model_re), g(model_im), g(part_re), g(part_im)
    vals = tf.transpose(tf.stack([mr * pr + mi * pi, mr * mr + mi * mi, pr * pr + pi * pi], axis=-1), [1, 0, 2])
    s = tf.transpose(tf.math.unsorted_segment_sum(vals, ring, nrings), [1, 0, 2])  # (B, nrings, 3)
    return s[..., 0] / tf.sqrt(s[..., 1] * s[..., 2] + 1e-30)


def particle_rings(particle_ft: np.ndarray, rings: RingLayout):
    """Cropped transforms (k, ny, nx) → ring arrays re, im (k, nrings, maxlen) and power (k, nrings), NumPy."""
    flat = particle_ft.reshape(len(particle_ft), -1)
    flat = np.concatenate([flat, np.zeros((len(flat), 1), flat.dtype)], axis=1)
    r = flat[:, rings.particle_index]
    pre, pim = r.real.astype(np.float32), r.imag.astype(np.float32)
    return pre, pim, (pre.astype(np.float64) ** 2 + pim.astype(np.float64) ** 2).sum(-1).astype(np.float32)


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
# pose objectives: (constants, per-particle data names, score(consts, R, origin, data) → (J, S))


def _frc_objective(objective: FRCObjective, settings: PoseSettings):
    """The FRC (+ prior) objective: J = data_scale·S − prior penalty, S = ring-weighted FRC.

    Returns (constants, per-particle data maker, prepare(constants) — once per batch, before the
    steps: the pose-independent envelopes —, score(prepared, R, origin, data) → (J, S))."""
    grid = objective.grid
    apix = grid.apix
    use_prior = settings.prior_angle_deg is not None
    inv_var_a = 0.0 if not use_prior else 1.0 / math.radians(settings.prior_angle_deg) ** 2
    inv_var_s = 0.0 if not use_prior or not settings.prior_shift_px else 1.0 / (settings.prior_shift_px * apix) ** 2
    layout = HermitianLayout(grid)
    rings = RingLayout(grid, layout)
    K = layout.K
    k_over_L = (np.arange(K) / (grid.box * apix)).astype(np.float32)
    consts = (*_gmm_tensors(objective.gmm), tf.constant(k_over_L), tf.constant(TWO_PI * k_over_L),
              tf.constant(rings.model_index), tf.constant(objective.ring_weights, F32),
              tf.constant(float(objective.data_scale), F32))

    def prepare(c):
        centers, amps, sigmas, k, kw, ring_index, ring_w, data_scale = c
        Ex2, Ey2 = envelopes(sigmas, amps, k)
        return centers, Ex2, Ey2, kw, ring_index, ring_w, data_scale

    def score(c, R, org, data):
        centers, Ex2, Ey2, kw, ring_index, ring_w, data_scale = c
        p_re, p_im, p_pow, prior_rot, prior_org = data
        mu = tf.einsum("bij,nj->bni", R[:, :2, :], centers) - org[:, None, :]  # (B,N,2)
        m_re, m_im = blocks_to_flat(project_blocks(mu, Ex2, Ey2, kw), K)
        s = tf.reduce_sum(frc_from_rings(m_re, m_im, p_re, p_im, p_pow, ring_index) * ring_w[None, :], axis=1)
        if not use_prior:
            return s, s
        # deviation from the prior centre: D = R·Pᵀ; its skew part is sin(θ)·axis (θ² for small θ)
        D = tf.matmul(R, prior_rot, transpose_b=True)
        v = tf.stack([D[:, 2, 1] - D[:, 1, 2], D[:, 0, 2] - D[:, 2, 0], D[:, 1, 0] - D[:, 0, 1]], -1) / 2.0
        pen = 0.5 * inv_var_a * tf.reduce_sum(tf.square(v), -1)
        pen += 0.5 * inv_var_s * tf.reduce_sum(tf.square(org - prior_org), -1)
        return data_scale * s - pen, s

    def data(particle_ft, prior_rotations, prior_origins_A):
        pre, pim, ppow = particle_rings(np.asarray(particle_ft), rings)
        return (tf.constant(pre), tf.constant(pim), tf.constant(ppow),
                tf.constant(prior_rotations, F32), tf.constant(prior_origins_A, F32))

    # prepare and score depend on nothing else: one traced loop serves every objective with this key
    key = ("frc", K, use_prior, inv_var_a, inv_var_s)
    return consts, data, prepare, score, key


def _rmsd_objective(objective: ProjectionRMSDObjective, settings: PoseSettings):
    """The conformation-to-pose objective: J = −RMSD between the masked projection of the neutral
    GMM at the pose and the particle's target (its masked conformation GMM projected at its
    reference pose, made once per batch).  RMSD of the band-limited difference image per pixel:
    sqrt(Σ_k w_k |ΔF_k|²) / box², w = 2 for k_x > 0 (Hermitian mates), 1 on the k_x = 0 column."""
    if settings.prior_angle_deg is not None:
        raise ValueError("the projection-RMSD objective has no pose prior")
    grid = objective.grid
    c, a, s = _gmm_tensors(objective.gmm)
    a = a * tf.constant(np.asarray(objective.weights, np.float32).reshape(-1))
    nx = len(grid.sx)
    pix_w = np.where(np.asarray(grid.pix) % nx > 0, 2.0, 1.0).astype(np.float32)
    sy, sx, pix = tf.constant(grid.sy), tf.constant(grid.sx), tf.constant(grid.pix)
    consts = (c, a, s, sy, sx, pix, tf.constant(pix_w), tf.constant(1.0 / float(grid.box) ** 2, F32))

    def score(cs, R, org, data):
        centers, amps, sigmas, sy_, sx_, pix_, w, norm = cs
        t_re, t_im = data
        mre, mim = project_ft(centers, amps, sigmas, R, org, sy_, sx_)
        B = tf.shape(mre)[0]
        g = lambda x: tf.gather(tf.reshape(x, [B, -1]), pix_, axis=1)  # noqa: E731
        d2 = tf.reduce_sum(w[None, :] * (tf.square(g(mre) - t_re) + tf.square(g(mim) - t_im)), axis=1)
        rmsd = tf.sqrt(d2 + 1e-20) * norm
        return -rmsd, -rmsd

    def data(conf_centers, ref_rotations, ref_origins_A):
        tre, tim = project_ft(tf.constant(conf_centers, F32), a, s, tf.constant(ref_rotations, F32),
                              tf.constant(ref_origins_A, F32), sy, sx)
        B = tf.shape(tre)[0]
        g = lambda x: tf.gather(tf.reshape(x, [B, -1]), pix, axis=1)  # noqa: E731
        return g(tre), g(tim)

    return consts, data, lambda cs: cs, score, ("rmsd",)


_OBJECTIVES = {FRCObjective: _frc_objective, ProjectionRMSDObjective: _rmsd_objective}
_LOOPS = {}  # (objective key, settings, apix, jit_compile) → traced pose loop


def _pose_loop(prepare, score, settings: PoseSettings, apix: float, jit_compile: bool = False):
    """The whole multi-step optimisation of one batch as one compiled function (``jit_compile``:
    through XLA)."""
    steps = int(settings.steps)
    lr_rot = math.radians(settings.lr_angle_deg)
    lr_shift = settings.lr_shift_px * apix
    b1, b2 = settings.beta1, settings.beta2
    decay = settings.step_decay()

    @tf.function(reduce_retracing=True, jit_compile=jit_compile)
    def run(consts, rot0, org0, data):
        B = tf.shape(rot0)[0]
        consts = prepare(consts)
        params = tf.zeros([B, 5])  # 3 rotation-vector (rad) + 2 shift (Å)
        m = tf.zeros_like(params)
        v = tf.zeros_like(params)
        lr = tf.constant([lr_rot] * 3 + [lr_shift] * 2, F32)

        def objective(p):
            return score(consts, tf.matmul(rotvec_matrix(p[:, :3]), rot0), org0 + p[:, 3:], data)

        best_p = params
        best_j = tf.fill([B], -1e30)
        best_s = tf.fill([B], -2.0)
        first = None
        for t in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(params)
                j, s = objective(params)
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
        j, s = objective(params)
        better = j > best_j
        best_s = tf.where(better, s, best_s)
        best_p = tf.where(better[:, None], params, best_p)
        return tf.matmul(rotvec_matrix(best_p[:, :3]), rot0), org0 + best_p[:, 3:], best_s, first

    return run


class _PoseOptimizer:
    """Compiled optimiser of one objective; called per (padded, fixed-size) batch."""

    def __init__(self, objective, settings: PoseSettings):
        try:
            make = _OBJECTIVES[type(objective)]
        except KeyError:
            raise TypeError(f"the TensorFlow backend has no pose objective {type(objective).__name__}") from None
        self._consts, self._data, prepare, score, key = make(objective, settings)
        xla = os.environ.get("GMMCORE_TF_XLA", "0") == "1"
        key = (key, int(settings.steps), settings.lr_angle_deg, settings.lr_shift_px, settings.final_lr_fraction,
               settings.beta1, settings.beta2, float(objective.grid.apix), xla)
        if key not in _LOOPS:  # both halves and every iteration share one traced loop
            _LOOPS[key] = _pose_loop(prepare, score, settings, objective.grid.apix, jit_compile=xla)
        self._run = _LOOPS[key]

        # a CPU runs a batch as micro-batches (TF_CPU_MICRO_BATCH); a GPU takes it whole
        self.micro_batch = None if tf.config.get_visible_devices("GPU") else TF_CPU_MICRO_BATCH

    def __call__(self, rotations, origins_A, **per_particle):
        return in_micro_batches(self._batch, self.micro_batch, rotations=rotations, origins_A=origins_A,
                                **per_particle)

    def _batch(self, rotations, origins_A, **per_particle):
        R, o, s, s0 = self._run(self._consts, tf.constant(rotations, F32), tf.constant(origins_A, F32),
                                self._data(**per_particle))
        return R.numpy(), o.numpy(), s.numpy(), s0.numpy()


# --------------------------------------------------------------------------------------------
# GMM volume transform and the fit's loss/gradients


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


def volume_ft_hermitian(centers, amplitudes, sigmas, sz, sy, sx):
    """:func:`volume_ft` on a grid whose z frequencies are symmetric (sz = −kmax..kmax, sz[kmax] = 0),
    from the k_z ≥ 0 rows only: with C = E·cos θ_z, S = E·sin θ_z (E even, θ odd in k_z),
    G(±k_z) = A ± iB, A = Σ C·t_y·t_x, B = Σ S·t_y·t_x — one real (2K × N)·(N × 2·ny·nx) product
    instead of the complex (nz·ny × N)·(N × nx) one: about half the multiply-adds.  The same
    transform up to float32 rounding (a different order of the sums)."""
    nz = int(sz.shape[0])
    K = (nz + 1) // 2
    s2 = -2.0 * math.pi**2 * tf.square(sigmas)[:, None]
    szp = sz[K - 1:]  # k_z = 0..kmax

    def env_phase(freq, coord):
        return tf.exp(s2 * tf.square(freq)[None, :]), -TWO_PI * coord[:, None] * freq[None, :]

    ez, pz = env_phase(szp, centers[:, 2])
    ez = ez * amplitudes[:, None]
    cz, sz_ = ez * tf.cos(pz), ez * tf.sin(pz)  # (N, K)
    ey, py = env_phase(sy, centers[:, 1])
    ex, px = env_phase(sx, centers[:, 0])
    ty_r, ty_i = ey * tf.cos(py), ey * tf.sin(py)  # (N, ny)
    tx_r, tx_i = ex * tf.cos(px), ex * tf.sin(px)  # (N, nx)
    ny, nx = int(sy.shape[0]), int(sx.shape[0])
    yx_r = ty_r[:, :, None] * tx_r[:, None, :] - ty_i[:, :, None] * tx_i[:, None, :]
    yx_i = ty_r[:, :, None] * tx_i[:, None, :] + ty_i[:, :, None] * tx_r[:, None, :]
    n = tf.shape(centers)[0]
    rhs = tf.concat([tf.reshape(yx_r, [n, ny * nx]), tf.reshape(yx_i, [n, ny * nx])], axis=1)  # (N, 2·ny·nx)
    prod = tf.matmul(tf.concat([cz, sz_], axis=1), rhs, transpose_a=True)  # (2K, 2·ny·nx)
    a_r, a_i = prod[:K, : ny * nx], prod[:K, ny * nx:]
    b_r, b_i = prod[K:, : ny * nx], prod[K:, ny * nx:]
    plus = tf.complex(a_r - b_i, a_i + b_r)  # k_z ≥ 0: A + iB (t_z = C + iS)
    minus = tf.complex(a_r + b_i, a_i - b_r)  # k_z ≤ 0: A − iB (rows |k_z| = 0..kmax)
    full = tf.concat([tf.reverse(minus[1:], axis=[0]), plus], axis=0)
    return tf.reshape(full, [nz, ny, nx])


def _fit_fns(hermitian: bool = False):
    """The fit's compiled functions, traced anew for every fit: a fit's numbers then depend only on
    its inputs, never on what the process fitted before (a relaxed retrace for a second GMM of
    another size would run a different graph — and a resumed run would differ from an
    uninterrupted one).  ``hermitian``: the transform by :func:`volume_ft_hermitian`."""
    transform = volume_ft_hermitian if hermitian else volume_ft

    def slab_sums(c, u, w, a0, s0, sz, sy, sx, mr, mi, sh, wg, nseg):
        G = transform(c, a0 * tf.nn.softplus(u), s0 * tf.nn.softplus(w), sz, sy, sx)
        gr = tf.reshape(tf.math.real(G), [-1])
        gi = tf.reshape(tf.math.imag(G), [-1])
        mr, mi = tf.reshape(mr, [-1]), tf.reshape(mi, [-1])
        vals = tf.stack([wg * (gr * mr + gi * mi), wg * (gr * gr + gi * gi)], axis=1)
        return tf.math.unsorted_segment_sum(vals, sh, nseg + 1)[:nseg]  # (nseg, 2): S_gm, S_gg

    def loss_of(S, S_mm, f0, amp_weight):
        S_gm, S_gg = S[:, 0], S[:, 1]
        fsc = S_gm[f0:] / tf.sqrt(S_gg[f0:] * S_mm[f0:] + 1e-30)
        power = tf.reduce_sum(tf.square(tf.sqrt(S_gg + 1e-30) - tf.sqrt(S_mm))) / tf.reduce_sum(S_mm)
        return 1.0 - tf.reduce_mean(fsc) + amp_weight * power, fsc

    @tf.function(reduce_retracing=True)
    def sums(c, u, w, a0, s0, sz, sy, sx, mr, mi, sh, wg, nseg):
        return slab_sums(c, u, w, a0, s0, sz, sy, sx, mr, mi, sh, wg, nseg)

    @tf.function(reduce_retracing=True)
    def value_and_grad(c, u, w, a0, s0, sz, sy, sx, mr, mi, sh, wg, nseg, S_mm, f0, amp_weight):
        with tf.GradientTape() as tape:
            tape.watch([c, u, w])
            loss, fsc = loss_of(slab_sums(c, u, w, a0, s0, sz, sy, sx, mr, mi, sh, wg, nseg), S_mm, f0, amp_weight)
        return loss, fsc, tape.gradient(loss, [c, u, w])

    @tf.function(reduce_retracing=True)
    def loss_grad_sums(S, S_mm, f0, amp_weight):
        with tf.GradientTape() as tape:
            tape.watch(S)
            loss, fsc = loss_of(S, S_mm, f0, amp_weight)
        return loss, fsc, tape.gradient(loss, S)

    @tf.function(reduce_retracing=True)
    def slab_vjp(c, u, w, a0, s0, sz, sy, sx, mr, mi, sh, wg, nseg, dS):
        with tf.GradientTape() as tape:
            tape.watch([c, u, w])
            x = tf.reduce_sum(dS * slab_sums(c, u, w, a0, s0, sz, sy, sx, mr, mi, sh, wg, nseg))
        return tape.gradient(x, [c, u, w])

    return {"sums": sums, "value_and_grad": value_and_grad, "loss_grad_sums": loss_grad_sums, "slab_vjp": slab_vjp}


class _GmmFit:
    """Loss and gradients of the GMM-to-map fit (:mod:`gmmcore.gmm.build`) for one problem.

    Parameters ``p`` = [centres (N,3) Å, u (N,), w (N,)] float32 with amplitude = a0·softplus(u),
    width = σ0·softplus(w); grids larger than one slab are done slab by slab in two passes."""

    def __init__(self, prob, sigmas0, amp_weight, hermitian: bool = False):
        T = tf.constant
        self.fns = _fit_fns(hermitian and prob.symmetric_z)
        self.sy, self.sx = T(prob.s), T(prob.sx)
        self.slabs = [(T(sz), T(mr), T(mi), T(sh), T(wg)) for sz, mr, mi, sh, wg in prob.slabs]
        self.nseg = T(prob.nshells, tf.int32)
        self.S_mm = T(prob.S_mm, F32)
        self.f0 = T(prob.rmin - 1, tf.int32)
        self.aw = T(float(amp_weight), F32)
        self.s0 = T(np.asarray(sigmas0, np.float32))

    def _sums(self, p, a0):
        T = tf.constant
        tot = 0.0
        for slab in self.slabs:
            tot = tot + self.fns["sums"](T(p[0]), T(p[1]), T(p[2]), a0, self.s0, slab[0], self.sy, self.sx,
                                         *slab[1:], self.nseg)
        return tot

    def sums(self, p, amplitudes0) -> np.ndarray:
        """(nshells, 2) shell sums [S_gm, S_gg] of the GMM against the map."""
        return self._sums(p, tf.constant(amplitudes0)).numpy()

    def value_and_grad(self, p, amplitudes0):
        """(loss, FSC per fitted shell, [grad centres, grad u, grad w]) as NumPy."""
        T = tf.constant
        a0 = T(amplitudes0)
        args = (T(p[0]), T(p[1]), T(p[2]), a0, self.s0)
        fns = self.fns
        if len(self.slabs) == 1:
            slab = self.slabs[0]
            loss, fsc, g = fns["value_and_grad"](*args, slab[0], self.sy, self.sx, *slab[1:], self.nseg, self.S_mm,
                                                 self.f0, self.aw)
            return float(loss), fsc.numpy(), [x.numpy() for x in g]
        loss, fsc, dS = fns["loss_grad_sums"](self._sums(p, a0), self.S_mm, self.f0, self.aw)
        acc = [0.0, 0.0, 0.0]
        for slab in self.slabs:
            g = fns["slab_vjp"](*args, slab[0], self.sy, self.sx, *slab[1:], self.nseg, dS)
            acc = [a_ + x.numpy() for a_, x in zip(acc, g)]
        return float(loss), fsc.numpy(), acc


# --------------------------------------------------------------------------------------------
# the Backend


class TFBackend:
    """TensorFlow implementation of :class:`gmmcore.backend.Backend`."""

    name = "tf"

    def describe_devices(self, gpu=None, cpu_only=False, threads=None) -> str:
        if threads is not None:
            from ..resources import set_cpu_threads

            set_cpu_threads(threads)
        return configure_devices(gpu, cpu_only)

    def frc_rings(self, gmm, grid, particle_ft, rotations, origins_A, batch: int = 64) -> np.ndarray:
        """Per-ring FRC of each particle against the GMM at its given pose, (k, nrings)."""
        consts, data, prepare, _, _ = _frc_objective(FRCObjective(gmm, grid, np.full(grid.nrings, 1.0 / grid.nrings,
                                                                                   np.float32)), PoseSettings())
        K = HermitianLayout(grid).K
        centers, Ex2, Ey2, kw, ring_index, _, _ = prepare(consts)
        out = []
        for i0 in range(0, len(rotations), batch):
            sl = slice(i0, i0 + batch)
            R = tf.constant(rotations[sl], F32)
            p_re, p_im, p_pow, _, _ = data(particle_ft[sl], rotations[sl], origins_A[sl])
            mu = tf.einsum("bij,nj->bni", R[:, :2, :], centers) - tf.constant(origins_A[sl], F32)[:, None, :]
            m_re, m_im = blocks_to_flat(project_blocks(mu, Ex2, Ey2, kw), K)
            out.append(frc_from_rings(m_re, m_im, p_re, p_im, p_pow, ring_index).numpy())
        return np.concatenate(out) if out else np.zeros((0, grid.nrings), np.float32)

    def pose_optimizer(self, objective, settings: PoseSettings) -> _PoseOptimizer:
        return _PoseOptimizer(objective, settings)

    def max_batch(self, gmm, grid, settings: PoseSettings, limit: int = 4096) -> int:
        """``--batch auto`` (:func:`gmmcore.backend.kernels.batch_for_memory`): on the CPU from the
        host's available memory (at most ``CPU_BATCH_CAP``); on a GPU from its free memory as
        ``nvidia-smi`` reports it (16 when that cannot be read)."""
        if not tf.config.get_visible_devices("GPU"):
            return batch_for_memory(len(gmm), grid, host_free_bytes(), limit=min(limit, CPU_BATCH_CAP))
        return batch_for_memory(len(gmm), grid, _gpu_free_bytes(), limit=limit)

    def project_images(self, gmm, rotations, origins_A, apix: float, box: int, batch: int = 64) -> np.ndarray:
        """Real-space projections I(p) = ∫V(Aᵀp)dz of the GMM, (k, box, box) float32, mass per pixel,
        box centre at index box//2; a Gaussian at c is centred at (A c)_xy − origin."""
        c, a, s = _gmm_tensors(gmm)
        fy, fx = full_grid_frequencies(box, apix)
        sy, sx = tf.constant(fy), tf.constant(fx)
        out = np.empty((len(rotations), box, box), np.float32)
        for i0 in range(0, len(rotations), batch):
            sl = slice(i0, i0 + batch)
            re, im = project_ft(c, a, s, tf.constant(rotations[sl], F32), tf.constant(origins_A[sl], F32), sy, sx)
            ft = re.numpy() + 1j * im.numpy()
            out[sl] = np.fft.fftshift(np.fft.irfft2(ft, s=(box, box)), axes=(-2, -1))
        return out

    def render_map(self, gmm, box: int, apix: float, z_chunk: int = 16) -> np.ndarray:
        """The GMM as a map (box, box, box) float32 indexed [z,y,x], mass per voxel."""
        c, a, s = _gmm_tensors(gmm)
        k = (np.fft.fftfreq(box) * box / (box * apix)).astype(np.float32)
        kx = (np.arange(box // 2 + 1) / (box * apix)).astype(np.float32)
        ft = np.empty((box, box, box // 2 + 1), np.complex64)
        for z0 in range(0, box, z_chunk):
            ft[z0:z0 + z_chunk] = volume_ft(c, a, s, tf.constant(k[z0:z0 + z_chunk]), tf.constant(k),
                                            tf.constant(kx)).numpy()
        return np.fft.fftshift(np.fft.irfftn(ft, s=(box, box, box))).astype(np.float32)

    def gmm_fit(self, problem, sigmas0, amp_weight: float, hermitian: bool = False) -> _GmmFit:
        """The fit's loss and gradients; ``hermitian`` computes the GMM transform from its k_z ≥ 0
        half (:func:`volume_ft_hermitian`: ~2× fewer multiply-adds, float32 rounding differs, so
        results differ slightly — off by default)."""
        return _GmmFit(problem, sigmas0, amp_weight, hermitian)


BACKEND = TFBackend()
