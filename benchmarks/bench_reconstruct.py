"""Reconstruction alone at box 160 (issue 20): half 1 of simulated raw particles (CTF, SNR 1)
reconstructed by the pre-issue-20 reference, the current reconstructor without its compiled kernel
("numpy"), the current one, alternating in one process on one core, and by ``relion_reconstruct
--ctf --pad 2`` on the same star (:func:`bench_iteration.compare_reconstruction`).

    .venv/bin/python -m benchmarks.bench_reconstruct [--n 1200 --box 160 --repeats 3]

Writes benchmarks/results/bench_reconstruct_box160.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main(argv=None) -> int:
    from benchmarks.bench_iteration import compare_reconstruction, simulate
    from gmmcore.backend import get_backend

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1200, help="simulated particles (half 1 is reconstructed)")
    ap.add_argument("--box", type=int, default=160)
    ap.add_argument("--apix", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="keep the simulated data here (default: a temporary folder)")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_reconstruct_box160.json"))
    ns = ap.parse_args(argv)
    tmp = tempfile.TemporaryDirectory() if ns.workdir is None else None
    work = Path(ns.workdir or tmp.name)
    t = time.perf_counter()
    table, _ = simulate(work, ns.n, ns.box, ns.apix, get_backend("tf"))
    res = {"params": vars(ns), "python": platform.python_version(), "numpy": np.__version__,
           "cpu": "1 process, 2-core machine", "load_average_at_start": list(os.getloadavg()),
           "simulate_s": time.perf_counter() - t}
    res["reconstruction_comparison"] = cmp = compare_reconstruction(table, work, ns.repeats)
    res["load_average_at_end"] = list(os.getloadavg())
    med = cmp["median_seconds"]
    print("median s: " + ", ".join(f"{k} {v:.2f}" for k, v in med.items())
          + f"; reference/current {cmp['speedup_median']:.2f}x; identical maps {cmp['identical_maps']}")
    Path(ns.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
