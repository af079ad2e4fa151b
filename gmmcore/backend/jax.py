"""The JAX backend: GMM projector, FRC, pose optimiser, GMM volume transform and fit, reconstruction.

Same maths and conventions as :mod:`gmmcore.backend.tf` (see there and :mod:`gmmcore.backend.kernels`);
NumPy in, NumPy out.  Never imports TensorFlow (GPU machines have none).  Runs on the first GPU JAX
sees (or the one chosen), else on the CPU.

Precision: every matrix product runs in full float32 (``Precision.HIGHEST``) except the projector's
big (2K × N)·(N × 2K) product, which may use tensor cores (``GMMCORE_MATMUL``): ``tf32x3`` (the GPU
default: operands split into TF32 head + tail, three tensor-core products — poses as float32,
< 1e-5°), ``tf32`` (one TF32 product: poses move by ~2e-4°, at most ~1e-3°) or ``fp32``.  TF32 in
the small products (rotations, Gaussian centres) would move poses by up to 0.5°, so they stay
float32.  ``tf32-emulated`` / ``tf32x3-emulated`` do the same roundings on any device (tests).

The pose loop of one batch (all Adam steps, best pose kept) is one compiled function; batches are
padded to a fixed size by the caller, so one compilation serves a run; on accelerators the batch's
input buffers are donated to it.
"""
from __future__ import annotations

import math
import os
from functools import lru_cache, partial
from typing import Optional, Sequence

import numpy as np

import jax
import jax.numpy as jnp
from jax import lax

from ..grids import full_grid_frequencies
from . import FRCObjective, PoseSettings
from .kernels import (CPU_BATCH_CAP, CPU_MICRO_BATCH, HermitianLayout, RingLayout, batch_for_memory, host_free_bytes,
                      in_micro_batches)

HIGHEST = lax.Precision.HIGHEST
TWO_PI = 2.0 * math.pi


def _dot(a, b):
    """Batched matrix product in full float32."""
    return jnp.matmul(a, b, precision=HIGHEST)


def _round_tf32(x):
    """Round float32 to TF32 (10-bit mantissa, round to nearest even) — emulates tensor cores."""
    u = lax.bitcast_convert_type(x, jnp.uint32)
    u = u + jnp.uint32(0x0FFF) + ((u >> 13) & jnp.uint32(1))
    return lax.bitcast_convert_type(u & jnp.uint32(0xFFFFE000), jnp.float32)


# --------------------------------------------------------------------------------------------
# devices


class _Devices:
    device = None
    description = None
    matmul = "fp32"  # the projector product's precision in use
    default = "fp32"  # ... as configured (device default or GMMCORE_MATMUL)


def configure_devices(gpu: Optional[Sequence[int]] = None, cpu_only: bool = False) -> str:
    """Choose the device (first GPU, ``gpu[0]``, or the CPU) and the projector's matmul precision;
    returns a one-line description (backend, device, precision)."""
    if _Devices.device is None:
        devs = []
        if not cpu_only:
            try:
                devs = jax.devices("gpu")
            except RuntimeError:
                devs = []
        if devs:
            if gpu:
                missing = [i for i in gpu if not 0 <= i < len(devs)]
                if missing:
                    from ..errors import InputError

                    raise InputError(f"GPU {','.join(map(str, missing))} does not exist (JAX sees {len(devs)} GPU(s): "
                                     f"ids 0–{len(devs) - 1})", field="--gpu")
            i = gpu[0] if gpu else 0
            dev = devs[i]
        else:
            dev = jax.devices("cpu")[0]
        _Devices.device = dev
        default = "tf32x3" if dev.platform == "gpu" else "fp32"
        _Devices.matmul = os.environ.get("GMMCORE_MATMUL", default)
        if _Devices.matmul not in MATMUL_MODES:
            _Devices.matmul = default
        _Devices.default = _Devices.matmul
        kind = getattr(dev, "device_kind", dev.platform)
        where = f"GPU {dev.id}: {kind}" if dev.platform == "gpu" else f"CPU ({os.cpu_count()} cores)"
        _Devices.description = f"JAX {jax.__version__} on {where}, projector matmul {_Devices.matmul}"
    return _Devices.description


def _device():
    if _Devices.device is None:
        configure_devices()
    return _Devices.device


def _put(x, dtype=np.float32):
    return jax.device_put(np.asarray(x, dtype), _device())


def _on_accelerator() -> bool:
    return _device().platform != "cpu"


# --------------------------------------------------------------------------------------------
# the projector (Hermitian half grid, vectorised phases, envelopes once per GMM and grid)


def _reduce(x):
    """x = q·π/2 + r, |r| ≤ π/4 (three-part π/2, exact products for |q| < 2¹⁵) → (q int32, r, r²)."""
    q = jnp.round(x * (2.0 / math.pi))
    r = ((x - q * 1.5703125) - q * 4.837512969970703125e-4) - q * 7.54978995489188216e-8
    return q.astype(jnp.int32), r, r * r


def _sin_poly(r, z):
    return r + r * z * (-1.6666654611e-1 + z * (8.3321608736e-3 + z * -1.9515295891e-4))


def _cos_poly(z):
    return 1.0 - 0.5 * z + z * z * (4.166664568298827e-2 + z * (-1.388731625493765e-3 + z * 2.443315711809948e-5))


def cos_quadrant(x, quadrant):
    """cos(x + quadrant·π/2) of float32 ``x`` (integer ``quadrant``, broadcast): quadrant 0 gives
    cos x, quadrant 3 gives sin x.  Quadrant reduction and minimax polynomials on [−π/4, π/4]
    (error < 1e-7); vectorised, where XLA's CPU sin/cos are ~5–10× slower."""
    q, r, z = _reduce(x)
    n = (q + quadrant) & 3
    v = jnp.where((n & 1) == 1, _sin_poly(r, z), _cos_poly(z))
    return jnp.where((n == 1) | (n == 2), -v, v)


def sincos(x):
    """(sin x, cos x) with :func:`cos_quadrant`'s reduction and polynomials."""
    return cos_quadrant(x, 3), cos_quadrant(x, 0)


def envelopes(sigmas, amplitudes, k_over_L):
    """Pose-independent tables, once per GMM and grid: E2 (N, 2K) = [E, E] with E = exp(−2π²σ²s²)
    for the x tables, and (a·E2)ᵀ (2K, N) for the y tables."""
    E = jnp.exp(-2.0 * math.pi ** 2 * jnp.square(sigmas)[:, None] * jnp.square(k_over_L)[None, :])
    E2 = jnp.concatenate([E, E], axis=1)
    return E2, (E2 * amplitudes[:, None]).T


def _tables(mu, Ex2, Ey2, w):
    """Enveloped phase tables in the order the product reads them: X (B, N, 2K) = [E cos kθx, E sin kθx],
    Y (B, 2K, N) = [a·E cos kθy; a·E sin kθy] — each one fused elementwise pass (sin = cos shifted
    by three quadrants, exactly)."""
    K = Ex2.shape[1] // 2
    kk = jnp.concatenate([jnp.arange(K, dtype=jnp.float32)] * 2)
    quad = jnp.concatenate([jnp.zeros(K, jnp.int32), jnp.full(K, 3, jnp.int32)])
    thx = (mu[..., 0] * w)[..., None] * kk  # (B, N, 2K)
    thy = kk[:, None] * (mu[..., 1] * w)[:, None, :]  # (B, 2K, N)
    return Ex2 * cos_quadrant(thx, quad), Ey2 * cos_quadrant(thy, quad[:, None])


MATMUL_MODES = ("fp32", "tf32", "tf32x3", "tf32-emulated", "tf32x3-emulated")


def _mm(Y, X, matmul):
    """The projector's product Y·X in the chosen precision (:data:`MATMUL_MODES`): full float32;
    TF32 tensor cores; TF32 ×3 (each operand split into a TF32 head and a TF32 tail, three
    tensor-core products hh + ht + th: ~float32 accuracy); "-emulated": the same roundings done
    explicitly with float32 products (any device — for tests)."""
    if matmul == "fp32":
        return jnp.matmul(Y, X, precision=HIGHEST)
    emulated = matmul.endswith("-emulated")
    prec = HIGHEST if emulated else lax.Precision.DEFAULT  # DEFAULT: TF32 on tensor cores
    mm = lambda a, b: jnp.matmul(a, b, precision=prec)  # noqa: E731
    Yh, Xh = (_round_tf32(Y), _round_tf32(X)) if emulated else (Y, X)
    if matmul.startswith("tf32x3"):
        Yh, Xh = _round_tf32(Y), _round_tf32(X)
        Yl, Xl = Y - Yh, X - Xh
        if emulated:
            Yl, Xl = _round_tf32(Yl), _round_tf32(Xl)
        return mm(Yh, Xh) + (mm(Yh, Xl) + mm(Yl, Xh))
    return mm(Yh, Xh)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _blocks(mu, Ex, Ey, w, K, matmul):
    X, Y = _tables(mu, Ex, Ey, w)
    return _mm(Y, X, matmul)


def _blocks_fwd(mu, Ex, Ey, w, K, matmul):
    X, Y = _tables(mu, Ex, Ey, w)
    return _mm(Y, X, matmul), (X, Y, w, Ex, Ey)


def _blocks_bwd(K, matmul, res, g):
    """Analytic cotangent of μ: d(E cos kθ)/dμ = −k·w·E sin kθ, d(E sin kθ)/dμ = k·w·E cos kθ."""
    X, Y, w, Ex, Ey = res
    dX = jnp.einsum("bkn,bkm->bnm", Y, g, precision=HIGHEST)  # (B, N, 2K)
    # Y's cotangent made as its transpose (B, N, 2K) = X·gᵀ: the same sums, ~15 % faster on XLA's CPU
    # than g·Xᵀ (B, 2K, N) — an output with 2K contiguous values per row
    dYt = jnp.einsum("bnm,bkm->bnk", X, g, precision=HIGHEST)
    Yt = jnp.swapaxes(Y, 1, 2)
    kw = jnp.arange(K, dtype=X.dtype) * w
    dmx = jnp.sum((dX[..., K:] * X[..., :K] - dX[..., :K] * X[..., K:]) * kw, axis=-1)
    dmy = jnp.sum((dYt[..., K:] * Yt[..., :K] - dYt[..., :K] * Yt[..., K:]) * kw, axis=-1)
    return jnp.stack([dmx, dmy], -1), jnp.zeros_like(Ex), jnp.zeros_like(Ey), jnp.zeros_like(w)


_blocks.defvjp(_blocks_fwd, _blocks_bwd)


def project_blocks(mu, Ex, Ey, k_over_L, matmul: str = "fp32"):
    """Blocks of the projections on the half grid k = 0..K−1 of each axis.

    mu (B, N, 2) projected centres (Å); Ex (N, 2K), Ey (2K, N) envelopes (:func:`envelopes`).  Returns (B, 2K, 2K):
    rows [cos; sin] of the y phases × columns [cos, sin] of the x phases, i.e. [[P, T], [R, Q]]
    with which the transform is M(+ky, kx) = (P − Q) − i(R + T), M(−ky, kx) = (P + Q) + i(R − T)
    (see :mod:`gmmcore.backend.kernels`).  Its gradient is analytic (a custom VJP: two products
    of the same size, no autodiff through the tables)."""
    K = Ex.shape[1] // 2
    w = TWO_PI * k_over_L[1] if K > 1 else jnp.float32(0.0)
    return _blocks(mu, Ex, Ey, w, K, matmul)


def blocks_to_flat(blocks, K: int):
    """(B, 2K, 2K) blocks → real and imaginary parts (B, 2K²+1) in the Hermitian layout
    [+ky rows; −ky rows; one zero], flattened."""
    P, T = blocks[:, :K, :K], blocks[:, :K, K:]
    R, Q = blocks[:, K:, :K], blocks[:, K:, K:]
    B = blocks.shape[0]
    z = jnp.zeros((B, 1), blocks.dtype)
    re = jnp.concatenate([(P - Q).reshape(B, -1), (P + Q).reshape(B, -1), z], axis=1)
    im = jnp.concatenate([-(R + T).reshape(B, -1), (R - T).reshape(B, -1), z], axis=1)
    return re, im


@jax.custom_vjp
def ring_take(flat, index, inverse):
    """``flat`` (B, 2K²+1) gathered to rings (B, nrings, maxlen) by ``index``
    (:class:`~gmmcore.backend.kernels.RingLayout` ``model_index``); the gradient gathers back with
    ``inverse`` (``model_inverse``): the values a scatter-add would give (each layout value has at
    most one slot), at the cost of a gather — XLA's CPU scatter-add was ~10 % of a pose step."""
    return jnp.take(flat, index, axis=1)


def _ring_take_fwd(flat, index, inverse):
    return jnp.take(flat, index, axis=1), inverse


def _ring_take_bwd(inverse, g):
    gf = jnp.concatenate([g.reshape(g.shape[0], -1), jnp.zeros((g.shape[0], 1), g.dtype)], axis=1)
    return jnp.take(gf, inverse, axis=1), None, None


ring_take.defvjp(_ring_take_fwd, _ring_take_bwd)


def frc_from_rings(m_re, m_im, p_re, p_im, p_pow, ring_index, ring_inverse):
    """Per-ring FRC: model (B, 2K²+1) gathered to rings (B, nrings, maxlen) against the particle's
    ring arrays (same shape, zero-padded) and its per-ring power (B, nrings); the gather's gradient
    is a gather through ``ring_inverse`` (:func:`ring_take`)."""
    mr = ring_take(m_re, ring_index, ring_inverse)
    mi = ring_take(m_im, ring_index, ring_inverse)
    s_mp = jnp.sum(mr * p_re + mi * p_im, axis=-1)
    s_mm = jnp.sum(mr * mr + mi * mi, axis=-1)
    return s_mp / jnp.sqrt(s_mm * p_pow + 1e-30)


def rotvec_matrix(v):
    """Rodrigues: rotation vectors (B, 3) radians → (B, 3, 3), smooth at 0 (as the TF backend)."""
    t2 = jnp.sum(jnp.square(v), axis=-1)[:, None, None]
    small = t2 < 1e-8
    safe = jnp.where(small, 1.0, t2)
    t = jnp.sqrt(safe)
    a = jnp.where(small, 1.0 - t2 / 6.0, jnp.sin(t) / t)
    b = jnp.where(small, 0.5 - t2 / 24.0, (1.0 - jnp.cos(t)) / safe)
    z = jnp.zeros_like(v[:, 0])
    Km = jnp.stack([jnp.stack([z, -v[:, 2], v[:, 1]], -1),
                    jnp.stack([v[:, 2], z, -v[:, 0]], -1),
                    jnp.stack([-v[:, 1], v[:, 0], z], -1)], axis=1)
    return jnp.eye(3, dtype=v.dtype)[None] + a * Km + b * _dot(Km, Km)


def projected_centres(centers, R, origins):
    """μ = (R c)_xy − origin: (B, N, 2) Å (full float32)."""
    return jnp.einsum("bij,nj->bni", R[:, :2, :], centers, precision=HIGHEST) - origins[:, None, :]


# --------------------------------------------------------------------------------------------
# the FRC objective and the compiled pose loop


class _FRCProblem:
    """Device constants of one (GMM, grid, ring weights) and the per-particle data transform."""

    def __init__(self, objective: FRCObjective, settings: PoseSettings):
        grid = objective.grid
        self.hl = HermitianLayout(grid)
        self.rl = RingLayout(grid, self.hl)
        k_over_L = (np.arange(self.hl.K) / (grid.box * grid.apix)).astype(np.float32)
        g = objective.gmm
        self.consts = {
            "centers": _put(g.centers), "amplitudes": _put(g.amplitudes), "sigmas": _put(g.sigmas),
            "k": _put(k_over_L), "ring_model": _put(self.rl.model_index, np.int32),
            "ring_inverse": _put(self.rl.model_inverse, np.int32),
            "ring_w": _put(objective.ring_weights), "scale": _put(float(objective.data_scale)),
        }
        self.ring_particle = self.rl.particle_index  # into the cropped (ny·nx) + 1 pixels
        apix = grid.apix
        use_prior = settings.prior_angle_deg is not None
        self.inv_var_a = 0.0 if not use_prior else 1.0 / math.radians(settings.prior_angle_deg) ** 2
        self.inv_var_s = (0.0 if not use_prior or not settings.prior_shift_px
                          else 1.0 / (settings.prior_shift_px * apix) ** 2)
        self.use_prior = use_prior

    def particle_rings(self, particle_ft: np.ndarray):
        """Cropped transforms (k, ny, nx) → ring arrays (re, im) (k, nrings, maxlen) and power (k, nrings)."""
        flat = particle_ft.reshape(len(particle_ft), -1)
        flat = np.concatenate([flat, np.zeros((len(flat), 1), flat.dtype)], axis=1)
        r = flat[:, self.ring_particle]
        pre, pim = r.real.astype(np.float32), r.imag.astype(np.float32)
        return pre, pim, (pre.astype(np.float64) ** 2 + pim.astype(np.float64) ** 2).sum(-1).astype(np.float32)


def _make_score(K: int, use_prior: bool, iva: float, ivs: float, matmul: str):

    def score(c, env, R, org, data):
        p_re, p_im, p_pow, prior_rot, prior_org = data
        mu = projected_centres(c["centers"], R, org)
        blocks = project_blocks(mu, env[0], env[1], c["k"], matmul)
        m_re, m_im = blocks_to_flat(blocks, K)
        s = jnp.sum(frc_from_rings(m_re, m_im, p_re, p_im, p_pow, c["ring_model"], c["ring_inverse"])
                    * c["ring_w"][None, :], axis=1)
        if not use_prior:
            return s, s
        D = jnp.einsum("bij,bkj->bik", R, prior_rot, precision=HIGHEST)
        v = jnp.stack([D[:, 2, 1] - D[:, 1, 2], D[:, 0, 2] - D[:, 2, 0], D[:, 1, 0] - D[:, 0, 1]], -1) / 2.0
        pen = 0.5 * iva * jnp.sum(jnp.square(v), -1) + 0.5 * ivs * jnp.sum(jnp.square(org - prior_org), -1)
        return c["scale"] * s - pen, s

    return score


def _make_pose_loop(score, settings: PoseSettings, apix: float, donate: bool):
    steps = int(settings.steps)
    lr = np.array([math.radians(settings.lr_angle_deg)] * 3 + [settings.lr_shift_px * apix] * 2, np.float32)
    b1, b2 = float(settings.beta1), float(settings.beta2)
    decay = np.asarray(settings.step_decay(), np.float32)
    # bias corrections per step as the TF backend computes them (Python floats → float32)
    bc1 = np.array([1 - b1 ** (t + 1) for t in range(steps)], np.float32)
    bc2 = np.array([1 - b2 ** (t + 1) for t in range(steps)], np.float32)

    def run(c, rot0, org0, data):
        B = rot0.shape[0]
        env = envelopes(c["sigmas"], c["amplitudes"], c["k"])

        def objective(p):
            R = _dot(rotvec_matrix(p[:, :3]), rot0)
            return score(c, env, R, org0 + p[:, 3:], data)

        def neg_total(p):
            j, s = objective(p)
            return -jnp.sum(j), (j, s)

        grad_fn = jax.value_and_grad(neg_total, has_aux=True)

        def step(carry, xs):
            params, m, v, best_p, best_j, best_s = carry
            dec, c1, c2 = xs
            (_, (j, s)), g = grad_fn(params)
            better = j > best_j
            best_j = jnp.where(better, j, best_j)
            best_s = jnp.where(better, s, best_s)
            best_p = jnp.where(better[:, None], params, best_p)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * jnp.square(g)
            params = params - dec * lr * (m / c1) / (jnp.sqrt(v / c2) + 1e-12)
            return (params, m, v, best_p, best_j, best_s), s

        z = jnp.zeros((B, 5), jnp.float32)
        init = (z, z, z, z, jnp.full((B,), -1e30, jnp.float32), jnp.full((B,), -2.0, jnp.float32))
        (params, _, _, best_p, best_j, best_s), s_hist = lax.scan(step, init, (decay, bc1, bc2))
        j, s = objective(params)
        better = j > best_j
        best_s = jnp.where(better, s, best_s)
        best_p = jnp.where(better[:, None], params, best_p)
        return _dot(rotvec_matrix(best_p[:, :3]), rot0), org0 + best_p[:, 3:], best_s, s_hist[0]

    return jax.jit(run, donate_argnums=(1, 2, 3) if donate else ())


@lru_cache(maxsize=16)
def _compiled_pose_loop(key):
    """One jitted pose loop per static configuration: the GMM, ring weights and data are arguments,
    so both halves and every iteration of a run share one compilation (per batch shape and N)."""
    K, use_prior, iva, ivs, matmul, steps, lr_a, lr_s, final, b1, b2, apix, donate = key
    settings = PoseSettings(steps=steps, lr_angle_deg=lr_a, lr_shift_px=lr_s, final_lr_fraction=final,
                            beta1=b1, beta2=b2)
    return _make_pose_loop(_make_score(K, use_prior, iva, ivs, matmul), settings, apix, donate)


class _PoseOptimizer:
    """Compiled optimiser of one objective; called per (padded, fixed-size) batch."""

    def __init__(self, objective, settings: PoseSettings):
        if not isinstance(objective, FRCObjective):
            raise TypeError(f"the JAX backend has no pose objective {type(objective).__name__}")
        self.prob = _FRCProblem(objective, settings)
        matmul = _Devices.matmul if _Devices.device is not None else _matmul_default()
        p = self.prob
        key = (p.hl.K, p.use_prior, p.inv_var_a, p.inv_var_s, matmul, int(settings.steps), settings.lr_angle_deg,
               settings.lr_shift_px, settings.final_lr_fraction, settings.beta1, settings.beta2,
               float(objective.grid.apix), _on_accelerator())
        self._run = _compiled_pose_loop(key)
        # a CPU runs a batch as micro-batches (kernels.CPU_MICRO_BATCH); an accelerator takes it whole
        self.micro_batch = None if _on_accelerator() else CPU_MICRO_BATCH

    def __call__(self, rotations, origins_A, particle_ft, prior_rotations, prior_origins_A):
        return in_micro_batches(self._batch, self.micro_batch, rotations=rotations, origins_A=origins_A,
                                particle_ft=particle_ft, prior_rotations=prior_rotations,
                                prior_origins_A=prior_origins_A)

    def _batch(self, rotations, origins_A, particle_ft, prior_rotations, prior_origins_A):
        pre, pim, ppow = self.prob.particle_rings(np.asarray(particle_ft))
        data = (_put(pre), _put(pim), _put(ppow), _put(prior_rotations), _put(prior_origins_A))
        R, o, s, s0 = self._run(self.prob.consts, _put(rotations), _put(origins_A), data)
        return np.asarray(R), np.asarray(o), np.asarray(s), np.asarray(s0)


def _matmul_default() -> str:
    configure_devices()
    return _Devices.matmul


# --------------------------------------------------------------------------------------------
# FRC at given poses, real-space projections, volume transform


@partial(jax.jit, static_argnums=(6,))
def _frc_batch(c, R, org, p_re, p_im, p_pow, K):
    env = envelopes(c["sigmas"], c["amplitudes"], c["k"])
    m_re, m_im = blocks_to_flat(project_blocks(projected_centres(c["centers"], R, org), env[0], env[1], c["k"]), K)
    return frc_from_rings(m_re, m_im, p_re, p_im, p_pow, c["ring_model"], c["ring_inverse"])


def project_ft(centers, amplitudes, sigmas, rotations, origins, sy, sx):
    """Transforms of GMM projections on any separable grid (direct sin/cos): (re, im) (B, ny, nx)."""
    mu = projected_centres(centers, rotations, origins)
    s2 = -2.0 * math.pi ** 2 * jnp.square(sigmas)[:, None]
    ex = jnp.exp(s2 * jnp.square(sx)[None, :])
    ey = jnp.exp(s2 * jnp.square(sy)[None, :]) * amplitudes[:, None]
    px = TWO_PI * mu[:, :, 0:1] * sx[None, None, :]
    py = TWO_PI * mu[:, :, 1:2] * sy[None, None, :]
    cx, snx = jnp.cos(px) * ex, jnp.sin(px) * ex  # (B, N, nx)
    cy, sny = jnp.cos(py) * ey, jnp.sin(py) * ey  # (B, N, ny)
    tr = lambda a: jnp.swapaxes(a, 1, 2)  # noqa: E731
    re = _dot(tr(cy), cx) - _dot(tr(sny), snx)
    im = -(_dot(tr(sny), cx) + _dot(tr(cy), snx))
    return re, im


_project_ft_jit = jax.jit(project_ft)


def _axis_table(s2, freq, coord, scale=None):
    """One axis of a GMM's separable 3-D transform: (cos, sin) parts (N, n) of
    exp(−2π²σ²k²)·exp(−2πi·c·k) (× ``scale``), ``s2`` = −2π²σ² (N, 1)."""
    env = jnp.exp(s2 * jnp.square(freq)[None, :])
    if scale is not None:
        env = env * scale[:, None]
    ph = -TWO_PI * coord[:, None] * freq[None, :]
    return env * jnp.cos(ph), env * jnp.sin(ph)


def volume_ft(centers, amplitudes, sigmas, sz, sy, sx):
    """3-D transform of the GMM on a separable grid: (re, im) (nz, ny, nx); as the TF backend."""
    table = partial(_axis_table, -2.0 * math.pi ** 2 * jnp.square(sigmas)[:, None])

    zr, zi = table(sz, centers[:, 2], amplitudes)
    yr, yi = table(sy, centers[:, 1])
    xr, xi = table(sx, centers[:, 0])
    # zy (nz, ny, N) = tz ⊗ ty
    ar = zr.T[:, None, :] * yr.T[None] - zi.T[:, None, :] * yi.T[None]
    ai = zr.T[:, None, :] * yi.T[None] + zi.T[:, None, :] * yr.T[None]
    e = lambda a, b: jnp.einsum("zyn,nx->zyx", a, b, precision=HIGHEST)  # noqa: E731
    return e(ar, xr) - e(ai, xi), e(ar, xi) + e(ai, xr)


_volume_ft_jit = jax.jit(volume_ft)


def volume_ft_hermitian(centers, amplitudes, sigmas, sz, sy, sx):
    """:func:`volume_ft` from the k_z ≥ 0 rows of a symmetric z grid (sz = −kmax..kmax): G(±k_z) =
    A ± iB with A = Σ C·t_y·t_x, B = Σ S·t_y·t_x (C, S the cos/sin parts of t_z); one real
    (2K × N)·(N × 2·ny·nx) product.  As the TF backend's; equal up to float32 rounding."""
    nz = sz.shape[0]
    K = (nz + 1) // 2
    table = partial(_axis_table, -2.0 * math.pi ** 2 * jnp.square(sigmas)[:, None])

    cz, sz_ = table(sz[K - 1:], centers[:, 2], amplitudes)
    yr, yi = table(sy, centers[:, 1])
    xr, xi = table(sx, centers[:, 0])
    ny, nx = sy.shape[0], sx.shape[0]
    yx_r = (yr[:, :, None] * xr[:, None, :] - yi[:, :, None] * xi[:, None, :]).reshape(-1, ny * nx)
    yx_i = (yr[:, :, None] * xi[:, None, :] + yi[:, :, None] * xr[:, None, :]).reshape(-1, ny * nx)
    prod = jnp.matmul(jnp.concatenate([cz, sz_], axis=1).T, jnp.concatenate([yx_r, yx_i], axis=1),
                      precision=HIGHEST)  # (2K, 2·ny·nx)
    a_r, a_i = prod[:K, : ny * nx], prod[:K, ny * nx:]
    b_r, b_i = prod[K:, : ny * nx], prod[K:, ny * nx:]
    re = jnp.concatenate([(a_r + b_i)[1:][::-1], a_r - b_i], axis=0)  # rows k_z = −kmax..kmax
    im = jnp.concatenate([(a_i - b_r)[1:][::-1], a_i + b_r], axis=0)
    return re.reshape(nz, ny, nx), im.reshape(nz, ny, nx)


# --------------------------------------------------------------------------------------------
# the GMM fit's loss and gradients (same maths as the TF backend)


def _slab_sums(c, u, w, a0, s0, sz, sy, sx, mr, mi, sh, wg, nseg, transform=volume_ft):
    gr, gi = transform(c, a0 * jax.nn.softplus(u), s0 * jax.nn.softplus(w), sz, sy, sx)
    gr, gi = gr.reshape(-1), gi.reshape(-1)
    vals = jnp.stack([wg * (gr * mr.reshape(-1) + gi * mi.reshape(-1)), wg * (gr * gr + gi * gi)], axis=1)
    return jax.ops.segment_sum(vals, sh, nseg + 1)[:nseg]


def _fit_loss(S, S_mm, f0, amp_weight):
    S_gm, S_gg = S[:, 0], S[:, 1]
    idx = jnp.arange(S.shape[0])
    use = idx >= f0
    fsc_all = S_gm / jnp.sqrt(S_gg * S_mm + 1e-30)
    fsc_mean = jnp.sum(jnp.where(use, fsc_all, 0.0)) / jnp.sum(use)
    power = jnp.sum(jnp.square(jnp.sqrt(S_gg + 1e-30) - jnp.sqrt(S_mm))) / jnp.sum(S_mm)
    return 1.0 - fsc_mean + amp_weight * power, fsc_all


class _GmmFit:
    """Loss and gradients of the GMM-to-map fit (:mod:`gmmcore.gmm.build`) on the JAX device;
    parameters and slabs as in the TF backend (``p`` = [centres, u, w], float32)."""

    def __init__(self, prob, sigmas0, amp_weight, hermitian: bool = False):
        transform = volume_ft_hermitian if hermitian and prob.symmetric_z else volume_ft
        self.nseg = int(prob.nshells)
        self.f0 = int(prob.rmin - 1)
        self.sy, self.sx = _put(prob.s), _put(prob.sx)
        self.slabs = [(_put(sz), _put(mr), _put(mi), _put(sh, np.int32), _put(wg)) for sz, mr, mi, sh, wg in prob.slabs]
        self.S_mm = _put(prob.S_mm)
        self.aw = float(amp_weight)
        self.s0 = _put(sigmas0)
        nseg, f0, aw = self.nseg, self.f0, self.aw

        def sums(c, u, w, a0, s0, sy, sx, slab):
            sz, mr, mi, sh, wg = slab
            return _slab_sums(c, u, w, a0, s0, sz, sy, sx, mr, mi, sh, wg, nseg, transform)

        def loss1(c, u, w, a0, s0, sy, sx, slab, S_mm):
            return _fit_loss(sums(c, u, w, a0, s0, sy, sx, slab), S_mm, f0, aw)

        self._sums = jax.jit(sums)
        self._vg1 = jax.jit(jax.value_and_grad(loss1, argnums=(0, 1, 2), has_aux=True))
        self._loss_grad_S = jax.jit(jax.value_and_grad(lambda S, S_mm: _fit_loss(S, S_mm, f0, aw), has_aux=True))

        def vjp(c, u, w, a0, s0, sy, sx, slab, dS):
            return jax.grad(lambda c_, u_, w_: jnp.sum(dS * sums(c_, u_, w_, a0, s0, sy, sx, slab)),
                            argnums=(0, 1, 2))(c, u, w)

        self._vjp = jax.jit(vjp)

    def _args(self, p, a0):
        return (_put(p[0]), _put(p[1]), _put(p[2]), _put(a0), self.s0, self.sy, self.sx)

    def _total(self, args):
        tot = 0.0
        for slab in self.slabs:
            tot = tot + self._sums(*args, slab)
        return tot

    def sums(self, p, amplitudes0) -> np.ndarray:
        return np.asarray(self._total(self._args(p, amplitudes0)))

    def value_and_grad(self, p, amplitudes0):
        args = self._args(p, amplitudes0)
        if len(self.slabs) == 1:
            (loss, fsc), g = self._vg1(*args, self.slabs[0], self.S_mm)
            return float(loss), np.asarray(fsc)[self.f0:], [np.asarray(x) for x in g]
        (loss, fsc), dS = self._loss_grad_S(self._total(args), self.S_mm)
        acc = [0.0, 0.0, 0.0]
        for slab in self.slabs:
            g = self._vjp(*args, slab, dS)
            acc = [a_ + np.asarray(x) for a_, x in zip(acc, g)]
        return float(loss), np.asarray(fsc)[self.f0:], acc


# --------------------------------------------------------------------------------------------
# direct Fourier inversion on the device (the geometry and ``finish`` are gmmcore.reconstruct's)


class _DeviceInserter:
    """Inserts images into a :class:`gmmcore.reconstruct.Reconstructor`'s sums (row-major grid) on the
    JAX device: phase flip of raw images on their own grid, padding, transform, centring, |CTF|
    weights (the Reconstructor's ``ctf_formula``), trilinear scatter at A·R for every symmetry
    operator R.  Sums are float32 on the device (``sums`` hands them over as complex128/float64)."""

    def __init__(self, rec):
        self.P, self.n, self.apix, self.nx = rec.P, rec.box, rec.apix, rec.nx
        self.size = (self.P + 1) * (self.P + 1) * self.nx
        S = rec._sel.size
        self.batch = int(min(256, max(1, 2 ** int(np.floor(np.log2(max(1, 2 ** 22 // max(S, 1))))))))
        self.c = {"sel": _put(rec._sel, np.int32), "kx": _put(rec._kx), "ky": _put(rec._ky), "mult": _put(rec._mult),
                  "sym": _put(np.asarray(rec.sym_ops, np.float32).reshape(-1, 3, 3))}
        n = self.n
        ky, kx = np.fft.fftfreq(n) * n, np.arange(n // 2 + 1)
        self.c["fy_n"] = _put(np.broadcast_to(ky[:, None] / (n * self.apix), (n, n // 2 + 1)))
        self.c["fx_n"] = _put(np.broadcast_to(kx[None, :] / (n * self.apix), (n, n // 2 + 1)))
        self.acc = [_put(np.zeros(self.size, np.float32)) for _ in range(3)]
        self.ctf = rec.ctf_formula
        self._fns = {}

    def _fn(self, has_ctf: bool, flip: bool):
        key = (has_ctf, flip)
        if key not in self._fns:
            self._fns[key] = jax.jit(partial(_insert_batch, P=self.P, n=self.n, apix=self.apix, nx=self.nx,
                                             ctf=self.ctf, has_ctf=has_ctf, flip=flip),
                                     donate_argnums=(0,) if _on_accelerator() else ())
        return self._fns[key]

    def insert(self, images, rotations, origins_px, ctf_columns, phase_flipped: bool):
        has_ctf = ctf_columns is not None
        fn = self._fn(has_ctf, has_ctf and not phase_flipped)
        k, b = len(images), self.batch
        cols = np.zeros((k, 8)) if ctf_columns is None else np.broadcast_to(ctf_columns, (k, 8))
        for i0 in range(0, k, b):
            sl = slice(i0, min(k, i0 + b))
            m = sl.stop - sl.start
            im, R, o, cc = images[sl], rotations[sl], origins_px[sl], cols[sl]
            valid = np.ones(b, np.float32)
            if m < b:  # fixed batch: pad with zero-weight copies
                valid[m:] = 0.0
                pad = lambda x: np.concatenate([x, np.repeat(x[-1:], b - m, 0)])  # noqa: E731
                im, R, o, cc = pad(im), pad(R), pad(o), pad(cc)
            self.acc = fn(tuple(self.acc), _put(im), _put(R), _put(o), _put(cc), _put(valid), self.c)

    def add(self, data, weight):
        d = np.asarray(data).reshape(-1)
        self.acc = [self.acc[0] + _put(d.real), self.acc[1] + _put(d.imag), self.acc[2] + _put(weight)]

    def sums(self):
        re, im, w = (np.asarray(a, np.float64) for a in self.acc)
        return re + 1j * im, w


def _insert_batch(acc, images, rot, org, ctfc, valid, c, *, P, n, apix, nx, ctf, has_ctf, flip):
    b = images.shape[0]
    cols = [ctfc[:, i] for i in range(8)]
    if flip:  # raw images: multiply by sign(CTF) on their own grid first (as gmmcore.ctf.phase_flip)
        F = jnp.fft.rfft2(jnp.fft.ifftshift(images, axes=(-2, -1)))
        cn = ctf(*(x[:, None, None] for x in cols), c["fx_n"][None], c["fy_n"][None], xp=jnp)
        F = F * jnp.where(cn < 0, -1.0, 1.0)
        images = jnp.fft.fftshift(jnp.fft.irfft2(F, s=(n, n)), axes=(-2, -1)).astype(jnp.float32)
    o = P // 2 - n // 2
    padded = jnp.pad(images, ((0, 0), (o, P - n - o), (o, P - n - o)))
    F = jnp.fft.rfft2(jnp.fft.ifftshift(padded, axes=(-2, -1))).reshape(b, -1)
    F = jnp.take(F, c["sel"], axis=1)
    kx, ky = c["kx"], c["ky"]
    ph = (-2.0 * math.pi / P) * (org[:, 0:1] * kx + org[:, 1:2] * ky)
    F = F * lax.complex(jnp.cos(ph), jnp.sin(ph))
    if has_ctf:
        cv = jnp.abs(ctf(*(x[:, None] for x in cols), kx / (P * apix), ky / (P * apix), xp=jnp)).astype(jnp.float32)
    else:
        cv = jnp.ones((b, kx.shape[0]), jnp.float32)
    wmul = c["mult"][None, :] * valid[:, None]
    vals = F * (cv * wmul)
    wts = cv * cv * wmul
    vre, vim = jnp.real(vals), jnp.imag(vals)

    def one_operator(i, acc):
        A = jnp.einsum("bij,jk->bik", rot, c["sym"][i], precision=HIGHEST)
        qx = kx * A[:, 0, 0:1] + ky * A[:, 1, 0:1]
        sgn = jnp.where(qx < 0, -1.0, 1.0)
        qx = qx * sgn
        qy = (kx * A[:, 0, 1:2] + ky * A[:, 1, 1:2]) * sgn
        qz = (kx * A[:, 0, 2:3] + ky * A[:, 1, 2:3]) * sgn
        im_s = vim * sgn
        x0, y0, z0 = jnp.floor(qx), jnp.floor(qy), jnp.floor(qz)
        fx, fy, fz = qx - x0, qy - y0, qz - z0
        x0 = x0.astype(jnp.int32)
        y0 = (y0.astype(jnp.int32) + P // 2) * nx
        z0 = (z0.astype(jnp.int32) + P // 2) * ((P + 1) * nx)
        a_re, a_im, a_w = acc
        for dz, wz in ((0, 1.0 - fz), (1, fz)):
            for dy, wy in ((0, 1.0 - fy), (1, fy)):
                for dx, wx in ((0, 1.0 - fx), (1, fx)):
                    t = wz * wy * wx
                    idx = (z0 + dz * ((P + 1) * nx) + y0 + dy * nx + x0 + dx).reshape(-1)
                    a_re = a_re.at[idx].add((vre * t).reshape(-1))
                    a_im = a_im.at[idx].add((im_s * t).reshape(-1))
                    a_w = a_w.at[idx].add((wts * t).reshape(-1))
        return (a_re, a_im, a_w)

    return list(lax.fori_loop(0, c["sym"].shape[0], one_operator, tuple(acc)))


# --------------------------------------------------------------------------------------------
# the Backend


class JAXBackend:
    """JAX implementation of :class:`gmmcore.backend.Backend`."""

    name = "jax"

    def describe_devices(self, gpu=None, cpu_only=False, threads=None) -> str:
        if threads is not None:  # FFTs and reconstruction workers; XLA's own pools are set at start-up
            from ..resources import set_cpu_threads

            set_cpu_threads(threads)
        return configure_devices(gpu, cpu_only)

    def frc_rings(self, gmm, grid, particle_ft, rotations, origins_A, batch: int = 64) -> np.ndarray:
        obj = FRCObjective(gmm, grid, np.full(grid.nrings, 1.0 / grid.nrings, np.float32))
        prob = _FRCProblem(obj, PoseSettings())
        out = []
        k = len(rotations)
        for i0 in range(0, k, batch):
            sl = slice(i0, min(i0 + batch, k))
            n = sl.stop - sl.start
            pad = lambda x: np.concatenate([x, np.repeat(x[-1:], batch - n, 0)]) if n < batch else x  # noqa: E731
            pre, pim, ppow = prob.particle_rings(pad(np.asarray(particle_ft[sl])))
            f = _frc_batch(prob.consts, _put(pad(rotations[sl])), _put(pad(origins_A[sl])), _put(pre), _put(pim),
                           _put(ppow), prob.hl.K)
            out.append(np.asarray(f)[:n])
        return np.concatenate(out) if out else np.zeros((0, grid.nrings), np.float32)

    def pose_optimizer(self, objective, settings: PoseSettings) -> _PoseOptimizer:
        configure_devices()
        return _PoseOptimizer(objective, settings)

    def max_batch(self, gmm, grid, settings: PoseSettings, limit: int = 4096) -> int:
        """``--batch auto``: the largest pose batch fitting the device's free memory
        (:func:`gmmcore.backend.kernels.batch_for_memory`; on the CPU at most ``CPU_BATCH_CAP``)."""
        dev = _device()
        if dev.platform == "cpu":
            return batch_for_memory(len(gmm), grid, host_free_bytes(), limit=min(limit, CPU_BATCH_CAP))
        free = None
        try:
            stats = dev.memory_stats() or {}
            if "bytes_limit" in stats:
                free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        except Exception:  # noqa: BLE001 — a device without memory statistics
            free = None
        return batch_for_memory(len(gmm), grid, free, limit=limit)

    def project_images(self, gmm, rotations, origins_A, apix: float, box: int, batch: int = 64) -> np.ndarray:
        c, a, s = _put(gmm.centers), _put(gmm.amplitudes), _put(gmm.sigmas)
        fy, fx = full_grid_frequencies(box, apix)
        sy, sx = _put(fy), _put(fx)
        out = np.empty((len(rotations), box, box), np.float32)
        for i0 in range(0, len(rotations), batch):
            sl = slice(i0, i0 + batch)
            re, im = _project_ft_jit(c, a, s, _put(rotations[sl]), _put(origins_A[sl]), sy, sx)
            ft = np.asarray(re) + 1j * np.asarray(im)
            out[sl] = np.fft.fftshift(np.fft.irfft2(ft, s=(box, box)), axes=(-2, -1))
        return out

    def render_map(self, gmm, box: int, apix: float, z_chunk: int = 16) -> np.ndarray:
        c, a, s = _put(gmm.centers), _put(gmm.amplitudes), _put(gmm.sigmas)
        k = (np.fft.fftfreq(box) * box / (box * apix)).astype(np.float32)
        kx = (np.arange(box // 2 + 1) / (box * apix)).astype(np.float32)
        ft = np.empty((box, box, box // 2 + 1), np.complex64)
        ky, kxx = _put(k), _put(kx)
        for z0 in range(0, box, z_chunk):
            re, im = _volume_ft_jit(c, a, s, _put(k[z0:z0 + z_chunk]), ky, kxx)
            ft[z0:z0 + z_chunk] = np.asarray(re) + 1j * np.asarray(im)
        return np.fft.fftshift(np.fft.irfftn(ft, s=(box, box, box))).astype(np.float32)

    def gmm_fit(self, problem, sigmas0, amp_weight: float, hermitian: bool = False) -> _GmmFit:
        """The fit's loss and gradients; ``hermitian``: the transform from its k_z ≥ 0 half
        (:func:`volume_ft_hermitian`; results differ at float32 rounding — off by default)."""
        return _GmmFit(problem, sigmas0, amp_weight, hermitian)

    def device_reconstruction(self) -> bool:
        """Whether half maps are reconstructed on the JAX device: on a GPU by default;
        ``GMMCORE_DEVICE_RECONSTRUCTION=1``/``0`` forces it on/off (e.g. to test it on a CPU)."""
        env = os.environ.get("GMMCORE_DEVICE_RECONSTRUCTION", "")
        if env in ("0", "1"):
            return env == "1"
        return _on_accelerator()

    def insertion_kernel(self, rec):
        """The device inserter for a :class:`gmmcore.reconstruct.Reconstructor`, or None (NumPy inserts)."""
        return _DeviceInserter(rec) if self.device_reconstruction() else None


BACKEND = JAXBackend()
