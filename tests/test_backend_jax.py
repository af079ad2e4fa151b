"""The JAX backend agrees with the TensorFlow backend, and its refine path never imports TensorFlow.

* the ring gather's gradient as a gather (``ring_take``) equals JAX's own (a scatter-add) exactly;
* parity (CPU): pose optimiser (scores 1e-5, angles 1e-3°, shifts 1e-3 Å, with and without the
  pose prior), per-ring FRC, projections, maps, the GMM fit's loss and gradients;
* device reconstruction (forced on the CPU) gives the NumPy reconstructor's map (CC > 0.999) for
  phase-flipped and raw images with astigmatic CTFs, with symmetry;
* TF32 in the projector's product (emulated: operands rounded to a 10-bit mantissa) moves refined
  poses by < 1e-3°;
* ``--batch auto``: the memory rule, and results that do not depend on the batch size;
* ``gmmcore refine --backend jax`` (and the benchmark's JAX path) run with TensorFlow unimportable,
  and give the TF run's resolution and poses.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gmmcore.backend import FRCObjective, PoseSettings, get_backend
from gmmcore.geometry import angular_distance, perturb_rotations, random_rotations
from gmmcore.gmm.align import PoseRefiner
from gmmcore.gmm.model import GMM
from gmmcore.grids import FourierGrid

ROOT = Path(__file__).resolve().parents[1]


def _problem(n_gauss=200, k=24, seed=3):
    rng = np.random.default_rng(seed)
    gmm = GMM(rng.normal(size=(n_gauss, 3)) * [9, 6, 4], rng.uniform(0.5, 1.5, n_gauss), rng.uniform(1.5, 2.5, n_gauss))
    R = random_rotations(k, rng)
    o = rng.normal(size=(k, 2))
    grid = FourierGrid(48, 1.5, 6.0, 30.0)
    imgs = get_backend("tf").project_images(gmm, R, o, 1.5, 48)
    imgs += rng.normal(0, imgs.std(), imgs.shape).astype(np.float32)
    return gmm, grid, grid.image_ft(imgs), R, o, perturb_rotations(R, 3.0, rng), rng


@pytest.mark.parametrize("prior", [None, 3.0])
def test_pose_optimizer_parity(prior):
    gmm, grid, ft, R, o, start, _ = _problem()
    settings = PoseSettings(steps=10, prior_angle_deg=prior, prior_shift_px=prior and 1.0)
    w = np.linspace(1.0, 2.0, grid.nrings)
    out = {name: PoseRefiner(gmm, grid, settings, batch=8, ring_weights=w, data_scale=50.0,
                             backend=get_backend(name)).refine(ft, start, o) for name in ("tf", "jax")}
    (Rt, ot, st, s0t), (Rj, oj, sj, s0j) = out["tf"], out["jax"]
    assert angular_distance(Rt, start).mean() > 1.0  # the optimiser really moved the poses
    assert np.abs(st - sj).max() < 1e-5 and np.abs(s0t - s0j).max() < 1e-5
    assert angular_distance(Rt, Rj).max() < 1e-3
    assert np.abs(ot - oj).max() < 1e-3


def test_ring_gather_gradient_is_the_scatter_add():
    import jax
    import jax.numpy as jnp

    from gmmcore.backend.jax import ring_take
    from gmmcore.backend.kernels import HermitianLayout, RingLayout

    grid = FourierGrid(48, 1.5, 6.0, 30.0)
    hl = HermitianLayout(grid)
    rl = RingLayout(grid, hl)
    used = rl.model_index[rl.model_index != hl.size]
    assert len(np.unique(used)) == len(used) == len(grid.pix)  # each FRC pixel in exactly one slot
    rng = np.random.default_rng(0)
    flat = jnp.asarray(rng.normal(size=(3, hl.size + 1)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(3,) + rl.model_index.shape).astype(np.float32))
    idx, inv = jnp.asarray(rl.model_index), jnp.asarray(rl.model_inverse)
    g_ours = jax.grad(lambda f: jnp.sum(ring_take(f, idx, inv) * w))(flat)
    g_jax = jax.grad(lambda f: jnp.sum(jnp.take(f, idx, axis=1) * w))(flat)
    assert np.array_equal(np.asarray(ring_take(flat, idx, inv)), np.asarray(jnp.take(flat, idx, axis=1)))
    # equal on every layout value; the trailing constant zero's gradient is never used
    assert np.array_equal(np.asarray(g_ours)[:, :hl.size], np.asarray(g_jax)[:, :hl.size])
    assert np.abs(np.asarray(g_ours)[:, used]).min() > 0  # and it is not all zeros


def test_frc_projections_maps_parity():
    gmm, grid, ft, R, o, start, _ = _problem()
    tf, jx = get_backend("tf"), get_backend("jax")
    assert np.abs(tf.frc_rings(gmm, grid, ft, start, o) - jx.frc_rings(gmm, grid, ft, start, o)).max() < 1e-5
    a, b = tf.project_images(gmm, R[:5], o[:5], 1.5, 48), jx.project_images(gmm, R[:5], o[:5], 1.5, 48)
    assert np.abs(a - b).max() < 1e-5 * np.abs(a).max()
    a, b = tf.render_map(gmm, 32, 1.5), jx.render_map(gmm, 32, 1.5)
    assert np.abs(a - b).max() < 1e-5 * np.abs(a).max()


def test_gmm_fit_parity():
    from gmmcore.gmm.build import _FitProblem

    gmm, *_ = _problem(n_gauss=120)
    m = get_backend("tf").render_map(gmm, 40, 1.5)
    for slab_elems in (10 ** 9, 4000):  # one slab, and the two-pass slab-by-slab gradient
        prob = _FitProblem(m, 1.5, 5.0, 25.0, slab_elems)
        rng = np.random.default_rng(0)
        p = [(gmm.centers + rng.normal(0, 0.5, gmm.centers.shape)).astype(np.float32),
             np.full(len(gmm), 0.4, np.float32), np.full(len(gmm), 0.6, np.float32)]
        a0, s0 = gmm.amplitudes, np.full(len(gmm), 1.5, np.float32)
        lt, ft, gt = get_backend("tf").gmm_fit(prob, s0, 0.1).value_and_grad(p, a0)
        lj, fj, gj = get_backend("jax").gmm_fit(prob, s0, 0.1).value_and_grad(p, a0)
        assert abs(lt - lj) < 1e-5 and np.abs(ft - fj).max() < 1e-5
        for x, y in zip(gt, gj):
            assert np.abs(x - y).max() < 1e-4 * np.abs(x).max()


def test_device_reconstruction_matches_numpy(monkeypatch):
    from gmmcore.ctf import apply_ctf
    from gmmcore.particles import CTFParams
    from gmmcore.reconstruct import Reconstructor

    monkeypatch.setenv("GMMCORE_DEVICE_RECONSTRUCTION", "1")
    gmm, *_ , rng = _problem(n_gauss=100)
    k, box, apix = 200, 32, 2.0
    R, o = random_rotations(k, rng), rng.normal(size=(k, 2)) * 2
    jx = get_backend("jax")
    clean = jx.project_images(gmm, R, o, apix, box)
    ctf = CTFParams(rng.uniform(8000, 20000, k), rng.uniform(8000, 20000, k), rng.uniform(0, 180, k),
                    np.full(k, 300.0), np.full(k, 2.7), np.full(k, 0.1), np.zeros(k), np.zeros(k))
    raw = apply_ctf(clean, ctf, apix)
    for sym, images, c, flipped in (("C1", clean, None, True), ("C1", raw, ctf, False), ("D2", raw, ctf, False)):
        a, b = Reconstructor(box, apix, 2, sym), Reconstructor(box, apix, 2, sym, backend=jx)
        assert b.device and not a.device
        a.insert(images, R, o, c, flipped)
        b.insert(images[:150], R[:150], o[:150], None if c is None else c.subset(np.arange(150)), flipped)
        b.insert(images[150:], R[150:], o[150:], None if c is None else c.subset(np.arange(150, k)), flipped)
        ma, mb = a.finish(), b.finish()
        assert np.corrcoef(ma.ravel(), mb.ravel())[0, 1] > 0.999
        assert np.abs(ma - mb).max() < 1e-4 * np.abs(ma).max()  # float32 vs float64 sums


def test_tf32_projector_matmul_keeps_poses(monkeypatch):
    """TF32 in the big projector product only (emulated: operands rounded to TF32's 10-bit
    mantissa, float32 sums) moves poses by ~2e-4° on average here (on a noisier, smaller problem
    up to 0.09° for single particles: benchmarks/gpu_checks.py --small) — so it is opt-in; the split
    TF32 ×3 product (the GPU default) is float32-exact for practical purposes (< 1e-4°, scores 1e-6)."""
    from gmmcore.backend import jax as bj
    from gmmcore.gmm.align import orthonormalise

    gmm, grid, ft, R, o, start, _ = _problem(n_gauss=400)
    obj = FRCObjective(gmm, grid, np.full(grid.nrings, 1.0 / grid.nrings, np.float32))
    bj.configure_devices()
    out = {}
    for mode in ("fp32", "tf32-emulated", "tf32x3-emulated"):
        monkeypatch.setattr(bj._Devices, "matmul", mode)
        R_, o_, s_, _ = bj.BACKEND.pose_optimizer(obj, PoseSettings(steps=10))(
            start, o, particle_ft=ft, prior_rotations=start, prior_origins_A=o)
        out[mode] = (orthonormalise(R_.astype(np.float64)), o_, s_)
    Ra, oa, sa = out["fp32"]
    assert angular_distance(Ra, start).mean() > 1.0
    d = angular_distance(Ra, out["tf32-emulated"][0])
    assert d.mean() < 1e-2 and d.max() < 0.2
    assert np.abs(oa - out["tf32-emulated"][1]).max() < 1e-3
    assert angular_distance(Ra, out["tf32x3-emulated"][0]).max() < 1e-4
    assert np.abs(sa - out["tf32x3-emulated"][2]).max() < 1e-6


def test_batch_auto_rule_and_batch_independence():
    from gmmcore.backend.kernels import CPU_BATCH_CAP, CPU_MICRO_BATCH, batch_for_memory, bytes_per_particle

    grid = FourierGrid(240, 0.86, 3.0, 25.0)
    per = bytes_per_particle(7374, grid)
    for free in (2e9, 16e9, 80e9):
        b = batch_for_memory(7374, grid, free)
        assert b & (b - 1) == 0  # a power of two
        assert b * per <= 0.5 * free < 2 * b * per or b == 4096
    assert batch_for_memory(7374, grid, None) == 16
    gmm, grid, ft, R, o, start, _ = _problem(k=20)
    jx = get_backend("jax")
    auto = jx.max_batch(gmm, grid, PoseSettings())
    assert 1 <= auto <= CPU_BATCH_CAP
    res = [PoseRefiner(gmm, grid, PoseSettings(steps=5), batch=b, backend=jx).refine(ft, start, o)
           for b in (3, auto, CPU_MICRO_BATCH, 2 * CPU_MICRO_BATCH + 3)]
    assert angular_distance(res[0][0], res[1][0]).max() < 1e-4
    assert np.abs(res[0][1] - res[1][1]).max() < 1e-4
    assert np.abs(res[0][2] - res[1][2]).max() < 1e-6
    # on the CPU a batch runs as micro-batches of CPU_MICRO_BATCH: from that size on, the same bits
    if PoseRefiner(gmm, grid, PoseSettings(steps=5), batch=auto, backend=jx)._opt.micro_batch:
        for r in res[3:]:
            assert all(np.array_equal(x, y) for x, y in zip(r, res[2]))


NO_TF = "import sys; sys.modules['tensorflow'] = None\n"


def _no_tf_python(code: str, cwd, env_extra=None, timeout=900):
    env = dict(os.environ, GMMCORE_NO_PROGRESS="1", PYTHONPATH=str(ROOT), **(env_extra or {}))
    p = subprocess.run([sys.executable, "-c", NO_TF + code], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def test_jax_refine_without_tensorflow(sim_small, tmp_path):
    """One refine iteration with --backend jax in a process where TensorFlow cannot be imported
    (device reconstruction forced on), against the same iteration with TensorFlow."""
    from gmmcore.cli import main

    args = ["--particles", str(sim_small["perturbed_star"]), "--iter", "1", "--maxres", "12", "--steps", "5",
            "--chunk", "50", "--cpu"]
    assert main(["refine", *args, "--out", str(tmp_path / "tf")]) == 0
    code = ("from gmmcore.cli import main\n"
            f"rc = main(['refine', *{args!r}, '--out', {str(tmp_path / 'jax')!r}, '--backend', 'jax', '--batch', 'auto'])\n"
            "assert 'tensorflow' not in sys.modules or sys.modules['tensorflow'] is None\n"
            "print('rc', rc)\n")
    out = _no_tf_python(code, tmp_path, {"GMMCORE_DEVICE_RECONSTRUCTION": "1"})
    assert "rc 0" in out
    s = {k: json.loads((tmp_path / k / "summary.json").read_text()) for k in ("tf", "jax")}
    assert s["jax"]["params"]["backend"] == "jax" and s["jax"]["params"]["batch"] == "auto"
    assert "JAX" in s["jax"]["device"]
    r = {k: v["iterations"][-1]["resolution"] for k, v in s.items()}
    assert abs(r["tf"] - r["jax"]) < 0.02 * r["tf"]
    from gmmcore.io.star import read_star

    a, b = (read_star(tmp_path / k / "final" / "particles.star") for k in ("tf", "jax"))
    assert np.median(angular_distance(a.rotation, b.rotation)) < 0.05
    assert np.median(np.abs(a.origin - b.origin)) < 0.02


def test_benchmark_jax_path_without_tensorflow(tmp_path):
    """The GPU benchmark scripts run with JAX only (a tiny problem)."""
    out = _no_tf_python(
        "import runpy; sys.argv = ['bench_align.py', '--backends', 'jax', '--cases', 'tiny', '--batches', '4', "
        f"'--out', {str(tmp_path / 'a.json')!r}]\n"
        f"runpy.run_path({str(ROOT / 'benchmarks' / 'bench_align.py')!r}, run_name='__main__')\n", tmp_path)
    res = json.loads((tmp_path / "a.json").read_text())
    assert {r["impl"] for r in res["runs"] if "particle_steps_per_s" in r} >= {"product-jax", "reference-jax"}
    assert "particle-steps/s" in out
