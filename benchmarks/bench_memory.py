"""Peak memory of a refinement as the dataset grows (box 64): 10,000 / 40,000 / 100,000 particles.

Simulates the largest dataset once (cached under benchmarks/work/) and takes the first n particles of
it for each size (from 40,000 on, every half fills the 20,000-particle chunks), then runs one
refinement iteration of each in a fresh process (`gmmcore refine --iter 1`) and records

* the peak resident memory of the **whole process tree** — the refine process and its workers
  (the half-map reconstructions run in two spawned processes), their resident sets summed,
  sampled every 0.1 s with psutil;
* the largest single process (ru_maxrss of the children, exact);
* wall time.

Images are read 1,024 at a time whatever the chunk (`--chunk`, default 20,000, is the checkpoint
unit), so peak memory should not grow with the number of particles.

    python benchmarks/bench_memory.py [--sizes 10000 100000] [--steps 3]

Writes benchmarks/results/bench_memory.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def run_measured(cmd, env) -> dict:
    t0 = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return {"seconds": round(time.time() - t0, 1), "peak_rss_MB": round(max(after, before) / 1024, 1),
            "peak_rss_exact": after > before, "stdout_tail": proc.stdout.strip().splitlines()[-3:]}


def run_tree_sampled(cmd, env, interval: float = 0.1):
    """Run ``cmd``; return (completed process, peak summed RSS of it and all its descendants, MB)."""
    import psutil

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, total)
        except psutil.Error:
            pass
        time.sleep(interval)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 40000, 100000])
    ap.add_argument("--steps", type=int, default=3, help="pose steps per particle (fewer = faster; memory is the point)")
    ap.add_argument("--chunk", type=int, default=20000)
    ap.add_argument("--work", default=str(HERE / "work"))
    args = ap.parse_args()
    env = dict(os.environ, GMMCORE_NO_PROGRESS="1", TF_CPP_MIN_LOG_LEVEL="3")
    py = sys.executable
    results = []
    # Largest first: ru_maxrss of children is a running maximum, so each size runs in its own
    # measuring process to keep the figures separate.
    n_max = max(args.sizes)
    sim = Path(args.work) / f"sim_{n_max}"
    if not (sim / "particles_perturbed.star").exists():
        subprocess.run([py, "-m", "gmmcore", "simulate", "--n", str(n_max), "--box", "64", "--apix", "1.2",
                        "--snr", "1.0", "--seed", "3", "--out", str(sim)], env=env, check=True,
                       capture_output=True)
    from gmmcore.io.star import read_star, write_star

    full = read_star(sim / "particles_perturbed.star")
    for n in args.sizes:
        star = sim / f"first_{n}.star"
        if not star.exists():
            write_star(full.subset(np.arange(n)), star)
        out = Path(args.work) / f"refine_{n}"
        cmd = [py, "-c", "import json,resource,subprocess,sys;"
               "r=subprocess.run(sys.argv[1:]).returncode;"
               "print(json.dumps({'rc': r, 'maxrss_kB': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))",
               py, "-m", "gmmcore", "refine", "--particles", str(star), "--iter", "1",
               "--steps", str(args.steps), "--chunk", str(args.chunk), "--new-split", "--out", str(out)]
        if out.exists():
            import shutil

            shutil.rmtree(out)
        t0 = time.time()
        proc, tree_mb = run_tree_sampled(cmd, env)
        last = json.loads(proc.stdout.strip().splitlines()[-1])
        if last["rc"] != 0:
            raise SystemExit(proc.stderr[-3000:])
        summary = json.loads((out / "summary.json").read_text())
        results.append({"n_particles": n, "box": 64, "chunk": args.chunk, "steps": args.steps,
                        "peak_tree_rss_MB": round(tree_mb, 1),
                        "peak_rss_largest_process_MB": round(last["maxrss_kB"] / 1024, 1),
                        "seconds": round(time.time() - t0, 1),
                        "resolution_initial_A": summary["initial"]["resolution"],
                        "resolution_after_A": summary["iterations"][-1]["resolution"]})
        print(results[-1], flush=True)
    doc = {"benchmark": "peak memory of `gmmcore refine --iter 1` vs number of particles",
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
           "what": "peak resident memory of `gmmcore refine` and its worker processes together (RSS summed, "
                   "sampled every 0.1 s) and of its largest single process (ru_maxrss)",
           "results": results}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bench_memory.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
