"""Alignment-step benchmark: the product's pose optimiser against the reference implementation's
kernel, same problem, same run, same machine — and against the device's matrix-product limit.

    python3 benchmarks/bench_align.py --backends jax --cases i ii iii        # a GPU machine (JAX only)
    .venv/bin/python benchmarks/bench_align.py --backends tf jax --cases i   # this CPU machine

"reference" = the kernel of the paper's implementation (EMAN2 ``e2gmm_refine``; its 2025 JAX port),
re-implemented here from its published description: per image, separable complex 1-D tables
(N × ny and N × nx, complex64, Gaussian envelope and phase, rebuilt every step) and one complex
matrix product on the cropped Fourier grid (rows ky = −kmax..kmax, columns kx = 0..kmax — the
same grid as the product); FRC per ring through a dense (pixels × rings) ring-indicator product,
mean over the rings 25 Å → target; Adam on the raw Euler angles (ZYZ) and shifts; 10 steps (the
paper) or 50 (the JAX port).  Compiled the same way as the product (whole step loop in one
function: ``lax.scan`` under ``jax.jit``; ``tf.function``), so it is the strongest form of that kernel.

"product" = ``backend.pose_optimizer`` (:mod:`gmmcore.backend`): the Hermitian half-grid product,
ring-segment FRC, rotation-vector Adam with the pose prior, 10 steps; NumPy in and out per batch
(host↔device transfers and the particle ring layout are included in its time).

Cases: (i) N 2,000, box 128, 1.5 Å/px, 4 Å; (ii) the paper's GPCR: N 7,374, box 240, 0.86 Å/px, 3 Å;
(iii) the paper's ABCG2: N 15,174, box 256, 0.84 Å/px, 3 Å; (tiny: N 50, box 32 — a smoke test).
Batches: sizes, or ``auto`` — the batch ``--batch auto`` takes (``backend.max_batch`` of the first
backend), timed as its own point (``"auto": true`` in its records, key ``auto`` in the ratios).
Figures per (implementation, case, batch): particle-steps/s from the median call time (after a
warm-up call that includes compilation, reported as ``warmup_s``; the implementations of a batch
size — or, with ``--interleave-batches``, of all sizes — are timed in interleaved rounds, so they share
the machine's load), particles/s at the
implementation's steps, memory (JAX:
XLA's memory analysis of the compiled batch function — arguments + outputs + temporaries — and on
GPUs the device's peak bytes in use; TF: sampled growth of the resident set), mean angle error vs
the truth before/after (a sanity check).  ``limit``: the device's measured float32 (and TF32) matrix
throughput divided by each kernel's projector FLOPs per particle-step (forward + two backward
products): the speed no implementation of that arithmetic can beat.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CASES = {
    "tiny": dict(n_gauss=50, box=32, apix=2.0, resolution=8.0),
    "i": dict(n_gauss=2000, box=128, apix=1.5, resolution=4.0),
    "ii": dict(n_gauss=7374, box=240, apix=0.86, resolution=3.0),
    "iii": dict(n_gauss=15174, box=256, apix=0.84, resolution=3.0),
}
MINRES = 25.0
POOL = 64  # distinct particles per case (tiled to fill large batches; speed does not depend on content)


# --------------------------------------------------------------------------------------------
# problem


def make_case(name, backend_name, seed=0):
    """GMM (a random compact blob), grid, a pool of noisy particle transforms at known poses, start poses."""
    from gmmcore.backend import get_backend
    from gmmcore.geometry import perturb_rotations, random_rotations
    from gmmcore.gmm.model import GMM
    from gmmcore.grids import FourierGrid

    c = CASES[name]
    rng = np.random.default_rng(seed)
    n, box, apix = c["n_gauss"], c["box"], c["apix"]
    radius = 0.3 * box * apix
    pts = rng.uniform(-1, 1, (4 * n, 3))
    pts = pts[(pts ** 2).sum(1) <= 1][:n] * [radius, 0.8 * radius, 0.65 * radius]
    gmm = GMM(pts, rng.uniform(0.5, 1.5, n), rng.uniform(0.8, 1.6, n) * c["resolution"] / 3.0)
    grid = FourierGrid(box, apix, c["resolution"], MINRES)
    R = random_rotations(POOL, rng)
    o = rng.uniform(-3, 3, (POOL, 2))
    imgs = get_backend(backend_name).project_images(gmm, R, o, apix, box, batch=16)
    imgs += rng.normal(0, imgs.std(), imgs.shape).astype(np.float32)
    ft = grid.image_ft(imgs)
    R0 = perturb_rotations(R, 2.0, rng)
    o0 = o + rng.normal(0, 1.0 / math.sqrt(2), o.shape)
    return {"gmm": gmm, "grid": grid, "ft": ft, "R": R, "o": o, "R0": R0, "o0": o0}


def tile(x, B):
    reps = -(-B // len(x))
    return np.concatenate([x] * reps)[:B]


def angle_error(Ra, Rb):
    from gmmcore.geometry import angular_distance

    u, _, vt = np.linalg.svd(np.asarray(Ra, np.float64))
    return float(angular_distance(u @ vt, Rb).mean())


# --------------------------------------------------------------------------------------------
# the reference kernel (re-implemented from its published description)


def euler_zyz(xp, rot, tilt, psi):
    """RELION A = Rz(psi)·Ry(tilt)·Rz(rot) from angles in radians, (B, 3, 3), array module ``xp``."""
    ca, sa, cb, sb, cg, sg = xp.cos(rot), xp.sin(rot), xp.cos(tilt), xp.sin(tilt), xp.cos(psi), xp.sin(psi)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [[cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb]]
    return xp.stack([xp.stack(r, -1) for r in rows], -2)


def matrix_to_euler_np(A):
    """Inverse of :func:`euler_zyz` (NumPy, radians)."""
    from gmmcore.geometry import matrix_to_euler

    return np.radians(matrix_to_euler(np.asarray(A, np.float64)))


def reference_inputs(case, grid):
    """Ring-indicator tensor (pixels × rings) over the cropped grid and its frequencies."""
    ny, nx = grid.shape
    ind = np.zeros((ny * nx, grid.nrings), np.float32)
    ind[grid.pix, grid.ring] = 1.0
    return ind


def reference_jax(gmm, grid, steps, lr_rad, lr_A):
    import jax
    import jax.numpy as jnp
    from jax import lax

    H = lax.Precision.HIGHEST
    ind = jnp.asarray(reference_inputs(None, grid))
    c, a, s = (jnp.asarray(x) for x in (gmm.centers, gmm.amplitudes, gmm.sigmas))
    sy, sx = jnp.asarray(grid.sy), jnp.asarray(grid.sx)
    ny, nx = grid.shape
    lr = jnp.asarray([lr_rad] * 3 + [lr_A] * 2, jnp.float32)

    def loss(p, pre, pim):
        A = euler_zyz(jnp, p[:, 0], p[:, 1], p[:, 2])
        mu = jnp.einsum("bij,nj->bni", A[:, :2, :], c, precision=H) - p[:, None, 3:]
        env = -2.0 * math.pi ** 2 * jnp.square(s)[:, None]
        tx = jnp.exp(env * jnp.square(sx)) * jnp.exp(-2j * math.pi * mu[:, :, 0:1] * sx)  # (B, N, nx) complex
        ty = (a[:, None] * jnp.exp(env * jnp.square(sy))) * jnp.exp(-2j * math.pi * mu[:, :, 1:2] * sy)  # (B, N, ny)
        img = jnp.einsum("bny,bnx->byx", ty, tx, precision=H).reshape(-1, ny * nx)
        mr, mi = jnp.real(img), jnp.imag(img)
        smp = jnp.matmul(mr * pre + mi * pim, ind, precision=H)
        smm = jnp.matmul(mr * mr + mi * mi, ind, precision=H)
        spp = jnp.matmul(pre * pre + pim * pim, ind, precision=H)
        frc = jnp.mean(smp / jnp.sqrt(smm * spp + 1e-30), axis=1)
        return -jnp.sum(frc), frc

    g = jax.value_and_grad(loss, has_aux=True)

    def run(p0, pre, pim):
        def step(carry, t):
            p, m, v = carry
            (_, f), gr = g(p, pre, pim)
            m = 0.9 * m + 0.1 * gr
            v = 0.999 * v + 0.001 * gr * gr
            p = p - lr * (m / (1 - 0.9 ** t)) / (jnp.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
            return (p, m, v), f

        z = jnp.zeros_like(p0)
        (p, _, _), f = lax.scan(step, (p0, z, z), jnp.arange(1, steps + 1, dtype=jnp.float32))
        return p, f[-1]

    fn = jax.jit(run)

    def call(R0, o0, ft):
        eul = matrix_to_euler_np(R0)
        p0 = np.concatenate([eul, o0], axis=1).astype(np.float32)
        flat = ft.reshape(len(ft), -1)
        p, f = fn(jnp.asarray(p0), jnp.asarray(flat.real), jnp.asarray(flat.imag))
        p = np.asarray(p)
        return np.asarray(euler_zyz(np, p[:, 0], p[:, 1], p[:, 2])), p[:, 3:]

    def lowered(R0, o0, ft):
        flat = ft.reshape(len(ft), -1)
        p0 = np.zeros((len(ft), 5), np.float32)
        return fn.lower(jnp.asarray(p0), jnp.asarray(flat.real), jnp.asarray(flat.imag))

    return call, lowered


def reference_tf(gmm, grid, steps, lr_rad, lr_A):
    import tensorflow as tf

    ind = tf.constant(reference_inputs(None, grid))
    c, a, s = (tf.constant(x) for x in (gmm.centers, gmm.amplitudes, gmm.sigmas))
    sy, sx = tf.constant(grid.sy), tf.constant(grid.sx)
    ny, nx = grid.shape
    lr = tf.constant([lr_rad] * 3 + [lr_A] * 2, tf.float32)
    cplx = lambda re, im: tf.complex(re, im)  # noqa: E731

    def loss(p, pre, pim):
        A = euler_zyz(tf, p[:, 0], p[:, 1], p[:, 2])
        mu = tf.einsum("bij,nj->bni", A[:, :2, :], c) - p[:, None, 3:]
        env = -2.0 * math.pi ** 2 * tf.square(s)[:, None]
        phx = -2.0 * math.pi * mu[:, :, 0:1] * sx
        phy = -2.0 * math.pi * mu[:, :, 1:2] * sy
        ex = tf.exp(env * tf.square(sx))
        ey = a[:, None] * tf.exp(env * tf.square(sy))
        tx = cplx(ex * tf.cos(phx), ex * tf.sin(phx))
        ty = cplx(ey * tf.cos(phy), ey * tf.sin(phy))
        img = tf.reshape(tf.matmul(ty, tx, transpose_a=True), [-1, ny * nx])
        mr, mi = tf.math.real(img), tf.math.imag(img)
        smp = tf.matmul(mr * pre + mi * pim, ind)
        smm = tf.matmul(mr * mr + mi * mi, ind)
        spp = tf.matmul(pre * pre + pim * pim, ind)
        frc = tf.reduce_mean(smp / tf.sqrt(smm * spp + 1e-30), axis=1)
        return -tf.reduce_sum(frc), frc

    @tf.function
    def run(p, pre, pim):
        m = tf.zeros_like(p)
        v = tf.zeros_like(p)
        for t in range(1, steps + 1):
            with tf.GradientTape() as tape:
                tape.watch(p)
                lo, f = loss(p, pre, pim)
            gr = tape.gradient(lo, p)
            m = 0.9 * m + 0.1 * gr
            v = 0.999 * v + 0.001 * gr * gr
            p = p - lr * (m / (1 - 0.9 ** t)) / (tf.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        return p, f

    def call(R0, o0, ft):
        eul = matrix_to_euler_np(R0)
        p0 = np.concatenate([eul, o0], axis=1).astype(np.float32)
        flat = ft.reshape(len(ft), -1)
        p, _ = run(tf.constant(p0), tf.constant(flat.real), tf.constant(flat.imag))
        p = p.numpy()
        return euler_zyz(np, p[:, 0], p[:, 1], p[:, 2]), p[:, 3:]

    return call, None


# --------------------------------------------------------------------------------------------
# the product


def product(backend_name, gmm, grid, matmul=None):
    from gmmcore.backend import FRCObjective, PoseSettings, get_backend

    be = get_backend(backend_name)
    be.describe_devices()
    if backend_name == "jax":  # the projector product's precision (gmmcore.backend.jax.MATMUL_MODES)
        from gmmcore.backend import jax as bj

        bj._Devices.matmul = matmul or bj._Devices.default
    settings = PoseSettings(prior_angle_deg=3.0, prior_shift_px=1.0)
    w = np.full(grid.nrings, 1.0 / grid.nrings, np.float32)
    opt = be.pose_optimizer(FRCObjective(gmm, grid, w, 100.0), settings)
    auto = be.max_batch(gmm, grid, settings)

    def call(R0, o0, ft):
        R, o, _, _ = opt(R0, o0, particle_ft=ft, prior_rotations=R0, prior_origins_A=o0)
        return R, o

    def lowered(R0, o0, ft):  # the compiled batch function (JAX), for XLA's memory analysis
        import jax.numpy as jnp

        if opt.micro_batch:  # what runs on a CPU: micro-batches
            R0, o0, ft = R0[:opt.micro_batch], o0[:opt.micro_batch], ft[:opt.micro_batch]
        pre, pim, ppow = opt.prob.particle_rings(ft)
        data = tuple(jnp.asarray(x, jnp.float32) for x in (pre, pim, ppow, R0, o0))
        return opt._run.lower(opt.prob.consts, jnp.asarray(R0, jnp.float32), jnp.asarray(o0, jnp.float32), data)

    return call, (lowered if backend_name == "jax" else None), settings.steps, auto


# --------------------------------------------------------------------------------------------
# measurement


def _rss_mb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


class RssSampler:
    def __init__(self, dt=0.005):
        self.dt, self.start, self.peak, self._stop = dt, _rss_mb(), _rss_mb(), threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            self._stop.wait(self.dt)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        return False


def jax_device():
    import jax

    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        return jax.devices("cpu")[0]


def prepare_point(call, lowered, steps, data, B, family):
    """Warm-up (compilation) and memory of one (implementation, batch); returns the record and
    the timed closure."""
    R0, o0, ft, Rt = tile(data["R0"], B), tile(data["o0"], B), tile(data["ft"], B), tile(data["R"], B)
    rec = {"batch": B, "steps": steps, "times": []}
    if lowered is not None:
        try:
            ma = lowered(R0, o0, ft).compile().memory_analysis()
            if ma is not None:
                tot = ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
                rec["compiled_MB"] = tot / 2 ** 20
                rec["compiled_temp_MB"] = ma.temp_size_in_bytes / 2 ** 20
        except Exception as exc:  # noqa: BLE001 — memory analysis is best effort
            rec["compiled_MB_error"] = str(exc)[:200]
    with RssSampler() as rss:
        t = time.perf_counter()
        R, o = call(R0, o0, ft)
        rec["warmup_s"] = time.perf_counter() - t
    rec["rss_growth_MB"] = rss.peak - rss.start
    rec["angle_error_deg_before"] = angle_error(R0, Rt)
    rec["angle_error_deg_after"] = angle_error(R, Rt)

    def timed():
        t0 = time.perf_counter()
        call(R0, o0, ft)
        rec["times"].append(time.perf_counter() - t0)

    return rec, timed


def finish_point(rec, family):
    """Speeds from the median call time of the interleaved rounds (and the best, for reference)."""
    ts = np.asarray(rec["times"])
    med, best = float(np.median(ts)), float(ts.min())
    B, steps = rec["batch"], rec["steps"]
    rec.update({"calls": len(ts), "seconds_median": med, "particle_steps_per_s": B * steps / med,
                "particles_per_s": B / med, "particle_steps_per_s_best": B * steps / best,
                "particle_steps_per_s_worst": B * steps / float(ts.max())})
    if family == "jax":
        try:
            st = jax_device().memory_stats() or {}
            if "peak_bytes_in_use" in st:
                rec["device_peak_MB_so_far"] = st["peak_bytes_in_use"] / 2 ** 20
        except Exception:  # noqa: BLE001
            pass
    return rec


def matmul_throughput(family, seconds=1.0):
    """Measured matrix-product FLOP/s of the device: {"fp32": ..., "tf32": ...} (tf32 on GPUs only)."""
    out = {}
    if family == "jax":
        import jax
        import jax.numpy as jnp
        from jax import lax

        dev = jax_device()
        n = 4096 if dev.platform == "gpu" else 1024
        a = jax.device_put(jnp.ones((n, n), jnp.float32), dev)
        modes = {"fp32": lax.Precision.HIGHEST}
        if dev.platform == "gpu":
            modes["tf32"] = lax.Precision.DEFAULT
        for k, prec in modes.items():
            f = jax.jit(lambda x, p=prec: jnp.matmul(x, x, precision=p))
            f(a).block_until_ready()
            m, t = 0, time.perf_counter()
            while time.perf_counter() - t < seconds or m < 3:
                f(a).block_until_ready()
                m += 1
            out[k] = 2.0 * n ** 3 * m / (time.perf_counter() - t)
    else:
        import tensorflow as tf

        n = 1024
        a = tf.ones((n, n))
        f = tf.function(lambda x: tf.matmul(x, x))
        f(a).numpy()
        m, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds or m < 3:
            f(a).numpy()
            m += 1
        out["fp32"] = 2.0 * n ** 3 * m / (time.perf_counter() - t)
    return out


def auto_vs_batches(runs):
    """``--batch auto`` against each fixed batch of the same implementation, from the calls timed in
    the same interleaved rounds (``--interleave-batches``): per round the auto point's
    particle-steps/s ÷ the batch's → {"case: impl": {batch: [min, median, max] over the rounds}}."""
    out = {}
    ok = [r for r in runs if "times" in r]
    for a in (r for r in ok if r.get("auto") and r["impl"].startswith("product")):
        speed = lambda r: np.asarray([r["batch"] * r["steps"] / t for t in r["times"]])  # noqa: E731
        sa = speed(a)
        for r in ok:
            if r["impl"] == a["impl"] and r["case"] == a["case"] and not r.get("auto") and len(r["times"]) == len(sa):
                q = sa / speed(r)
                out.setdefault(f"{a['case']}: {a['impl']}", {})[str(r["batch"])] = [
                    float(q.min()), float(np.median(q)), float(q.max())]
    return out


def flops_per_particle_step(kind, grid, n_gauss):
    """Projector FLOPs (forward product + two backward products of the same size)."""
    K = grid.kmax + 1
    ny, nx = grid.shape
    if kind == "product":
        return 3 * 2.0 * (2 * K) * (2 * K) * n_gauss
    return 3 * 8.0 * ny * nx * n_gauss  # complex (ny × N)·(N × nx): 4 real products


def machine():
    info = {"python": platform.python_version(), "numpy": np.__version__, "platform": platform.platform(),
            "cores": os.cpu_count(), "load_average_at_start": list(os.getloadavg())}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", nargs="+", default=["jax"], choices=["jax", "tf"])
    ap.add_argument("--cases", nargs="+", default=["i"], choices=list(CASES))
    ap.add_argument("--batches", nargs="+", default=["16", "32", "64", "128", "256", "512", "1024"],
                    help="batch sizes, or auto (what --batch auto takes)")
    ap.add_argument("--ref-steps", nargs="*", type=int, default=[10, 50],
                    help="steps of the reference kernel's runs (none: the product alone)")
    ap.add_argument("--ref-steps-batches", nargs="+", type=int, default=None,
                    help="batches at which the reference runs with steps other than 10 (default: all)")
    ap.add_argument("--matmul", nargs="+", default=[],
                    help="extra JAX product runs with these projector precisions (fp32, tf32, tf32x3)")
    ap.add_argument("--matmul-batches", nargs="+", type=int, default=None,
                    help="batches for the extra --matmul runs (default: all)")
    ap.add_argument("--interleave-batches", action="store_true",
                    help="time all batch sizes in the same interleaved rounds (compare batches under one load)")
    ap.add_argument("--seconds", type=float, default=2.0, help="time measured per point (after warm-up)")
    ap.add_argument("--budget", type=float, default=0.0, help="stop starting new points after this many seconds")
    ap.add_argument("--max-mb", type=float, default=0.0,
                    help="skip a point whose predicted memory exceeds this (default: 60%% of free memory)")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_align.json"))
    ns = ap.parse_args(argv)
    t_all = time.perf_counter()
    res = {"machine": machine(), "cases": {}, "runs": [], "limits": {}}
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        res["seconds_total"] = time.perf_counter() - t_all
        out.write_text(json.dumps(res, indent=1))

    for fam in ns.backends:
        if fam == "jax":
            import jax

            res["machine"]["jax"] = jax.__version__
            res["machine"]["jax_device"] = str(jax_device())
        else:
            import tensorflow as tf

            res["machine"]["tensorflow"] = tf.__version__
        res["machine"][f"matmul_flops_{fam}"] = matmul_throughput(fam)
    from gmmcore.backend.kernels import bytes_per_particle, host_free_bytes

    for case in ns.cases:
        data = make_case(case, ns.backends[0])
        gmm, grid = data["gmm"], data["grid"]
        K = grid.kmax + 1
        res["cases"][case] = {**CASES[case], "grid": list(grid.shape), "hermitian_K": K, "rings": grid.nrings,
                              "frc_pixels": int(len(grid.pix))}
        lr_rad, lr_A = math.radians(0.5), 0.25 * grid.apix
        impls = []
        for fam in ns.backends:
            impls.append((f"product-{fam}", fam, "product", None))
            if fam == "jax":
                impls += [(f"product-jax-{m}", fam, "product", m) for m in ns.matmul]
            for st in ns.ref_steps:
                impls.append((f"reference-{fam}" + ("" if st == 10 else f"-{st}steps"), fam, "reference", st))
        built = {}
        for impl, fam, kind, st in impls:
            if kind == "product":
                call, lowered, steps, auto = product(fam, gmm, grid, st)
                res["cases"][case].setdefault("auto_batch", {})[impl] = auto
                if fam == "jax":
                    from gmmcore.backend import jax as bj

                    res["cases"][case].setdefault("matmul", {})[impl] = bj._Devices.matmul
            else:
                make = reference_jax if fam == "jax" else reference_tf
                call, lowered = make(gmm, grid, st, lr_rad, lr_A)
                steps = st
            fl = flops_per_particle_step(kind, grid, len(gmm))
            lim = {k: v / fl for k, v in res["machine"][f"matmul_flops_{fam}"].items()}
            res["limits"][f"{case}/{impl}"] = {"flops_per_particle_step": fl, "particle_steps_per_s_limit": lim}
            built[impl] = (call, lowered, steps, fam, kind, st)
        auto_B = res["cases"][case]["auto_batch"][f"product-{ns.backends[0]}"]
        # interleaved rounds per batch size, or over all of them (--interleave-batches)
        for group in ([ns.batches] if ns.interleave_batches else [[b] for b in ns.batches]):
            points = []  # (impl, rec, timed, fam, label)
            for label, (impl, (call, lowered, steps, fam, kind, st)) in ((lb, it) for lb in group
                                                                          for it in built.items()):
                B = auto_B if label == "auto" else int(label)
                if ns.ref_steps_batches and kind == "reference" and st != 10 and B not in ns.ref_steps_batches:
                    continue
                if ns.matmul_batches and kind == "product" and st and B not in ns.matmul_batches:
                    continue
                if ns.budget and time.perf_counter() - t_all > ns.budget:
                    res["runs"].append({"case": case, "impl": impl, "batch": B, "skipped": "time budget"})
                    continue
                per_mb = bytes_per_particle(len(gmm), grid) / 2 ** 20 * (2.0 if kind == "reference" else 1.0)
                free = host_free_bytes()
                if fam == "jax" and jax_device().platform != "cpu":
                    st_ = jax_device().memory_stats() or {}
                    free = (st_.get("bytes_limit", 0) - st_.get("bytes_in_use", 0)) or None
                cap = ns.max_mb or (0.6 * free / 2 ** 20 if free else float("inf"))
                if per_mb * B > cap:
                    res["runs"].append({"case": case, "impl": impl, "batch": B, "skipped": True,
                                        "reason": f"predicted {per_mb * B:.0f} MB > {cap:.0f} MB"})
                    continue
                try:
                    rec, timed = prepare_point(call, lowered, steps, data, B, fam)
                    if label == "auto":
                        rec["auto"] = True
                    points.append((impl, rec, timed, fam, label))
                except Exception as exc:  # noqa: BLE001 — e.g. out of memory: record and go on
                    res["runs"].append({"case": case, "impl": impl, "batch": B,
                                        "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            # interleaved rounds: every implementation sees the same machine load
            t0 = time.perf_counter()
            rounds = 0
            while points and (rounds < 3 or (time.perf_counter() - t0 < ns.seconds * len(points) and rounds < 50)):
                for _, rec, timed, _, _ in points:
                    timed()
                rounds += 1
            for impl, rec, _, fam, label in points:
                r = finish_point(rec, fam)
                r.update({"case": case, "impl": impl})
                res["runs"].append(r)
                print(f"case {case:>4} {impl:<24} batch {r['batch']:5d}{'*' if label == 'auto' else ' '}: "
                      f"{r['particle_steps_per_s']:10.1f} particle-steps/s, "
                      f"{r['particles_per_s']:8.1f} particles/s, warm-up {r['warmup_s']:.1f} s, angle "
                      f"{r['angle_error_deg_before']:.2f}→{r['angle_error_deg_after']:.2f}°"
                      + (f", {r['compiled_MB']:.0f} MB" if "compiled_MB" in r else ""), flush=True)
            save()
    # ratios: product ÷ reference (10 steps) at equal batch, and best vs best, per case and family
    ratios, rounds = {}, {}
    ok = [r for r in res["runs"] if "particle_steps_per_s" in r]
    for case in ns.cases:
        for fam in ns.backends:
            for ref_fam in ns.backends:
                lab = lambda r: "auto" if r.get("auto") else r["batch"]  # noqa: E731
                P = {lab(r): r for r in ok if r["case"] == case and r["impl"] == f"product-{fam}"}
                Q = {lab(r): r for r in ok if r["case"] == case and r["impl"] == f"reference-{ref_fam}"}
                if not P or not Q:
                    continue
                key = f"{case}: product-{fam} / reference-{ref_fam}"
                ratios[key] = {str(B): P[B]["particle_steps_per_s"] / Q[B]["particle_steps_per_s"] for B in P if B in Q}
                # per interleaved round (product and reference timed back to back): the spread
                rounds[key] = {str(B): sorted(P[B]["steps"] * q / (Q[B]["steps"] * p)
                                              for p, q in zip(P[B]["times"], Q[B]["times"])) for B in P if B in Q}
                bp = max(P.values(), key=lambda r: r["particle_steps_per_s"])
                bq = max(Q.values(), key=lambda r: r["particle_steps_per_s"])
                ratios[key]["best_vs_best"] = bp["particle_steps_per_s"] / bq["particle_steps_per_s"]
    res["ratios"] = ratios
    res["ratios_per_round"] = rounds
    if ns.interleave_batches:
        res["auto_vs_batches"] = auto_vs_batches(res["runs"])
    save()
    for k, v in ratios.items():
        print(k, {b: round(x, 2) for b, x in v.items()})
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
