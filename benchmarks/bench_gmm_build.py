"""GMM building of a large particle, per phase: the default fit and its Hermitian variant
(``--gmm-fit hermitian``), side by side on the same map and seeds.

The map is made from atoms, never from our GMM (``benchmarks/realistic/atom_maps.py``): ``--copies``
copies of the bundled adenylate kinase (closed), each turned by a random rotation, on a cubic
lattice of ``--spacing`` Å around the box centre (8 copies ≈ 190 kDa fill a box-160 particle at
1 Å/px), plus white noise at ``--snr`` (signal variance inside the particle / noise variance, as a
half map of a real refinement), low-passed to the target resolution as the refinement does before
fitting.  Seeding (the N estimate and K-means) runs once and is timed; each fit then starts
from the same centres for ``--steps`` steps (the refinement's default is 300).  Reported per method:
seconds per step, the fit's wall time, the map-vs-GMM FSC and loss after the same steps.

    .venv/bin/python -m benchmarks.bench_gmm_build --copies 1 8 --steps 100 \
        --out benchmarks/results/bench_gmm_build.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def particle_map(copies: int, box: int, apix: float, spacing: float, snr: float, resolution: float,
                 seed: int) -> np.ndarray:
    """``copies`` rotated ADK copies on a lattice, from atoms; noise at ``snr``; low-passed (Å)."""
    from scipy.spatial.transform import Rotation

    from benchmarks.realistic.atom_maps import atom_map, atom_sigmas, read_b_factors
    from gmmcore.fourier import lowpass
    from gmmcore.io.pdb import atomic_numbers, builtin_model_path, read_atoms

    path = builtin_model_path("builtin:adk-closed")
    xyz, elements = read_atoms(path)
    sig, z = atom_sigmas(read_b_factors(path)), atomic_numbers(elements)
    xyz = xyz - xyz.mean(axis=0)
    rng = np.random.default_rng(seed)
    side = int(np.ceil(copies ** (1.0 / 3.0) - 1e-9))
    sites = np.array([(i, j, k) for i in range(side) for j in range(side) for k in range(side)][:copies], float)
    sites = (sites - sites.mean(axis=0)) * spacing
    coords = np.concatenate([xyz @ Rotation.random(random_state=rng).as_matrix().T + s for s in sites])
    m = atom_map(coords, np.tile(z, copies), np.tile(sig, copies), box, apix).astype(np.float64)
    r = np.linalg.norm(np.indices(m.shape) - box // 2, axis=0)
    inside = r < 0.45 * box
    m += rng.normal(0.0, np.sqrt(m[inside].var() / snr), m.shape)
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
    ap.add_argument("--out", default="benchmarks/results/bench_gmm_build.json")
    args = ap.parse_args(argv)

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
        t = time.perf_counter()
        n = estimate_n_gaussians(m, args.apix, args.resolution, seed=args.seed)
        row["n_estimate_s"] = time.perf_counter() - t
        t = time.perf_counter()
        centres = seed_kmeans(m, args.apix, n, seed=args.seed)
        row["kmeans_s"] = time.perf_counter() - t
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


if __name__ == "__main__":
    raise SystemExit(main())
