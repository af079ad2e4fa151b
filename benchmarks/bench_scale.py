"""One refinement iteration in this process and on 1 and 2 local Dask workers: wall time, where the
time goes (compute vs communication), and the per-unit costs behind the README's scale model.

    .venv/bin/python benchmarks/bench_scale.py            # ≈ 5–10 min on 2 CPU cores → results/bench_scale.json

Part 1 — measured runs (simulated ADK, ``--particles`` 1000, box 64, 1.2 Å/px, SNR 1): iteration 0
is made once; iteration 1 then runs from the same state in three ways, side by side: the
in-process executor (today's default), a local Dask cluster of 1 worker process, and of 2 worker
processes (CPU workers; each gets cores/workers array-library threads).  Workers are warmed up
(array library imported, device chosen) before the clock starts, as they are after the first unit
of a real run.  Per configuration: wall time of the iteration, wall time per phase (GMM fits, ring
weights, alignment chunks, reconstruction; the rest is the driver's own serial work: FSC, files),
and per Dask unit its compute seconds inside the worker and its communication (from the moment the
unit could start on its worker — submitted and the worker free — to the moment its compute
started, plus from the end of its compute to its result arriving here); the reconstruction's
reduction tree is counted as communication for the part of its wall time no worker spent
computing.  Poses are compared with the in-process run.

Part 2 — per-unit costs at the paper's scale that need no GPU (box 196): reconstruction insertion
time per particle, the bytes and add time of one partial sum, the finish (gridding correction and
inversion), the FSC report — as CPU time of the process (the cost on a core of its own: this
machine is shared) and wall time — and Dask's per-unit latency and loopback bandwidth here.

Part 3 — the model (README): expected iteration time for N nodes × G GPUs at 400,000 particles,
box 196, 3 Å, from the figures above and the paper's single-GPU alignment speed.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("GMMCORE_NO_PROGRESS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PAPER = {"particles": 400_000, "box": 196, "resolution_A": 3.0, "hours_per_iteration_one_gpu": 2.0,
         "gpu": "RTX A5000", "source": "Chen, Schmid & Chiu, Nat Methods 2024 (DESIGN.md §4)"}


class TimedExecutor:
    """Delegates to an executor and records the wall time of every call (one phase per call)."""

    def __init__(self, ex):
        self.ex = ex
        self.calls = []

    def __getattr__(self, name):
        return getattr(self.ex, name)

    def _timed(self, kind, units, fn, *a):
        t0 = time.time()
        out = fn(*a)
        self.calls.append({"kind": kind, "units": len(units), "t0": t0, "t1": time.time()})
        return out

    def run(self, units, on_done=None):
        kind = getattr(units[0].fn, "__name__", "unit") if units else "none"
        return self._timed(kind, units, self.ex.run, units, on_done)

    def map_reduce(self, groups, combine, finish=None):
        kind = getattr(groups[0][0].fn, "__name__", "unit")
        return self._timed(kind, [u for g in groups for u in g], self.ex.map_reduce, groups, combine, finish)


def communication(stats, calls, n_workers):
    """Split the Dask units' time into compute and communication (see the module notes)."""
    by_kind = {}
    for c in calls:
        units = [s for s in stats if c["t0"] - 1e-3 <= s["submitted"] <= c["t1"]]
        compute = sum(s["seconds"] for s in units)
        cpu = sum(s.get("cpu_seconds", 0.0) for s in units)
        if c["kind"] == "partial_sums":  # the reduction tree: wall not spent computing on the busiest worker
            busy = {}
            for s in units:
                busy[s["worker"]] = busy.get(s["worker"], 0.0) + s["seconds"]
            comm = max(0.0, (c["t1"] - c["t0"]) - max(busy.values(), default=0.0))
        else:
            comm, last = 0.0, {}
            for s in sorted(units, key=lambda s: s["started"]):
                ready = max(s["submitted"], last.get(s["worker"], 0.0))
                comm += max(0.0, s["started"] - ready) + max(0.0, s["received"] - s["finished"])
                last[s["worker"]] = s["finished"]
        k = by_kind.setdefault(c["kind"], {"wall": 0.0, "compute": 0.0, "cpu": 0.0, "communication": 0.0,
                                           "units": 0})
        k["wall"] += c["t1"] - c["t0"]
        k["compute"] += compute
        k["cpu"] += cpu
        k["communication"] += comm
        k["units"] += len(units)
    return by_kind


def measured_runs(args, work: Path) -> dict:
    from gmmcore.backend import get_backend
    from gmmcore.geometry import angular_distance
    from gmmcore.io.star import read_star
    from gmmcore.parallel import local_executor
    from gmmcore.parallel.clusters import ExecutionOptions, open_executor
    from gmmcore.parallel.worker import WorkerSetup, ensure_device
    from gmmcore.refine import loop
    from gmmcore.refine.global_refine import RefineParams
    from gmmcore.refine.rundir import RunDir
    from gmmcore.refine.state import IterationPlan, follow_fsc
    from gmmcore.simulate import simulate_dataset

    sim = simulate_dataset(work / "sim", n_particles=args.particles, box=args.box, apix=args.apix, snr=1.0,
                           perturb_angle_deg=3.0, perturb_shift_px=1.0, seed=1, show_progress=False)
    table = read_star(sim["perturbed_star"])
    p = RefineParams(particles=str(sim["perturbed_star"]), out=str(work / "base"), chunk=args.chunk, steps=args.steps,
                     maxres=args.maxres, cpu=True)
    backend = get_backend()
    backend.describe_devices(None, cpu_only=True)
    base = RunDir.create_or_continue(work / "base", {}, ())
    logging.getLogger("gmmcore.refine").setLevel(logging.WARNING)
    begin = loop.start(table, base, "C1", 2, args.chunk)
    plan = IterationPlan(sym="C1", fsc_mask=begin.fsc_mask, band=follow_fsc(p.minres, args.apix, p.maxres),
                         align=p.align_settings(), prior=table.poses, pad=2)
    runs, poses = [], {}
    for name, n in [("in-process", None)] + [(f"dask, {k} worker(s)", k) for k in args.workers]:
        d = work / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        shutil.copytree(work / "base", d)
        run = RunDir(d)
        if n is None:
            ex = local_executor()
        else:
            ex = open_executor(ExecutionOptions(workers=n, cpu=True))
            ex.client.run(ensure_device, WorkerSetup(cpu_only=True))  # warm-up: array library imported
        timed = TimedExecutor(ex)
        load = os.getloadavg()
        t0 = time.time()
        state, record = loop.iterate(table, begin.state, plan, backend, run.iteration(1), executor=timed)
        wall = time.time() - t0
        poses[name] = state.poses
        phase_wall = {}
        for c in timed.calls:
            phase_wall[c["kind"]] = phase_wall.get(c["kind"], 0.0) + c["t1"] - c["t0"]
        entry = {"config": name, "workers": n or 0, "wall_s": wall, "phase_wall_s": phase_wall,
                 "driver_serial_s": wall - sum(phase_wall.values()), "resolution_A": record.resolution,
                 "load_average_1min": [load[0], os.getloadavg()[0]]}
        if n is not None:
            kinds = communication(ex.stats, timed.calls, n)
            compute = sum(k["compute"] for k in kinds.values())
            comm = sum(k["communication"] for k in kinds.values())
            # alignment chunks per (worker, half): the first one also compiles the optimiser
            per = {}
            for s in sorted(ex.stats, key=lambda s: s["started"]):
                if " chunk " in s["label"]:
                    n_ptcl = int(s["label"].split("(")[1].split()[0])
                    per.setdefault((s["worker"], s["label"].split(" chunk")[0]), []).append((s["seconds"], n_ptcl))
            steady = [(t, k) for v in per.values() for t, k in v[1:]]
            first = [v[0] for v in per.values()]
            steady_rate = sum(t for t, _ in steady) / max(sum(k for _, k in steady), 1) if steady else None
            entry.update({"by_unit_kind": kinds, "compute_s": compute, "communication_s": comm,
                          "communication_fraction": comm / max(compute + comm, 1e-9),
                          "worker_busy_fraction": compute / (n * wall),
                          "align_s_per_particle_steady": steady_rate,
                          "align_first_chunk_extra_s_mean": (float(np.mean([t - k * steady_rate for t, k in first]))
                                                             if steady_rate is not None else None),
                          "chunks_by_worker_and_half": {f"{w} / {h}": v for (w, h), v in per.items()}})
            ex.close()
        runs.append(entry)
        print(json.dumps({k: v for k, v in entry.items() if k != "by_unit_kind"}, default=float), flush=True)
    ref = poses["in-process"]
    for e in runs:
        q = poses[e["config"]]
        e["max_angle_diff_deg_vs_in_process"] = float(angular_distance(ref.rotation, q.rotation).max())
        e["max_shift_diff_A_vs_in_process"] = float(np.abs(ref.origin_A - q.origin_A).max())
    # bytes per unit kind at this scale (what a unit's arguments weigh when sent to a worker)
    from gmmcore.io.stacks import worker_table

    lean = worker_table(table)
    rows = table.half_rows()[1][: args.chunk]
    chunk_args = (lean.subset(rows), table.poses.subset(rows), table.poses.subset(rows))
    import cloudpickle

    per_particle = len(cloudpickle.dumps(chunk_args)) / len(rows)
    problem = {"particles": args.particles, "box": args.box, "apix": args.apix, "snr": 1.0, "chunk": args.chunk,
               "steps": args.steps, "maxres_A": args.maxres, "target_resolution_A": plan.band(begin.state.resolution_A).resolution_A,
               "alignment_chunks_per_half": math.ceil(table.half_rows()[1].size / args.chunk)}
    return {"problem": problem, "runs": runs, "chunk_arg_bytes_per_particle": per_particle}


def paper_scale_costs(args) -> dict:
    """Per-unit costs at box 196 that need no GPU, and Dask's latency / bandwidth here."""
    from gmmcore.fsc import half_map_report
    from gmmcore.masks import soft_sphere_mask
    from gmmcore.particles import CTFParams
    from gmmcore.reconstruct import Reconstructor, added

    box, apix, n = PAPER["box"], 1.06, args.recon_particles
    rng = np.random.default_rng(0)
    imgs = rng.normal(size=(n, box, box)).astype(np.float32)
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    R = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                  2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                  2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=1).reshape(n, 3, 3)
    ctf = CTFParams.constant(n, defocus=15000.0)
    # CPU time of this process (what the step costs on a core of its own; this machine is shared)
    # and wall time
    def timed(f, *a):
        t0, c0 = time.perf_counter(), time.process_time()
        out = f(*a)
        return out, time.process_time() - c0, time.perf_counter() - t0

    rec = Reconstructor(box, apix, pad=2)
    _, insert_cpu, insert_wall = timed(rec.insert, imgs, R, np.zeros((n, 2)), ctf, True)
    partial_bytes = rec.acc.nbytes
    both, add_cpu, add_wall = timed(added, rec, rec)
    del both
    vol, finish_cpu, finish_wall = timed(rec.finish)
    del rec
    mask = soft_sphere_mask(box, box * 0.4, 5)
    _, fsc_cpu, fsc_wall = timed(half_map_report, vol, vol + rng.normal(size=vol.shape).astype(np.float32), apix, mask)
    load = os.getloadavg()[0]

    # Dask here: per-unit latency (a no-op round trip) and loopback bandwidth worker → here
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cl, Client(cl) as c:
        c.submit(int, 0, pure=False).result()
        t0 = time.perf_counter()
        for i in range(args.latency_tasks):
            c.submit(int, i, pure=False).result()
        latency = (time.perf_counter() - t0) / args.latency_tasks
        from distributed import wait

        size = 200_000_000
        fut = c.submit(np.ones, size // 8, pure=False)
        wait(fut)
        t0 = time.perf_counter()
        fut.result()
        bandwidth = size / (time.perf_counter() - t0)
    return {"box": box, "pad": 2, "recon_particles_timed": n, "load_average_1min": load,
            "recon_insert_s_per_particle_one_core": insert_cpu / n, "recon_insert_wall_s_per_particle": insert_wall / n,
            "partial_sum_bytes": partial_bytes, "partial_add_s": add_cpu, "partial_add_wall_s": add_wall,
            "recon_finish_s": finish_cpu, "recon_finish_wall_s": finish_wall, "fsc_report_s": fsc_cpu,
            "fsc_report_wall_s": fsc_wall, "dask_unit_latency_s": latency, "dask_loopback_bytes_per_s": bandwidth}


def model(costs: dict, arg_bytes_per_particle: float, compile_s: float, network_Bps: float = 1.25e9) -> dict:
    """Expected seconds per iteration for N nodes × G GPUs at the paper's scale (see README).
    ``compile_s``: compiling the pose optimiser, once per worker and half (measured here on CPU)."""
    P = PAPER["particles"]
    t_align = PAPER["hours_per_iteration_one_gpu"] * 3600 / P  # s per particle per GPU (upper bound)
    t_rec = costs["recon_insert_s_per_particle_one_core"]
    S = costs["partial_sum_bytes"]
    out = []
    for N in (1, 2, 4, 8):
        for G in (1, 2, 4, 8):
            W = N * G
            # chunk so that every worker gets ≥ 2 chunks (load balance), at most 20,000 particles
            chunk = int(min(20000, max(1000, P / (2 * W * 2))))
            n_chunks = 2 * math.ceil(P / 2 / chunk)
            rounds = math.ceil(n_chunks / W)
            align = rounds * chunk * t_align
            # reconstruction: the same chunks as partial sums (one core per worker), a log2 tree per half
            rec = rounds * chunk * t_rec
            depth = math.ceil(math.log2(max(n_chunks // 2, 1))) if n_chunks > 2 else 0
            bw = network_Bps if N > 1 else costs["dask_loopback_bytes_per_s"]
            reduce_ = depth * (S / bw + costs["partial_add_s"]) + costs["recon_finish_s"]
            # communication of alignment units: particle rows out, poses back, per-unit latency
            comm_align = rounds * (chunk * (arg_bytes_per_particle + 13 * 8) / bw + costs["dask_unit_latency_s"])
            driver = costs["fsc_report_s"]
            compile_ = 2 * compile_s  # every worker may compile for both halves
            total = align + compile_ + rec + reduce_ + comm_align + driver
            out.append({"nodes": N, "gpus_per_node": G, "workers": W, "chunk": chunk, "alignment_s": align,
                        "compile_s": compile_,
                        "reconstruction_s": rec, "reduction_and_finish_s": reduce_,
                        "alignment_communication_s": comm_align, "driver_s": driver, "total_s": total,
                        "total_h": total / 3600, "speedup_vs_1_gpu": None})
    one = next(e for e in out if e["workers"] == 1)["total_s"]
    for e in out:
        e["speedup_vs_1_gpu"] = one / e["total_s"]
    return {"assumptions": {"alignment_s_per_particle_per_gpu": t_align, "network_bytes_per_s_between_nodes": network_Bps,
                            "compile_s_per_worker_and_half": compile_s,
                            "gmm_fit": "not included: one fit per half, the two in parallel, a fixed cost F per "
                                       "iteration independent of N and G (not measurable here without a GPU)"},
            "grid": out}


def _compile_s(part1: dict) -> float:
    """The optimiser's compile time measured with one worker (the first chunk of a half minus the
    steady per-particle time)."""
    one = [r for r in part1["runs"] if r["workers"] == 1]
    return float(one[0]["align_first_chunk_extra_s_mean"]) if one else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--particles", type=int, default=1000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--apix", type=float, default=1.2)
    ap.add_argument("--chunk", type=int, default=125)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--maxres", type=float, default=6.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--recon-particles", type=int, default=40)
    ap.add_argument("--latency-tasks", type=int, default=50)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_scale.json"))
    ap.add_argument("--model-only", action="store_true", help="recompute the model of an existing --out")
    args = ap.parse_args()
    if args.model_only:
        result = json.loads(Path(args.out).read_text())
        result["model"] = model(result["paper_scale_unit_costs"], result["measured"]["chunk_arg_bytes_per_particle"],
                                _compile_s(result["measured"]))
        Path(args.out).write_text(json.dumps(result, indent=1, default=float))
        print(json.dumps(result["model"]["assumptions"], indent=1))
        return
    import tensorflow as tf

    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        part1 = measured_runs(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    part2 = paper_scale_costs(args)
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__, "tensorflow": tf.__version__,
                    "dask": __import__("dask").__version__, "device": "CPU only (no GPU on this machine)",
                    "load_average_at_end": os.getloadavg()},
        "measured": part1, "paper_scale_unit_costs": part2, "paper": PAPER,
        "model": model(part2, part1["chunk_arg_bytes_per_particle"], _compile_s(part1)),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps({"paper_scale_unit_costs": part2}, indent=1, default=float))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
