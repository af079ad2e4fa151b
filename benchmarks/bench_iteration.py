"""One whole refinement iteration, phase by phase: GMM fits (both halves), alignment (both halves),
reconstruction (both halves), FSC — particles/s per phase and in total, extrapolated to the
paper's 400,000 particles at box 196 / 3 Å (stated as an extrapolation, with its rule).

    python3 benchmarks/bench_iteration.py --backend jax --box 196 --apix 1.0 --resolution 3 --n 4000   # GPU
    .venv/bin/python benchmarks/bench_iteration.py --backend tf --box 64 --apix 1.5 --resolution 4 --n 1000  # CPU

The data: ADK particles made with ``gmmcore.simulate``'s pieces (the built-in model, its truth
draws, projector and CTF; SNR 1, poses perturbed by 3° / 1 px, raw CTF-modulated images in an .mrcs
on disk; the particle table is built in memory, so no star file — and no pandas — is needed).  The
phases are the library calls the refinement loop makes (``build_gmm`` per half, ``align_particles``
per half — reading the stack, phase flip and transforms included —, ``reconstruct_halves``,
``half_map_report``), at a fixed target resolution; iteration 0's reconstruction (input poses) is
timed too but is not part of an iteration.  The GMMs are seeded from points drawn from each half
map's density (no K-means: scikit-learn is not on the GPU machines; seeding is CPU work outside
the fit being measured).

Issue 20 options (box 160 CPU profile, ``results/bench_iteration_box160.json``): ``--seeding kmeans``
seeds as the refinement does (N estimate and K-means timed apart); ``--compare-fit`` refits half 1
with the opt-in Hermitian transform; ``--compare-warm`` fits half 1's next GMM cold and warm-started;
``--compare-reconstruction R`` times half 1's reconstruction R times with the pre-issue-20
reconstructor (``benchmarks/reference_reconstruct.py``, also the reference of
``tests/test_reconstruct_equivalence.py``) and the current one, alternating, then with
``relion_reconstruct`` on the same star file, and reports FSCs between the maps and the model.
Each phase reports wall and CPU seconds (this process and its finished workers).

``--second-iteration`` (issue 20, ``results/bench_iteration_box160_iter2.json``): a whole second
iteration, measured twice in this process, back to back, from the same first one.  The first
iteration runs at ``--from-resolution`` from the input poses (K-means seeds, ``--first-fit``; timed,
set-up only); the second at ``--resolution`` from its half maps and poses, (a) with today's defaults
(N estimate, K-means, 300 steps of the fourier fit per half) and (b) with ``--gmm-start warm
--gmm-fit hermitian`` (each half's GMM from that half's first-iteration GMM, WARM_STEPS steps).  The
GMMs come from the refinement loop's own work unit (``gmmcore.refine.loop.fit_gmm_unit``), the
alignment of both halves from ``align_sets`` as the loop calls it; then both half reconstructions
and the FSC.  Per path: each phase's wall and CPU seconds, N and map-vs-GMM FSC per half, the
resolution and the mean angle error against the true poses; the ratio of the two.  The pose loop is
traced at the second band before either path (on 64 particles per half, timed apart), so the path
that runs first does not pay it alone.  ``--copies K``: the particle is K randomly turned ADK copies
on a lattice (``benchmarks/assembly.py``, as ``bench_gmm_build.py``), so that GMM building weighs as
on a large particle.

Extrapolation to M particles: t(M) = t_fit + t_fsc + (t_align + t_reconstruct)·M/n, where the GMM
fits and the FSC do not depend on the number of particles.  When the measured geometry is not the
target's, alignment is also scaled by the projector's work N·K² and reconstruction by the padded
image area (box²) — flagged as ``"geometry_scaled": true``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GMMCORE_NO_PROGRESS", "1")


def simulate(work: Path, n: int, box: int, apix: float, backend, seed: int = 1, copies: int = 1,
             spacing: float = 46.0):
    """n raw particles (SNR 1) in work/particles.mrcs → (ParticleTable at poses perturbed by 3°/1 px,
    true rotations, atoms in the particle).  ``copies`` > 1: the particle is that many randomly turned
    ADK copies on a lattice of ``spacing`` Å (``benchmarks/assembly.py``, as ``bench_gmm_build.py``)."""
    from benchmarks.assembly import lattice_copies
    from gmmcore.io.stacks import StackWriter
    from gmmcore.simulate import (_draw_truth, _table, clean_particles, load_model, particle_mask,
                                  signal_variance)

    mdl = load_model("builtin:adk-closed")
    if copies > 1:  # one assembly of `copies` atoms sets (its own random stream: the truth draws are unchanged)
        mdl = dict(mdl, coords_a=lattice_copies(mdl["coords_a"], copies, spacing, np.random.default_rng(seed + 1000)),
                   **{k: np.tile(mdl[k], copies) for k in ("amplitudes", "sigmas", "elements", "resseq")})
    rng = np.random.default_rng(seed)
    truth = _draw_truth(n, box, apix, rng, defocus_range=(10000.0, 25000.0), astigmatism=500.0, voltage=300.0,
                        cs=2.7, amp_contrast=0.1, max_origin_px=2.0, perturb_angle_deg=3.0, perturb_shift_px=1.0,
                        optics_groups=1, has_b=False, conformation=None)
    radius = float(np.linalg.norm(mdl["coords_a"], axis=1).max()) / apix + 2
    mask = particle_mask(box, min(radius, box / 2 - 1))
    noise = None
    work.mkdir(parents=True, exist_ok=True)
    with StackWriter(work / "particles.mrcs", box=box, apix=apix) as w:
        for i0 in range(0, n, 512):
            sl = slice(i0, min(n, i0 + 512))
            imgs = clean_particles(mdl, truth["rotations"][sl], truth["origins_A"][sl], truth["ctf"].subset(sl),
                                   apix, box, backend=backend)
            if noise is None:  # SNR 1 inside the particle disc
                noise = float(np.sqrt(signal_variance(imgs, mask).mean()))
            imgs += (noise * rng.standard_normal(imgs.shape)).astype(np.float32)
            w.write(imgs)
    table = _table(truth, truth["rotations_perturbed"], truth["origins_perturbed_A"], apix, box, "particles.mrcs",
                   work)
    return table, truth["rotations"], len(mdl["coords_a"])


def density_points(m: np.ndarray, apix: float, k: int, seed: int) -> np.ndarray:
    """k points drawn from a map's positive density (voxel centres, Å from voxel 0, x y z)."""
    rng = np.random.default_rng(seed)
    v = np.clip(m.ravel().astype(np.float64), 0, None)
    v = np.where(v > np.percentile(v, 99.0) * 0.2, v, 0.0)
    idx = rng.choice(v.size, size=k, replace=v.size < k or np.count_nonzero(v) < k, p=v / v.sum())
    z, y, x = np.unravel_index(idx, m.shape)
    return np.stack([x, y, z], axis=1).astype(np.float64) * apix


def _insert_all(rec, table, idx):
    from gmmcore.io.stacks import iter_images

    for rows, images in iter_images(table, idx, 1024):
        rows = np.asarray(rows)
        rec.insert(images, table.rotation[rows], table.origin[rows], table.ctf.subset(rows), table.phase_flipped)
    return rec.finish()


def compare_reconstruction(table, work: Path, repeats: int) -> dict:
    """Half 1 reconstructed by the reference (pre-issue-20) reconstructor, the current one without
    its compiled kernel ("numpy") and the current one, ``repeats`` times each alternating in this
    process (insertion + finish, one core), and by
    ``relion_reconstruct --subset 1 --ctf --pad 2`` on the same star file; FSCs against each other and
    against the model's map."""
    import resource
    import shutil
    import subprocess

    from benchmarks.reference_reconstruct import ReferenceReconstructor
    from gmmcore.backend import get_backend
    from gmmcore.fsc import fsc, resolution_at
    from gmmcore.io.maps import read_map
    from gmmcore.io.star import write_star
    from gmmcore.reconstruct import Reconstructor
    from gmmcore.simulate import load_model, model_gmm

    from gmmcore.particles import check_geometry

    box, apix = check_geometry(table)
    idx = table.half_rows()[1]
    from gmmcore.insertion import kernel

    names = ("reference", "numpy", "current") if kernel() is not None else ("reference", "current")
    times = {k: [] for k in names}
    cpu = {k: [] for k in names}
    maps = {}
    for r in range(repeats):
        for name in names:
            # "numpy": the current reconstructor without its compiled kernel (GMMCORE_NUMPY_INSERTION)
            os.environ["GMMCORE_NUMPY_INSERTION"] = "1" if name == "numpy" else "0"
            t0, c0 = time.perf_counter(), time.process_time()
            rec = ReferenceReconstructor(box, apix) if name == "reference" else Reconstructor(box, apix)
            maps[name] = _insert_all(rec, table, idx)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            print(f"  half 1 ({idx.size} images) {name:<9} {times[name][-1]:6.1f} s wall, {cpu[name][-1]:6.1f} s CPU",
                  flush=True)
    os.environ.pop("GMMCORE_NUMPY_INSERTION", None)
    out = {"half_1_images": int(idx.size), "repeats": repeats, "seconds": times, "cpu_seconds": cpu,
           "median_seconds": {k: float(np.median(v)) for k, v in times.items()},
           "spread_seconds": {k: float(np.ptp(v)) for k, v in times.items()},
           "median_cpu_seconds": {k: float(np.median(v)) for k, v in cpu.items()},
           "spread_cpu_seconds": {k: float(np.ptp(v)) for k, v in cpu.items()},
           "identical_maps": bool(np.array_equal(maps["reference"], maps["current"])),
           "max_abs_map_difference_relative": float(np.abs(maps["reference"] - maps["current"]).max()
                                                    / np.abs(maps["reference"]).max())}
    if "numpy" in maps:
        out["identical_maps_numpy_path"] = bool(np.array_equal(maps["reference"], maps["numpy"]))
    out["speedup_median"] = out["median_seconds"]["reference"] / out["median_seconds"]["current"]
    out["speedup_median_cpu"] = out["median_cpu_seconds"]["reference"] / out["median_cpu_seconds"]["current"]
    truth = get_backend("tf").render_map(model_gmm(load_model("builtin:adk-closed")), box, apix)
    if shutil.which("relion_reconstruct"):
        star = work / "particles.star"
        write_star(table, star)
        t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(["relion_reconstruct", "--i", str(star), "--o", str(work / "relion_half1.mrc"), "--subset", "1",
                        "--ctf", "--pad", "2"], check=True, cwd=work, capture_output=True)
        out["relion_reconstruct_seconds"] = time.perf_counter() - t0
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["relion_reconstruct_cpu_seconds"] = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
        maps["relion"] = read_map(work / "relion_half1.mrc")[0]
        print(f"  half 1 relion_reconstruct {out['relion_reconstruct_seconds']:6.1f} s", flush=True)
    fscs = {}
    for a, b in (("current", "relion"), ("current", "truth"), ("relion", "truth")):
        if a in maps and (b in maps or b == "truth"):
            f, c = fsc(maps[a], truth if b == "truth" else maps[b], apix)
            fscs[f"{a}_vs_{b}"] = {"resolution_0.5": resolution_at(f, c, 0.5), "resolution_0.143": resolution_at(f, c),
                                   "mean_fsc": float(np.mean(c[1:]))}
    out["fsc"] = fscs
    return out


def _cpu_seconds() -> float:
    """CPU seconds of this process (all its threads) and its finished child processes."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _timed_phase(phases: dict, name: str, f, prefix: str = ""):
    """``f()``, its wall and CPU seconds stored as ``phases[name]`` and printed (``prefix`` first)."""
    t0, c0 = time.perf_counter(), _cpu_seconds()
    v = f()
    phases[name] = {"seconds": time.perf_counter() - t0, "cpu_seconds": _cpu_seconds() - c0}
    print(f"{prefix}{name:<14} {phases[name]['seconds']:8.1f} s wall {phases[name]['cpu_seconds']:8.1f} s CPU",
          flush=True)
    return v


@contextmanager
def _fit_steps(steps: Optional[int]):
    """Within: every GMM fit of :func:`gmmcore.refine.loop.fit_gmm_unit` runs ``steps`` steps (a quick
    check of the bench; None: the loop's own 300 / WARM_STEPS)."""
    if steps is None:
        yield
        return
    from unittest import mock

    import gmmcore.refine.loop as loop

    build = loop.build_gmm
    with mock.patch.object(loop, "build_gmm", lambda *a, **k: build(*a, **{**k, "iterations": steps})):
        yield


def _align_settings(ns):
    from gmmcore.gmm.align import AlignSettings

    return AlignSettings(batch=ns.batch if ns.batch == "auto" else int(ns.batch))


def refine_iteration(label: str, iteration: int, table, truth, half_maps, start_poses, band, be, work: Path, ns,
                     gmm_fit: str, previous=None) -> dict:
    """One whole iteration as :func:`gmmcore.refine.loop.iterate` runs it, phase by phase, each phase
    timed (wall and CPU s): both halves' GMMs by the loop's own work unit ``fit_gmm_unit`` (K-means
    seeds and 300 steps; with ``previous`` warm-started from those GMMs and WARM_STEPS steps),
    both halves' alignment (``align_sets``, from ``start_poses``), both half reconstructions, the FSC.
    Returns the timings and results, plus "_gmms", "_poses" and "_maps" for a next iteration."""
    from gmmcore.geometry import angular_distance
    from gmmcore.fsc import half_map_report
    from gmmcore.gmm.align import AlignSet, align_sets
    from gmmcore.grids import FourierGrid
    from gmmcore.particles import HalfPair, check_geometry
    from gmmcore.reconstruct import reconstruct_halves
    from gmmcore.refine.loop import fit_gmm_unit
    from gmmcore.refine.rundir import IterationStore

    box, apix = check_geometry(table)
    store = IterationStore(work / label, iteration)  # a fresh folder: nothing saved to load
    phases = {}

    def timed(name, f):
        return _timed_phase(phases, name, f, prefix=f"  {label:<14} ")

    load0 = list(os.getloadavg())
    unit_seconds = {}

    def fit_half(h):
        t0 = time.perf_counter()
        v = fit_gmm_unit(h, half_maps[h], apix, band, None, None, ns.seed, store, be.name, gmm_fit,
                         None if previous is None else previous[h])
        unit_seconds[h] = time.perf_counter() - t0
        return v

    with _fit_steps(ns.fit_iterations):
        fitted = timed("gmm_fits", lambda: HalfPair.build(fit_half))
    per_half = {}
    for h, (g, rep) in fitted.items():
        # start: N estimate + K-means, or warm_start; with the low-pass and the save of the unit
        per_half[str(h)] = {"n_gaussians": len(g), "map_vs_gmm_fsc_mean": float(rep["fsc_mean"]),
                            "fit_steps": int(rep["steps"]), "seconds": unit_seconds[h],
                            "fit_seconds": float(rep["seconds"]),
                            "start_seconds": unit_seconds[h] - float(rep["seconds"]),
                            "seeding": rep["seeding"].get("method"), "fit": gmm_fit}
        print(f"    half {h}: N {len(g)}, start ({per_half[str(h)]['seeding']}) "
              f"{per_half[str(h)]['start_seconds']:.1f} s, fit {rep['steps']} steps {rep['seconds']:.1f} s, "
              f"map-vs-GMM FSC {rep['fsc_mean']:.4f}", flush=True)
    phases["gmm_fits"]["per_half"] = per_half
    grid = FourierGrid(box, apix, band.resolution_A, band.minres_A)
    rows = table.half_rows()
    settings = _align_settings(ns)
    aligned = timed("align", lambda: align_sets([AlignSet(f"{label} half {h}", rows[h], fitted[h][0])
                                                 for h in (1, 2)], table, start_poses, grid, settings, backend=be))
    poses = start_poses
    for h, a in zip((1, 2), aligned):
        poses = poses.with_rows(rows[h], a.poses)
    maps = timed("reconstruct", lambda: reconstruct_halves(table.with_poses(poses), backend=be))
    rep = timed("fsc", lambda: half_map_report(maps[1], maps[2], apix))
    err = angular_distance(poses.rotation, truth)
    out = {"target_resolution_A": band.resolution_A, "phases": phases,
           "seconds": sum(phases[k]["seconds"] for k in ("gmm_fits", "align", "reconstruct", "fsc")),
           "cpu_seconds": sum(phases[k]["cpu_seconds"] for k in ("gmm_fits", "align", "reconstruct", "fsc")),
           "resolution_A": float(rep["resolution"]), "resolution_unmasked_A": float(rep["resolution_unmasked"]),
           "angle_error_mean_deg": float(err.mean()), "angle_error_median_deg": float(np.median(err)),
           "load_average_before": load0, "load_average_after": list(os.getloadavg()),
           "_gmms": HalfPair(fitted[1][0], fitted[2][0]), "_poses": poses, "_maps": maps}
    print(f"  {label}: {out['seconds']:.1f} s wall, {out['cpu_seconds']:.1f} s CPU; resolution "
          f"{out['resolution_A']:.2f} Å, mean angle error {out['angle_error_mean_deg']:.2f}°", flush=True)
    return out


def second_iteration(ns, table, truth, maps0, be, work: Path, res: dict, out: Path) -> None:
    """``--second-iteration``: a first iteration at ``--from-resolution`` (K-means seeds; set-up,
    timed), then the second at ``--resolution`` twice from that same state — today's defaults
    (``--gmm-start seed --gmm-fit fourier``) and ``--gmm-start warm --gmm-fit hermitian`` — with
    the per-phase times of each and their ratio; written to ``out`` after every iteration."""
    from gmmcore.refine.state import Band

    def public(r):
        return {k: v for k, v in r.items() if not k.startswith("_")}

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1, default=float))

    sec = res["second_iteration"] = {}
    minres = 25.0
    first = refine_iteration("first", 1, table, truth, maps0, table.poses, Band(minres, ns.from_resolution), be, work,
                             ns, ns.first_fit)
    sec["first_iteration"] = public(first)
    sec["first_iteration"]["fit"] = ns.first_fit
    save()
    band = Band(minres, ns.resolution)
    # the pose loop is traced once per band (on whichever path runs first): traced here, on 64 particles
    # per half, so neither path pays it — a real second iteration pays it once, on either path
    from gmmcore.gmm.align import AlignSet, align_sets
    from gmmcore.grids import FourierGrid

    t0 = time.perf_counter()
    rows = table.half_rows()
    align_sets([AlignSet(f"trace half {h}", rows[h][:64], first["_gmms"][h]) for h in (1, 2)], table,
               first["_poses"], FourierGrid(ns.box, ns.apix, band.resolution_A, band.minres_A), _align_settings(ns),
               backend=be)
    sec["align_trace_seconds"] = time.perf_counter() - t0
    print(f"  alignment traced at the second band: {sec['align_trace_seconds']:.1f} s (not timed in either path)",
          flush=True)
    paths = {"today": ("fourier", None), "warm_hermitian": ("hermitian", first["_gmms"])}
    order = list(paths) if ns.order == "today-first" else list(paths)[::-1]
    for name in order:
        fit, previous = paths[name]
        r = refine_iteration(f"second_{name}", 2, table, truth, first["_maps"], first["_poses"], band, be, work, ns, fit,
                             previous)
        sec[name] = public(r)
        save()
    a, b = sec["today"], sec["warm_hermitian"]
    sec["order"] = order
    sec["ratio_today_over_warm_hermitian"] = {
        "iteration_wall": a["seconds"] / b["seconds"], "iteration_cpu": a["cpu_seconds"] / b["cpu_seconds"],
        **{f"{k}_wall": a["phases"][k]["seconds"] / b["phases"][k]["seconds"]
           for k in ("gmm_fits", "align", "reconstruct", "fsc")}}
    res["load_average_at_end"] = list(os.getloadavg())
    save()
    print(f"second iteration: today {a['seconds']:.1f} s, warm + hermitian {b['seconds']:.1f} s "
          f"({sec['ratio_today_over_warm_hermitian']['iteration_wall']:.2f}x); resolution {a['resolution_A']:.2f} vs "
          f"{b['resolution_A']:.2f} Å, angle error {a['angle_error_mean_deg']:.2f} vs {b['angle_error_mean_deg']:.2f}° "
          f"→ {out}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="jax", choices=["jax", "tf"])
    ap.add_argument("--n", type=int, default=4000, help="simulated particles")
    ap.add_argument("--box", type=int, default=196)
    ap.add_argument("--apix", type=float, default=1.0)
    ap.add_argument("--resolution", type=float, default=3.0, help="target resolution of the iteration, Å")
    ap.add_argument("--ngauss", type=int, default=4000, help="Gaussians per GMM")
    ap.add_argument("--fit-iterations", type=int, default=None,
                    help="GMM fit steps (default 300; --second-iteration: the loop's own 300 / WARM_STEPS)")
    ap.add_argument("--batch", default="auto")
    ap.add_argument("--target-n", type=int, default=400_000)
    ap.add_argument("--target-box", type=int, default=196)
    ap.add_argument("--target-resolution", type=float, default=3.0)
    ap.add_argument("--target-ngauss", type=int, default=None, help="default: --ngauss")
    ap.add_argument("--workdir", default=None, help="keep the simulated data here (default: a temporary folder)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--seeding", default="density", choices=["density", "kmeans"],
                    help="kmeans: the refinement's own seeding (N estimate + K-means, each timed; --ngauss ignored)")
    ap.add_argument("--compare-fit", action="store_true",
                    help="with --seeding kmeans: refit half 1 with the opt-in Hermitian transform (timed apart)")
    ap.add_argument("--compare-warm", action="store_true",
                    help="fit half 1's next GMM (on the new map) cold — seeded as by default — and warm-started "
                         "from this iteration's GMM (build_gmm init=, off by default), same steps; timed apart")
    ap.add_argument("--compare-reconstruction", type=int, default=0, metavar="R",
                    help="also time half 1's insertion + finish R times with the reference (pre-issue-20) "
                         "reconstructor and the current one, alternating in this process, and with relion_reconstruct "
                         "(when installed); FSC of the maps against each other and the truth")
    ap.add_argument("--copies", type=int, default=1,
                    help="the particle: this many randomly turned ADK copies on a lattice (benchmarks/assembly.py)")
    ap.add_argument("--spacing", type=float, default=46.0, help="lattice spacing of the copies, Å")
    ap.add_argument("--second-iteration", action="store_true",
                    help="time a whole second iteration twice from the same first one: today's defaults "
                         "(K-means seeding, fourier fit) and --gmm-start warm --gmm-fit hermitian (module notes)")
    ap.add_argument("--from-resolution", type=float, default=4.5,
                    help="--second-iteration: the first iteration's target resolution, Å")
    ap.add_argument("--first-fit", default="hermitian", choices=["fourier", "hermitian"],
                    help="--second-iteration: the first iteration's fit transform (seeded either way; same result)")
    ap.add_argument("--order", default="today-first", choices=["today-first", "warm-first"],
                    help="--second-iteration: which path runs first")
    ap.add_argument("--seed", type=int, default=0, help="--second-iteration: the refinement's --seed (GMM seeding)")
    ns = ap.parse_args(argv)
    if ns.fit_iterations is None and not ns.second_iteration:
        ns.fit_iterations = 300

    from gmmcore.backend import get_backend
    from gmmcore.fourier import lowpass
    from gmmcore.fsc import half_map_report
    from gmmcore.geometry import angular_distance
    from gmmcore.gmm.align import AlignSettings, align_particles
    from gmmcore.gmm.build import build_gmm, estimate_n_gaussians, fit_gmm, seed_kmeans
    from gmmcore.grids import FourierGrid
    from gmmcore.particles import HalfPair, check_geometry
    from gmmcore.reconstruct import reconstruct_halves

    be = get_backend(ns.backend)
    device = be.describe_devices()
    batch = ns.batch if ns.batch == "auto" else int(ns.batch)
    out = Path(ns.out or HERE / "results" / f"bench_iteration_{ns.backend}.json")
    res = {"backend": ns.backend, "device": device, "params": vars(ns), "python": platform.python_version(),
           "numpy": np.__version__, "load_average_at_start": list(os.getloadavg()), "phases": {}}
    tmp = tempfile.TemporaryDirectory() if ns.workdir is None else None
    work = Path(ns.workdir or tmp.name)
    t = time.perf_counter()
    table, truth, res["atoms"] = simulate(work, ns.n, ns.box, ns.apix, be, copies=ns.copies, spacing=ns.spacing)
    res["simulate_s"] = time.perf_counter() - t
    box, apix = check_geometry(table)
    ph = res["phases"]

    def timed(name, f):
        return _timed_phase(ph, name, f)

    maps0 = timed("reconstruct_0", lambda: reconstruct_halves(table, backend=be))
    res0 = half_map_report(maps0[1], maps0[2], apix)["resolution"]
    if ns.second_iteration:
        res["resolution_0"] = res0
        second_iteration(ns, table, truth, maps0, be, work, res, out)
        if tmp is not None:
            tmp.cleanup()
        return 0
    seeding = {}

    def fit(h):
        m = lowpass(maps0[h], apix, max(ns.resolution, res0))
        if ns.seeding == "density":
            return build_gmm(m, apix, ns.resolution, seed_model=density_points(m, apix, ns.ngauss, h), seed=h,
                             iterations=ns.fit_iterations, backend=be)
        t0 = time.perf_counter()
        n_est = estimate_n_gaussians(m, apix, ns.resolution, seed=h)
        t1 = time.perf_counter()
        centers = seed_kmeans(m, apix, n_est, seed=h)
        t2 = time.perf_counter()
        g, rep = fit_gmm(m, apix, centers, ns.resolution, iterations=ns.fit_iterations, backend=be)
        seeding[h] = {"n_gaussians": int(n_est), "n_estimate_seconds": t1 - t0, "kmeans_seconds": t2 - t1,
                      "fit_seconds": rep["seconds"], "fit_steps": rep["steps"],
                      "fit_seconds_per_step": rep["seconds"] / max(rep["steps"] + 2, 1),
                      "fit_fsc_mean": rep["fsc_mean"], "slabs": rep["slabs"]}
        print(f"  half {h}: N {n_est} (estimate {t1 - t0:.1f} s), K-means {t2 - t1:.1f} s, fit {rep['seconds']:.1f} s "
              f"({rep['steps']} steps)", flush=True)
        if ns.compare_fit and h == 1:  # the opt-in Hermitian transform, same seeds, after the default
            g2, rep2 = fit_gmm(m, apix, centers, ns.resolution, iterations=ns.fit_iterations, backend=be,
                               hermitian=True)
            seeding["hermitian_fit_half_1"] = {
                "fit_seconds": rep2["seconds"], "fit_seconds_default": rep["seconds"],
                "speedup": rep["seconds"] / rep2["seconds"], "fit_fsc_mean": rep2["fsc_mean"],
                "fit_fsc_mean_default": rep["fsc_mean"], "loss": rep2["loss"], "loss_default": rep["loss"],
                "max_centre_difference_A": float(np.abs(g2.centers - g.centers).max())}
            print(f"  half 1 Hermitian fit: {rep2['seconds']:.1f} s (default {rep['seconds']:.1f} s), "
                  f"FSC {rep2['fsc_mean']:.4f} (default {rep['fsc_mean']:.4f})", flush=True)
        return g, rep

    fits = timed("gmm_fits", lambda: HalfPair.build(fit))
    ph["gmm_fits"]["fit_only_seconds"] = sum(fits[h][1]["seconds"] for h in (1, 2))
    if seeding:
        ph["gmm_fits"]["per_half"] = seeding
        for k in ("n_estimate_seconds", "kmeans_seconds", "fit_seconds"):
            ph["gmm_fits"][k] = sum(seeding[h][k] for h in (1, 2))
        if "hermitian_fit_half_1" in seeding:  # not part of the iteration's time
            ph["gmm_fits"]["seconds"] -= seeding["hermitian_fit_half_1"]["fit_seconds"]
    grid = FourierGrid(box, apix, ns.resolution, 25.0)
    rows = table.half_rows()
    settings = AlignSettings(batch=batch)
    aligned = timed("align", lambda: HalfPair.build(lambda h: align_particles(
        table, table.poses, rows[h], fits[h][0], grid, settings, backend=be, desc=f"half {h}")))
    poses = table.poses
    for h in (1, 2):
        poses = poses.with_rows(rows[h], aligned[h].poses)
    maps = timed("reconstruct", lambda: reconstruct_halves(table.with_poses(poses), backend=be))
    rep = timed("fsc", lambda: half_map_report(maps[1], maps[2], apix))
    if ns.compare_warm:  # the next iteration's GMM of half 1: cold (seeded) vs warm (from this one)
        m1 = lowpass(maps[1], apix, max(ns.resolution, rep["resolution"]))
        t0 = time.perf_counter()
        g_cold, r_cold = build_gmm(m1, apix, ns.resolution, seed=1, iterations=ns.fit_iterations, backend=be)
        t1 = time.perf_counter()
        g_warm, r_warm = build_gmm(m1, apix, ns.resolution, seed=1, iterations=ns.fit_iterations, backend=be,
                                   init=fits[1][0])
        t2 = time.perf_counter()
        res["warm_start_half_1"] = {"cold_seconds": t1 - t0, "warm_seconds": t2 - t1, "steps": ns.fit_iterations,
                                    "cold_fsc_mean": r_cold["fsc_mean"], "warm_fsc_mean": r_warm["fsc_mean"],
                                    "cold_n": len(g_cold), "warm_n": len(g_warm),
                                    "cold_loss": r_cold["loss"], "warm_loss": r_warm["loss"]}
        print(f"  next GMM of half 1: cold {t1 - t0:.1f} s FSC {r_cold['fsc_mean']:.4f} (N {len(g_cold)}), "
              f"warm {t2 - t1:.1f} s FSC {r_warm['fsc_mean']:.4f} (N {len(g_warm)})", flush=True)
    if ns.compare_reconstruction:
        res["reconstruction_comparison"] = compare_reconstruction(table.with_poses(poses), work, ns.compare_reconstruction)
    n = len(table)
    for k in ("align", "reconstruct", "reconstruct_0"):
        ph[k]["particles_per_s"] = n / ph[k]["seconds"]
    iter_s = sum(ph[k]["seconds"] for k in ("gmm_fits", "align", "reconstruct", "fsc"))
    res["iteration"] = {"seconds": iter_s, "particles_per_s": n / iter_s, "n_particles": n,
                        "resolution_before": res0, "resolution_after": rep["resolution"],
                        "angle_error_before": float(angular_distance(table.rotation, truth).mean()),
                        "angle_error_after": float(angular_distance(poses.rotation, truth).mean()),
                        "batch": batch, "grid": list(grid.shape)}
    # extrapolation
    tgt_ng = ns.target_ngauss or ns.ngauss
    tgt_grid = FourierGrid(ns.target_box, apix, ns.target_resolution, 25.0)
    K, Kt = grid.kmax + 1, tgt_grid.kmax + 1
    same = (box == ns.target_box and abs(ns.resolution - ns.target_resolution) < 1e-6 and tgt_ng == ns.ngauss)
    a_scale = 1.0 if same else (tgt_ng * Kt ** 2) / (ns.ngauss * K ** 2)
    r_scale = 1.0 if same else (ns.target_box / box) ** 2
    f_scale = 1.0 if same else (tgt_ng / ns.ngauss) * (Kt / K) ** 3
    M = ns.target_n
    t_fit, t_fsc = ph["gmm_fits"]["seconds"] * f_scale, ph["fsc"]["seconds"] * (ns.target_box / box) ** 3
    t_align = ph["align"]["seconds"] * a_scale * M / n
    t_rec = ph["reconstruct"]["seconds"] * r_scale * M / n
    total = t_fit + t_fsc + t_align + t_rec
    res["extrapolated"] = {"n_particles": M, "box": ns.target_box, "resolution_A": ns.target_resolution,
                           "n_gaussians": tgt_ng, "geometry_scaled": not same,
                           "seconds": {"gmm_fits": t_fit, "align": t_align, "reconstruct": t_rec, "fsc": t_fsc,
                                       "total": total},
                           "minutes_total": total / 60.0, "particles_per_s": M / total,
                           "rule": "t(M) = t_fit + t_fsc + (t_align + t_reconstruct)·M/n"
                                   + ("" if same else " × geometry scales (N·K² for alignment, box² for "
                                      "reconstruction, N·K³ for the fits, box³ for the FSC)")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=float))
    print(f"iteration: {iter_s:.1f} s for {n} particles ({n / iter_s:.1f} particles/s); "
          f"resolution {res0:.2f} → {rep['resolution']:.2f} Å; angle error "
          f"{res['iteration']['angle_error_before']:.2f} → {res['iteration']['angle_error_after']:.2f}°")
    print(f"extrapolated to {M} particles, box {ns.target_box}, {ns.target_resolution} Å: {total / 60:.1f} min "
          f"({M / total:.0f} particles/s){' [geometry scaled]' if not same else ''} → {out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
