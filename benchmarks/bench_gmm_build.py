"""GMM building of a large particle, per phase: the default fit and its Hermitian variant
(``--gmm-fit hermitian``), side by side on the same map and seeds.

The map is made from atoms, never from our GMM (``benchmarks/realistic/atom_maps.py``): ``--copies``
copies of the bundled adenylate kinase (closed), each turned by a random rotation, on a cubic
lattice of ``--spacing`` Å around the box centre (``benchmarks/assembly.py``, shared with
``bench_iteration.py --copies``) (8 copies ≈ 190 kDa fill a box-160 particle at
1 Å/px), plus white noise at ``--snr`` (signal variance inside the particle / noise variance, as a
half map of a real refinement), low-passed to the target resolution as the refinement does before
fitting.  Seeding (the N estimate and K-means) runs once and is timed; each fit then starts
from the same centres for ``--steps`` steps (the refinement's default is 300).  Reported per method:
seconds per step, the fit's wall time, the map-vs-GMM FSC and loss after the same steps.

    .venv/bin/python -m benchmarks.bench_gmm_build --copies 1 8 --steps 100 \
        --out benchmarks/results/bench_gmm_build.json

``--warm``: a second iteration's build instead (``--gmm-start warm``, :mod:`gmmcore.gmm.warm`).  A GMM is
first built at the coarser band ``--warm-from`` (seeded, ``--prev-steps`` Hermitian steps: the previous
iteration's GMM, not timed), then the build at ``--resolution`` on a new map of the same particle (other
noise: the next iteration's half map) is timed both ways in the same run: today's path (N estimate,
K-means, ``--fresh-steps`` steps of the default fit) and the warm path (N by the power law, split/merge,
``--warm-steps`` steps of each ``--warm-fits`` transform), each with its map-vs-GMM FSC and loss.

    .venv/bin/python -m benchmarks.bench_gmm_build --warm --copies 8 --warm-from 4.5 --resolution 3.5 \
        --warm-steps 50 100 200 --out benchmarks/results/bench_gmm_warm_box160.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Optional

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def particle_map(copies: int, box: int, apix: float, spacing: float, snr: float, resolution: float,
                 seed: int, noise_seed: Optional[int] = None) -> np.ndarray:
    """``copies`` rotated ADK copies on a lattice, from atoms; noise at ``snr``; low-passed (Å).
    ``noise_seed``: another noise realisation of the same particle (default: drawn after the rotations)."""
    from benchmarks.assembly import lattice_copies
    from benchmarks.realistic.atom_maps import atom_map, atom_sigmas, read_b_factors
    from gmmcore.fourier import lowpass
    from gmmcore.io.pdb import atomic_numbers, builtin_model_path, read_atoms

    path = builtin_model_path("builtin:adk-closed")
    xyz, elements = read_atoms(path)
    sig, z = atom_sigmas(read_b_factors(path)), atomic_numbers(elements)
    xyz = xyz - xyz.mean(axis=0)
    rng = np.random.default_rng(seed)
    coords = lattice_copies(xyz, copies, spacing, rng)
    m = atom_map(coords, np.tile(z, copies), np.tile(sig, copies), box, apix).astype(np.float64)
    r = np.linalg.norm(np.indices(m.shape) - box // 2, axis=0)
    inside = r < 0.45 * box
    noise = rng if noise_seed is None else np.random.default_rng(noise_seed)
    m += noise.normal(0.0, np.sqrt(m[inside].var() / snr), m.shape)
    return lowpass(m.astype(np.float32), apix, resolution), len(coords)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--box", type=int, default=160)
    ap.add_argument("--apix", type=float, default=1.0)
    ap.add_argument("--spacing", type=float, default=46.0, help="lattice spacing of the copies, Å")
    ap.add_argument("--resolution", type=float, default=3.5, help="target resolution, Å")
    ap.add_argument("--snr", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--backend", default="tf", choices=["tf", "jax"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warm", action="store_true", help="time a second iteration's build: today's path vs warm")
    ap.add_argument("--warm-from", type=float, default=4.5, help="the previous iteration's band, Å (--warm)")
    ap.add_argument("--prev-steps", type=int, default=100, help="fit steps of the previous GMM (--warm)")
    ap.add_argument("--fresh-steps", type=int, default=300, help="fit steps of today's path (--warm)")
    ap.add_argument("--warm-steps", type=int, nargs="+", default=[50, 100, 200], help="warm fit steps (--warm)")
    ap.add_argument("--warm-fits", nargs="+", default=["hermitian", "fourier"], choices=["fourier", "hermitian"])
    ap.add_argument("--out", default="benchmarks/results/bench_gmm_build.json")
    args = ap.parse_args(argv)
    if args.warm:
        return warm_main(args)

    from gmmcore.backend import get_backend
    from gmmcore.gmm.build import estimate_n_gaussians, fit_gmm, seed_kmeans

    be = get_backend(args.backend)
    result = {"benchmark": __doc__.split("\n")[0], "params": vars(args),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
                          "load_average_at_start": list(os.getloadavg())},
              "sizes": []}
    for copies in args.copies:
        m, atoms = particle_map(copies, args.box, args.apix, args.spacing, args.snr, args.resolution, args.seed)
        row = {"copies": copies, "atoms": atoms}
        n, row["n_estimate_s"] = _timed(lambda: estimate_n_gaussians(m, args.apix, args.resolution, seed=args.seed))
        centres, row["kmeans_s"] = _timed(lambda: seed_kmeans(m, args.apix, n, seed=args.seed))
        row["n_gaussians"] = int(n)
        row["fits"] = {}
        for name, kw in (("fourier", {}), ("hermitian", {"hermitian": True})):
            t, c = time.perf_counter(), time.process_time()
            gmm, rep = fit_gmm(m, args.apix, centres, args.resolution, iterations=args.steps, backend=be, **kw)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            row["fits"][name] = {"seconds": wall, "cpu_seconds": cpu, "seconds_per_step": wall / (args.steps + 2),
                                 "fsc_mean": rep["fsc_mean"], "loss": rep["loss"], "loss_start": rep["loss_start"],
                                 "slabs": rep["slabs"]}
            print(f"copies {copies} N {n} {name:18s} {wall:7.1f} s ({wall / (args.steps + 2):.3f} s/step) "
                  f"FSC {rep['fsc_mean']:.4f} loss {rep['loss']:.4f}", flush=True)
        seed_s = row["n_estimate_s"] + row["kmeans_s"]
        base = row["fits"]["fourier"]["seconds"]
        row["speedup_fit"] = {k: base / v["seconds"] for k, v in row["fits"].items()}
        row["speedup_build"] = {k: (seed_s + base) / (seed_s + v["seconds"]) for k, v in row["fits"].items()}
        result["sizes"].append(row)
        print(f"copies {copies}: seeding {seed_s:.1f} s; fit speed-ups {row['speedup_fit']}", flush=True)
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def warm_main(args) -> int:
    """``--warm``: the second iteration's build, today's path vs the warm path (module notes)."""
    from gmmcore.backend import get_backend
    from gmmcore.gmm.build import build_gmm, estimate_n_gaussians, fit_gmm, seed_kmeans
    from gmmcore.gmm.warm import warm_start

    be = get_backend(args.backend)
    result = {"benchmark": "GMM building of a second iteration: seeded (today) vs warm-started (--gmm-start warm)",
              "params": vars(args),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
                          "load_average_at_start": list(os.getloadavg())},
              "sizes": []}
    for copies in args.copies:
        prev_map, atoms = particle_map(copies, args.box, args.apix, args.spacing, args.snr, args.warm_from, args.seed)
        new_map, _ = particle_map(copies, args.box, args.apix, args.spacing, args.snr, args.resolution, args.seed,
                                  noise_seed=args.seed + 1000)
        (prev, prep), t_prev = _timed(lambda: build_gmm(prev_map, args.apix, args.warm_from, seed=args.seed,
                                                         iterations=args.prev_steps, backend=be, hermitian=True))
        row = {"copies": copies, "atoms": atoms,
               "previous": {"resolution_A": args.warm_from, "n_gaussians": len(prev), "seconds": t_prev,
                            "fsc_mean": prep["fsc_mean"], "steps": args.prev_steps}}
        print(f"copies {copies}: previous GMM at {args.warm_from} Å: N {len(prev)}, FSC {prep['fsc_mean']:.4f}, "
              f"{t_prev:.1f} s", flush=True)
        n, t_n = _timed(lambda: estimate_n_gaussians(new_map, args.apix, args.resolution, seed=args.seed))
        centres, t_km = _timed(lambda: seed_kmeans(new_map, args.apix, n, seed=args.seed))
        (g, rep), t_fit = _timed(lambda: fit_gmm(new_map, args.apix, centres, args.resolution,
                                                 iterations=args.fresh_steps, backend=be))
        fresh = {"n_estimate_s": t_n, "kmeans_s": t_km, "fit_s": t_fit, "steps": args.fresh_steps,
                 "seconds_per_step": t_fit / (args.fresh_steps + 2), "total_s": t_n + t_km + t_fit,
                 "n_gaussians": int(n), "fsc_mean": rep["fsc_mean"], "loss": rep["loss"]}
        row["today"] = fresh
        print(f"  today: N estimate {t_n:.1f} s (N {n}), K-means {t_km:.1f} s, fit {args.fresh_steps} steps "
              f"{t_fit:.1f} s; FSC {rep['fsc_mean']:.4f} loss {rep['loss']:.4f}; total {fresh['total_s']:.1f} s",
              flush=True)
        start, t_start = _timed(lambda: warm_start(prev, new_map, args.apix, args.resolution))
        row["warm_start"] = {"seconds": t_start, "n_gaussians": len(start), "n_rule_vs_estimate": len(start) / n}
        row["warm"] = {}
        for fit in args.warm_fits:
            for steps in args.warm_steps:
                (g, rep), t_fit = _timed(lambda: fit_gmm(new_map, args.apix, start.centers, args.resolution,
                                                         iterations=steps, amplitudes0=start.amplitudes,
                                                         sigmas0=start.sigmas, backend=be,
                                                         hermitian=fit == "hermitian"))
                total = t_start + t_fit
                w = {"fit": fit, "steps": steps, "start_s": t_start, "fit_s": t_fit,
                     "seconds_per_step": t_fit / (steps + 2), "total_s": total, "fsc_mean": rep["fsc_mean"],
                     "loss": rep["loss"], "loss_start": rep["loss_start"],
                     "fsc_minus_today": rep["fsc_mean"] - fresh["fsc_mean"],
                     "speedup_vs_today": fresh["total_s"] / total}
                row["warm"][f"{fit}_{steps}"] = w
                print(f"  warm {fit} {steps} steps: start {t_start:.1f} s (N {len(start)}), fit {t_fit:.1f} s; "
                      f"FSC {rep['fsc_mean']:.4f} ({w['fsc_minus_today']:+.4f}) loss {rep['loss']:.4f}; "
                      f"{w['speedup_vs_today']:.1f}x today", flush=True)
        result["sizes"].append(row)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
