"""Checks that need the GPU itself (JAX only, no TensorFlow, no pytest): run by gpu_run.sh.

1. Projector precision on real tensor cores: refined poses with the product in TF32 and TF32 ×3
   against full float32 (case ii's grid and N, 256 particles): angle and shift differences.
2. Device reconstruction against the NumPy reconstructor (raw images, astigmatic CTFs, D2): CC.
3. GMM fit on the device: loss/gradients against the CPU (JAX on the CPU device, same code).

Writes benchmarks/results/gpu_checks.json; exits 1 when a check fails its bound.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> int:
    import jax

    small_run = "--small" in sys.argv  # a CPU smoke test of this script (tiny sizes)
    from gmmcore.backend import FRCObjective, PoseSettings, get_backend
    from gmmcore.backend import jax as bj
    from gmmcore.geometry import angular_distance, perturb_rotations, random_rotations
    from gmmcore.gmm.align import orthonormalise
    from gmmcore.gmm.model import GMM
    from gmmcore.grids import FourierGrid

    be = get_backend("jax")
    out = {"device": be.describe_devices(), "jax": jax.__version__, "checks": {}}
    ok = True
    rng = np.random.default_rng(0)

    # 1. precision of the projector product
    t = time.perf_counter()
    n, box, apix, res = (300, 48, 1.5, 6.0) if small_run else (7374, 240, 0.86, 3.0)
    radius = 0.3 * box * apix
    pts = rng.uniform(-1, 1, (4 * n, 3))
    pts = pts[(pts ** 2).sum(1) <= 1][:n] * [radius, 0.8 * radius, 0.65 * radius]
    gmm = GMM(pts, rng.uniform(0.5, 1.5, n), rng.uniform(0.8, 1.6, n))
    grid = FourierGrid(box, apix, res, 25.0)
    k = 16 if small_run else 256
    R, o = random_rotations(k, rng), rng.uniform(-3, 3, (k, 2))
    imgs = be.project_images(gmm, R, o, apix, box, batch=32)
    imgs += rng.normal(0, imgs.std(), imgs.shape).astype(np.float32)
    ft = grid.image_ft(imgs)
    R0 = perturb_rotations(R, 2.0, rng)
    obj = FRCObjective(gmm, grid, np.full(grid.nrings, 1.0 / grid.nrings, np.float32))
    poses = {}
    for mode in ("fp32", "tf32", "tf32x3"):
        bj._Devices.matmul = mode + ("-emulated" if small_run and mode != "fp32" else "")
        Rm, om, sm, _ = be.pose_optimizer(obj, PoseSettings())(R0, o, particle_ft=ft, prior_rotations=R0,
                                                                 prior_origins_A=o)
        poses[mode] = (orthonormalise(Rm.astype(np.float64)), om, sm)
    bj._Devices.matmul = bj._Devices.default
    prec = {}
    for mode in ("tf32", "tf32x3"):
        d = angular_distance(poses["fp32"][0], poses[mode][0])
        prec[mode] = {"angle_mean_deg": float(d.mean()), "angle_max_deg": float(d.max()),
                      "shift_max_A": float(np.abs(poses["fp32"][1] - poses[mode][1]).max()),
                      "score_max_abs": float(np.abs(poses["fp32"][2] - poses[mode][2]).max())}
    prec["moved_deg"] = float(angular_distance(poses["fp32"][0], R0).mean())
    prec["seconds"] = time.perf_counter() - t
    ok &= prec["tf32x3"]["angle_max_deg"] < 1e-3  # the default; plain TF32 is reported, not required
    out["checks"]["projector_precision"] = prec
    print("precision", json.dumps(prec), flush=True)

    # 2. device reconstruction
    from gmmcore.ctf import apply_ctf
    from gmmcore.particles import CTFParams
    from gmmcore.reconstruct import Reconstructor

    t = time.perf_counter()
    os.environ["GMMCORE_DEVICE_RECONSTRUCTION"] = "1"
    k, box, apix = (100, 32, 2.0) if small_run else (600, 96, 1.5)
    small = GMM(rng.normal(size=(500, 3)) * [14, 10, 8], rng.uniform(0.5, 1.5, 500), np.full(500, 2.0))
    R, o = random_rotations(k, rng), rng.normal(size=(k, 2)) * 2
    ctf = CTFParams(rng.uniform(8000, 20000, k), rng.uniform(8000, 20000, k), rng.uniform(0, 180, k),
                    np.full(k, 300.0), np.full(k, 2.7), np.full(k, 0.1), np.zeros(k), np.zeros(k))
    raw = apply_ctf(be.project_images(small, R, o, apix, box), ctf, apix)
    a, b = Reconstructor(box, apix, 2, "D2"), Reconstructor(box, apix, 2, "D2", backend=be)
    t0 = time.perf_counter()
    a.insert(raw, R, o, ctf, False)
    t_cpu = time.perf_counter() - t0
    t0 = time.perf_counter()
    b.insert(raw, R, o, ctf, False)
    mb = b.finish()
    t_dev = time.perf_counter() - t0
    ma = a.finish()
    cc = float(np.corrcoef(ma.ravel(), mb.ravel())[0, 1])
    out["checks"]["reconstruction"] = {"cc": cc, "device": b.device, "numpy_insert_s": t_cpu,
                                       "device_insert_and_finish_s": t_dev, "seconds": time.perf_counter() - t}
    ok &= cc > 0.999 and b.device
    print("reconstruction", json.dumps(out["checks"]["reconstruction"]), flush=True)

    # 3. GMM fit gradients: device vs host CPU (same JAX code)
    from gmmcore.gmm.build import _FitProblem

    t = time.perf_counter()
    m = be.render_map(small, 32 if small_run else 64, 2.0 if small_run else 1.5)
    prob = _FitProblem(m, 2.0 if small_run else 1.5, 6.0 if small_run else 4.0, 25.0, 4_000_000)
    p = [(small.centers + rng.normal(0, 0.5, small.centers.shape)).astype(np.float32),
         np.full(len(small), 0.4, np.float32), np.full(len(small), 0.6, np.float32)]
    s0 = np.full(len(small), 1.5, np.float32)
    lg, fg, gg = be.gmm_fit(prob, s0, 0.1).value_and_grad(p, small.amplitudes)
    dev, bj._Devices.device = bj._Devices.device, jax.devices("cpu")[0]  # inputs committed to the CPU
    lc, fc, gc = be.gmm_fit(prob, s0, 0.1).value_and_grad(p, small.amplitudes)
    bj._Devices.device = dev
    rel = max(float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-30)) for x, y in zip(gg, gc))
    out["checks"]["gmm_fit"] = {"loss_gpu": lg, "loss_cpu": lc, "grad_max_rel_diff": rel,
                                "seconds": time.perf_counter() - t}
    ok &= abs(lg - lc) < 1e-4 and rel < 1e-3
    print("gmm_fit", json.dumps(out["checks"]["gmm_fit"]), flush=True)

    out["ok"] = bool(ok)
    res = Path("/tmp/gpu_checks_small.json") if small_run else HERE / "results" / "gpu_checks.json"
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(json.dumps(out, indent=1))
    print("all checks", "passed" if ok else "FAILED", "→", res)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
