"""Memory of a refinement as the dataset grows (box 64): 10,000 / 40,000 / 100,000 particles.

Simulates the largest dataset once (cached under benchmarks/work/) and takes the first n particles of
it for each size (from 40,000 on, every half fills the 20,000-particle chunks), then runs one
refinement iteration of each in a fresh process (`gmmcore refine --iter 1`) and samples, every
0.1 s, every process of the tree (the refine process and its spawned workers) from Linux's
``/proc/PID/status`` and ``/proc/PID/smaps_rollup``:

* **anonymous memory** (``RssAnon``) summed over the tree — what the run itself holds (arrays,
  interpreter heaps, the backends' buffers); this is the figure to plan a machine by;
* **PSS** summed over the tree — resident memory with shared pages divided among the processes that
  map them (what the tree costs the machine, counted once);
* **file-backed pages** (``RssFile``) summed over the tree — pages of the memory-mapped particle
  stack and of shared libraries; the kernel drops them under pressure, and summing them over
  processes counts a shared page once per process (the earlier "tree RSS" figure did so);
* the old summed RSS, for comparison, and wall time.

Each figure is the peak of the sampled sums.  The slope per particle (least squares over the sizes)
is reported for each.  Images are read 1,024 at a time whatever the chunk (`--chunk`, default
20,000, is the checkpoint unit), so anonymous memory should not grow with the number of particles
beyond the per-particle metadata (poses, CTF, scores: ~1 KB).

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


def _proc_memory_kB(pid: int) -> dict:
    """RssAnon, RssFile, RssShmem, VmRSS (status) and Pss (smaps_rollup) of one process, kB."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key = line.split(":", 1)[0]
            if key in ("RssAnon", "RssFile", "RssShmem", "VmRSS"):
                out[key] = int(line.split()[1])
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    out["Pss"] = int(line.split()[1])
    except OSError:
        pass
    return out


def run_tree_sampled(cmd, env, interval: float = 0.1):
    """Run ``cmd``; return (completed process, {figure: peak over time of the sum over the process
    and all its descendants, MB}) for anonymous, file-backed, PSS and plain RSS."""
    import psutil

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = {"anon": 0, "file": 0, "pss": 0, "rss": 0}
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            procs = []
        tot = dict.fromkeys(peak, 0)
        for p in procs:
            try:
                m = _proc_memory_kB(p.pid)
            except OSError:
                continue
            tot["anon"] += m.get("RssAnon", 0)
            tot["file"] += m.get("RssFile", 0) + m.get("RssShmem", 0)
            tot["pss"] += m.get("Pss", 0)
            tot["rss"] += m.get("VmRSS", 0)
        for k in peak:
            peak[k] = max(peak[k], tot[k])
        time.sleep(interval)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), {k: v / 1024 for k, v in peak.items()}


def slopes_kB_per_particle(results: list) -> dict:
    """Least-squares slope of each peak figure against the number of particles, kB per particle."""
    if len(results) < 2:
        return {}
    n = np.array([r["n_particles"] for r in results], float)
    keys = ("peak_anon_MB", "peak_pss_MB", "peak_file_MB", "peak_tree_rss_MB")
    return {k.replace("peak_", "").replace("_MB", "") + "_kB_per_particle":
            round(float(np.polyfit(n, [r[k] * 1024 for r in results], 1)[0]), 3) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 40000, 100000])
    ap.add_argument("--steps", type=int, default=3, help="pose steps per particle (fewer = faster; memory is the point)")
    ap.add_argument("--chunk", type=int, default=20000)
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument("--out", default=str(HERE / "results" / "bench_memory.json"))
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
        proc, peak = run_tree_sampled(cmd, env)
        last = json.loads(proc.stdout.strip().splitlines()[-1])
        if last["rc"] != 0:
            raise SystemExit(proc.stderr[-3000:])
        summary = json.loads((out / "summary.json").read_text())
        results.append({"n_particles": n, "box": 64, "chunk": args.chunk, "steps": args.steps,
                        "peak_anon_MB": round(peak["anon"], 1), "peak_pss_MB": round(peak["pss"], 1),
                        "peak_file_MB": round(peak["file"], 1), "peak_tree_rss_MB": round(peak["rss"], 1),
                        "peak_rss_largest_process_MB": round(last["maxrss_kB"] / 1024, 1),
                        "seconds": round(time.time() - t0, 1),
                        "resolution_initial_A": summary["initial"]["resolution"],
                        "resolution_after_A": summary["iterations"][-1]["resolution"]})
        print(results[-1], flush=True)
    doc = {"benchmark": "peak memory of `gmmcore refine --iter 1` vs number of particles",
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
           "what": "peaks over time of memory summed over `gmmcore refine` and its worker processes, sampled "
                   "every 0.1 s from /proc: anonymous (RssAnon: what the run holds), PSS (shared pages divided "
                   "among processes), file-backed (RssFile+RssShmem: memory-mapped stack and libraries, "
                   "droppable, counted once per process), and plain summed RSS (the earlier, inflated figure); "
                   "plus the largest single process (ru_maxrss)",
           "results": results, "slopes": slopes_kB_per_particle(results)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
