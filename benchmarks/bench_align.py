"""Alignment-step benchmark: the separable cropped projector (gmm.align.PoseRefiner) against a
straightforward implementation of the same maths.

    .venv/bin/python benchmarks/bench_align.py            # full run, writes benchmarks/results/bench_align.json
    .venv/bin/python benchmarks/bench_align.py --quick    # smaller problem, a smoke test (~1 min)

Problem (defaults): box 128, apix 1.0 Å, 2,000 Gaussians, target resolution 4 Å (Fourier grid
cropped to 65 × 33, i.e. 2× Nyquist), FRC rings 25 Å → 4 Å, 10 Adam pose steps per particle
(backend.PoseSettings defaults), noisy particles made from the GMM at random poses, refinement
started 2° / 1 Å away from the truth.

"straightforward" = the same pose optimisation (the very same backend Adam pose loop, same
FRC rings, tf.GradientTape), but the projection evaluates every Gaussian at every pixel of the full,
uncropped rfft grid (box × box//2+1): B × N × pixels complex exponentials, no separability, no
cropping.  It is swapped in for backend.tf.project_ft inside its own worker process only.

Each (implementation, batch) is measured in a fresh subprocess: particle-steps per second (after
one warm-up batch that includes tracing), and peak resident memory (``ru_maxrss``) before and after
the refinement, and the current RSS sampled every 5 ms during warm-up + measured batches:
``working_MB`` = sampled peak − RSS just before the first batch = the alignment's working memory
on top of TensorFlow + data.  Data
are made once by the parent and handed to the workers in a temporary .npz.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _rss_mb() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


class RssSampler:
    """Samples the current resident set size every ``dt`` seconds in a thread; ``peak`` in MB."""

    def __init__(self, dt=0.005):
        import threading

        self.dt, self.peak, self._stop = dt, _rss_mb(), threading.Event()
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
        self.peak = max(self.peak, _rss_mb())
        return False


def _mem_available_mb() -> float:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


# --------------------------------------------------------------------------------------------
# the straightforward projector (same maths as backend.tf.project_ft, evaluated densely)


def dense_project_ft(centers, amplitudes, sigmas, rotations, origins, sy, sx):
    """Every Gaussian at every pixel of the (ny × nx) grid: B × N × ny·nx complex exponentials."""
    import tensorflow as tf

    ny, nx = tf.shape(sy)[0], tf.shape(sx)[0]
    gy = tf.reshape(tf.repeat(sy[:, None], nx, axis=1), [-1])  # (P,)
    gx = tf.reshape(tf.repeat(sx[None, :], ny, axis=0), [-1])
    mu = tf.einsum("bij,nj->bni", rotations[:, :2, :], centers) - origins[:, None, :]  # (B,N,2)
    env = amplitudes[:, None] * tf.exp(-2.0 * math.pi**2 * tf.square(sigmas)[:, None]
                                       * (tf.square(gx) + tf.square(gy))[None, :])  # (N,P)
    phase = -2.0 * math.pi * (mu[:, :, 0:1] * gx[None, None, :] + mu[:, :, 1:2] * gy[None, None, :])  # (B,N,P)
    re = tf.reduce_sum(env[None] * tf.cos(phase), axis=1)
    im = tf.reduce_sum(env[None] * tf.sin(phase), axis=1)
    B = tf.shape(rotations)[0]
    return tf.reshape(re, [B, ny, nx]), tf.reshape(im, [B, ny, nx])


class FullGrid:
    """The uncropped rfft grid (rows in FFT order) with the same FRC rings as a FourierGrid."""

    def __init__(self, cropped):
        box, apix = cropped.box, cropped.apix
        L = box * apix
        ky = np.fft.fftfreq(box) * box
        kx = np.arange(box // 2 + 1)
        self.box, self.apix, self.nrings = box, apix, cropped.nrings
        self.sy = (ky / L).astype(np.float32)
        self.sx = (kx / L).astype(np.float32)
        r = np.rint(np.hypot(ky[:, None], kx[None, :])).astype(np.int64)
        use = (r >= cropped.rmin) & (r <= cropped.kmax) & ~((kx[None, :] == 0) & (ky[:, None] < 0))
        self.pix = np.flatnonzero(use.ravel()).astype(np.int32)
        self.ring = (r.ravel()[self.pix] - cropped.rmin).astype(np.int32)
        assert len(self.pix) == len(cropped.pix)

    def image_ft(self, images):
        return np.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1))).astype(np.complex64)


# --------------------------------------------------------------------------------------------
# data


def make_data(path, box, apix, n_gauss, n_particles, seed=0):
    from scipy.spatial.transform import Rotation

    from gmmcore.gmm.model import GMM
    from gmmcore.gmm.render import project_images

    rng = np.random.default_rng(seed)
    radius = 0.3 * box * apix
    pts = rng.uniform(-1, 1, (4 * n_gauss, 3))
    pts = pts[(pts**2).sum(1) <= 1][:n_gauss] * [radius, 0.8 * radius, 0.65 * radius]
    gmm = GMM(pts, rng.uniform(0.5, 1.5, n_gauss), rng.uniform(1.0, 2.0, n_gauss))
    R_true = Rotation.random(n_particles, random_state=seed).as_matrix()
    o_true = rng.uniform(-3, 3, (n_particles, 2))
    imgs = project_images(gmm, R_true, o_true, apix, box)
    imgs += rng.normal(0, 1.0 * imgs.std(), imgs.shape).astype(np.float32)  # SNR ~ 1 per pixel over the box
    dR = Rotation.from_rotvec(rng.normal(0, math.radians(2.0) / math.sqrt(3), (n_particles, 3))).as_matrix()
    R0 = np.einsum("kij,kjl->kil", dR, R_true)
    o0 = o_true + rng.normal(0, 1.0 / math.sqrt(2), (n_particles, 2))
    np.savez(path, centers=gmm.centers, amplitudes=gmm.amplitudes, sigmas=gmm.sigmas, images=imgs,
             R_true=R_true, o_true=o_true, R0=R0, o0=o0)


# --------------------------------------------------------------------------------------------
# worker: one (implementation, batch) measurement in a fresh process


def worker(args) -> dict:
    import tensorflow as tf

    from gmmcore.backend import PoseSettings, get_backend
    from gmmcore.backend import tf as kernels
    from gmmcore.gmm.align import PoseRefiner
    from gmmcore.gmm.model import GMM
    from gmmcore.grids import FourierGrid

    device = get_backend().describe_devices()
    d = np.load(args.data)
    gmm = GMM(d["centers"], d["amplitudes"], d["sigmas"])
    box = d["images"].shape[-1]
    grid = FourierGrid(box, args.apix, args.resolution, args.minres)
    if args.impl == "separable":
        g = grid
    else:
        g = FullGrid(grid)
        kernels.project_ft = dense_project_ft  # this process only: the pose loop now projects densely
    B = args.batch
    n_meas = args.n_batches * B
    idx = np.arange(B + n_meas) % len(d["R0"])
    ft = g.image_ft(d["images"][idx])
    R0, o0 = d["R0"][idx], d["o0"][idx]
    settings = PoseSettings()
    ref = PoseRefiner(gmm, g, settings, batch=B)
    rss_setup = _maxrss_mb()
    rss_before = _rss_mb()
    load0 = os.getloadavg()[0]
    with RssSampler() as sampler:
        t = time.perf_counter()
        ref.refine(ft[:B], R0[:B], o0[:B])  # warm-up: tracing + first batch
        warm = time.perf_counter() - t
        t = time.perf_counter()
        R, o, s, s0 = ref.refine(ft[B:], R0[B:], o0[B:])
        sec = time.perf_counter() - t
    rss_peak = _maxrss_mb()
    # accuracy of the refinement (sanity: both implementations should agree)
    Rt = d["R_true"][idx][B:]
    cosang = np.clip((np.einsum("kij,kij->k", R, Rt) - 1) / 2, -1, 1)
    cos0 = np.clip((np.einsum("kij,kij->k", R0[B:], Rt) - 1) / 2, -1, 1)
    return {"impl": args.impl, "batch": B, "particles": int(n_meas), "steps": settings.steps,
            "seconds": sec, "warmup_seconds": warm,
            "particle_steps_per_s": n_meas * settings.steps / sec,
            "rss_setup_MB": rss_setup, "rss_peak_MB": rss_peak, "rss_delta_MB": rss_peak - rss_setup,
            "rss_before_MB": rss_before, "rss_sampled_peak_MB": sampler.peak,
            "working_MB": sampler.peak - rss_before,
            "load_average_1min": [load0, os.getloadavg()[0]],
            "grid": [int(len(g.sy)), int(len(g.sx))], "pixels_used": int(len(g.pix)),
            "angle_error_deg_before": float(np.degrees(np.arccos(cos0)).mean()),
            "angle_error_deg_after": float(np.degrees(np.arccos(cosang)).mean()),
            "score_initial_first": s0[:8].tolist(), "score_final_mean": float(np.mean(s)),
            "device": device, "tf_version": tf.__version__}


def _run_worker(data, impl, batch, batches, ns) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--impl", impl, "--batch", str(batch),
           "--n-batches", str(batches), "--data", data, "--apix", str(ns.apix), "--resolution", str(ns.resolution),
           "--minres", str(ns.minres)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"impl": impl, "batch": batch, "error": f"worker failed (rc {p.returncode}): {p.stderr.strip()[-500:]}"}


def machine() -> dict:
    import tensorflow as tf

    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = [g.name for g in tf.config.list_physical_devices("GPU")]
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "cores_usable": affinity, "gpus": gpus,
            "device": "GPU: " + ", ".join(gpus) if gpus else f"CPU ({affinity} cores)",
            "memory_total_MB": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20,
            "tensorflow": tf.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "load_average_at_start": list(os.getloadavg())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--apix", type=float, default=1.0)
    ap.add_argument("--ngauss", type=int, default=2000)
    ap.add_argument("--resolution", type=float, default=4.0)
    ap.add_argument("--minres", type=float, default=25.0)
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 16, 64], metavar="B")
    ap.add_argument("--sep-particles", type=int, default=512, help="particles measured per separable run")
    ap.add_argument("--dense-batches", type=int, default=1, help="batches measured per straightforward run")
    ap.add_argument("--dense-max-gb", type=float, default=8.0,
                    help="skip a straightforward run whose predicted memory exceeds this (or what the machine has free)")
    ap.add_argument("--quick", action="store_true", help="box 64, 500 Gaussians, fewer particles")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_align.json"))
    # worker mode
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--n-batches", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)
    if ns.worker:
        print(json.dumps(worker(ns)))
        return 0
    if ns.quick:
        ns.box, ns.ngauss, ns.sep_particles, ns.resolution = 64, 500, 128, 2 * 2 * ns.apix
        if ns.out == str(HERE / "results" / "bench_align.json"):
            ns.out = str(HERE / "results" / "bench_align_quick.json")

    from gmmcore.backend import PoseSettings
    from gmmcore.grids import FourierGrid

    grid = FourierGrid(ns.box, ns.apix, ns.resolution, ns.minres)
    results = {"problem": {"box": ns.box, "apix": ns.apix, "n_gaussians": ns.ngauss,
                           "resolution_A": ns.resolution, "minres_A": ns.minres,
                           "cropped_grid": list(grid.shape), "full_grid": [ns.box, ns.box // 2 + 1],
                           "frc_pixels": int(len(grid.pix)), "rings": grid.nrings,
                           "pose_steps": PoseSettings().steps},
               "machine": machine(), "runs": []}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data.npz")
        n_data = max(ns.sep_particles + max(ns.batches), 2 * max(ns.batches))
        make_data(data, ns.box, ns.apix, ns.ngauss, n_data)
        for B in ns.batches:
            nb = max(1, ns.sep_particles // B)
            print(f"separable       batch {B:3d}: {nb} batches ...", flush=True)
            results["runs"].append(_run_worker(data, "separable", B, nb, ns))
        dense_delta_per_particle = None
        for B in ns.batches:
            if dense_delta_per_particle is not None:
                need_mb = dense_delta_per_particle * B
                free_mb = _mem_available_mb() - 4096  # leave 4 GB to everything else on the machine
                if need_mb > min(ns.dense_max_gb * 1024, free_mb):
                    results["runs"].append({"impl": "straightforward", "batch": B, "skipped": True,
                                            "predicted_rss_delta_MB": need_mb,
                                            "reason": f"predicted ≈{need_mb / 1024:.1f} GB of working memory "
                                                      f"(> limit {min(ns.dense_max_gb * 1024, free_mb) / 1024:.1f} GB)"})
                    print(f"straightforward batch {B:3d}: skipped (≈{need_mb / 1024:.1f} GB)", flush=True)
                    continue
            print(f"straightforward batch {B:3d}: {ns.dense_batches} batch(es) ...", flush=True)
            r = _run_worker(data, "straightforward", B, ns.dense_batches, ns)
            results["runs"].append(r)
            if "rss_delta_MB" in r:
                dense_delta_per_particle = max(r["working_MB"], r["rss_delta_MB"], 1.0) / B
    results["seconds_total"] = time.perf_counter() - t_all

    # speed-ups and agreement
    by = {(r["impl"], r["batch"]): r for r in results["runs"] if "particle_steps_per_s" in r}
    speed = {}
    for B in ns.batches:
        s, d = by.get(("separable", B)), by.get(("straightforward", B))
        if s and d:
            speed[str(B)] = {"speedup": s["particle_steps_per_s"] / d["particle_steps_per_s"],
                             "working_memory_ratio": d["working_MB"] / max(s["working_MB"], 1.0),
                             "initial_score_max_abs_diff": float(np.max(np.abs(
                                 np.array(s["score_initial_first"]) - np.array(d["score_initial_first"]))))}
    sep = [r for r in by.values() if r["impl"] == "separable"]
    den = [r for r in by.values() if r["impl"] == "straightforward"]
    if sep and den:
        best_s = max(sep, key=lambda r: r["particle_steps_per_s"])
        best_d = max(den, key=lambda r: r["particle_steps_per_s"])
        speed["best_vs_best"] = {"speedup": best_s["particle_steps_per_s"] / best_d["particle_steps_per_s"],
                                 "separable_batch": best_s["batch"], "straightforward_batch": best_d["batch"]}
    results["speedup"] = speed

    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print()
    print(f"box {ns.box}, apix {ns.apix} Å, {ns.ngauss} Gaussians, resolution {ns.resolution} Å "
          f"(cropped grid {grid.shape[0]}×{grid.shape[1]} vs full {ns.box}×{ns.box // 2 + 1}), "
          f"{results['machine']['device']}, TF {results['machine']['tensorflow']}")
    print(f"{'implementation':<16}{'batch':>6}{'particle-steps/s':>18}{'peak RSS MB':>13}{'working MB':>12}"
          f"{'angle err °':>14}")
    for r in results["runs"]:
        if "particle_steps_per_s" in r:
            print(f"{r['impl']:<16}{r['batch']:>6}{r['particle_steps_per_s']:>18.1f}{r['rss_peak_MB']:>13.0f}"
                  f"{r['working_MB']:>12.0f}{r['angle_error_deg_before']:>7.2f}→{r['angle_error_deg_after']:.2f}")
        else:
            print(f"{r['impl']:<16}{r['batch']:>6}  {r.get('reason') or r.get('error')}")
    for k, v in speed.items():
        print(f"speed-up (batch {k}): {v['speedup']:.1f}×")
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
