"""One million particles end to end (box 32): import --metadata-only, refine --iter 1, export.

A **scale check, not a science one**: the images repeat.  ``gmmcore simulate`` makes a modest
number of distinct noise-free particles (``--distinct``, default 20,000; bundled ADK model, box 32,
3.5 Å/px, CTF), and the N-image stack holds, for image i, distinct particle i mod M plus fresh
white noise (SNR 1 as ``gmmcore simulate`` defines it).  The RELION 3.1 star has N rows: one
optics group, the distinct particle's true pose perturbed afresh per row (3°, 1 px), its defocus,
a random balanced half split.  Everything is deterministic from ``--seed``; the noise of image i
depends only on the seed and i, and the star of n rows is the first n rows of the largest one,
so every size reads a prefix of one stack (cached under benchmarks/work/, git-ignored; built in
chunks through a memory map, never whole in memory).

Each verb runs in a fresh process (`nice -n 10`), measured by
:func:`bench_memory.run_tree_sampled` (RssAnon, PSS, file-backed pages summed over the process
tree, sampled every 0.2 s; the peak of the sums), wall time and CPU time (user + system of the
process tree, from ``getrusage(RUSAGE_CHILDREN)``):

(a) ``gmmcore import --star S --metadata-only --out I``  (no phase flipping: refine reads raw
    images and flips them on the fly, so a flipped copy of the stack is not needed);
(b) ``gmmcore refine --particles I/particles.star --iter 1`` with short settings (``--maxres``,
    ``--steps``, ``--ngauss``, ``--batch``);
(c) ``gmmcore export --particles R/final/particles.star --format relion --reference S``.

Slopes per particle (least squares over the sizes) of wall time, CPU time and peak anonymous
memory show whether anything grows faster than linearly (the largest size's per-particle figures
against the smallest's say the same).

    python benchmarks/bench_million.py --sizes 100000 300000 1000000 [--steps 2] [--verbs import refine export]

Writes benchmarks/results/bench_million.json (merged with what an earlier run of other sizes wrote).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_memory import run_tree_sampled  # noqa: E402  (the one sampler: /proc of the whole process tree)

BOX = 32
APIX = 3.5
SNR = 1.0
PERTURB_ANGLE_DEG = 3.0
PERTURB_SHIFT_PX = 1.0
NOISE_CHUNK = 16384  # images per noise stream (image i's noise depends on the seed and i only)
STACK = "particles.mrcs"


def _env() -> dict:
    return dict(os.environ, GMMCORE_NO_PROGRESS="1", TF_CPP_MIN_LOG_LEVEL="3",
                PYTHONPATH=os.pathsep.join([str(HERE.parent)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))


def distinct_particles(work: Path, m: int, seed: int) -> Path:
    """``gmmcore simulate`` of m noise-free particles (box 32, CTF applied), cached."""
    out = work / f"distinct_{m}_seed{seed}"
    if not (out / "simulation.json").exists():
        if out.exists():
            shutil.rmtree(out)
        subprocess.run([sys.executable, "-m", "gmmcore", "simulate", "--n", str(m), "--box", str(BOX),
                        "--apix", str(APIX), "--snr", "0", "--perturb-angle", "0", "--perturb-shift", "0",
                        "--seed", str(seed), "--out", str(out)], env=_env(), check=True)
    return out


def _noise_sigma(base: Path) -> float:
    sig_var = json.loads((base / "simulation.json").read_text())["signal_variance"]
    return float(np.sqrt(sig_var / SNR))


def write_stack(path: Path, base: Path, n: int, seed: int) -> dict:
    """N-image stack: image i = distinct image (i mod M) + fresh noise, written through a memory map."""
    import mrcfile

    from gmmcore.io.mrc import open_mrc

    with open_mrc(base / STACK, what="stack") as m:
        clean = np.asarray(m.data, np.float32).copy()
    sigma = _noise_sigma(base)
    tmp = path.with_name(path.name + ".part")
    t0 = time.time()
    with mrcfile.new_mmap(str(tmp), shape=(n, BOX, BOX), mrc_mode=2, overwrite=True) as mrc:
        mrc.set_image_stack()
        mrc.voxel_size = APIX
        for c, i0 in enumerate(range(0, n, NOISE_CHUNK)):
            i1 = min(n, i0 + NOISE_CHUNK)
            rng = np.random.default_rng([seed, 5, c])
            imgs = clean[np.arange(i0, i1) % len(clean)]
            imgs += sigma * rng.standard_normal(imgs.shape, dtype=np.float32)
            mrc.data[i0:i1] = imgs
        # header statistics of the clean set (the stack's own would need a pass over 4 GB)
        mrc.header.dmin, mrc.header.dmax = float(clean.min() - 5 * sigma), float(clean.max() + 5 * sigma)
        mrc.header.dmean, mrc.header.rms = float(clean.mean()), float(np.sqrt(clean.var() + sigma ** 2))
    os.replace(tmp, path)
    return {"seconds": round(time.time() - t0, 1), "noise_sigma": sigma}


def particle_rows(base: Path, n: int, seed: int):
    """The N-row ParticleTable (image i = distinct particle i mod M; poses perturbed per row)."""
    from gmmcore.geometry import perturb_rotations
    from gmmcore.particles import CTFParams, ParticleTable

    with np.load(base / "truth.npz") as z:
        truth = {k: z[k] for k in z.files}
    m = len(truth["rotations"])
    j = np.arange(n) % m
    rng = np.random.default_rng([seed, 6])
    rot = perturb_rotations(truth["rotations"][j], PERTURB_ANGLE_DEG, rng)
    phi = rng.uniform(0, 2 * np.pi, n)
    origin = truth["origins_A"][j] + PERTURB_SHIFT_PX * APIX * np.stack([np.cos(phi), np.sin(phi)], axis=1)
    half = np.where(rng.permutation(n) < (n + 1) // 2, 1, 2).astype(np.int8)
    sim = json.loads((base / "simulation.json").read_text())["params"]
    ctf = CTFParams(defocus_u=truth["defocus_u"][j], defocus_v=truth["defocus_v"][j],
                    defocus_angle=truth["defocus_angle"][j], voltage=np.full(n, sim["voltage"]),
                    cs=truth["cs"][j], amp_contrast=truth["amp_contrast"][j], phase_shift=np.zeros(n),
                    bfactor=np.zeros(n))
    names = np.char.add(np.char.zfill(np.arange(1, n + 1).astype(str), 7), "@" + STACK).astype(object)
    return ParticleTable(image_name=names, rotation=rot, origin=origin, half=half,
                         optics_group=np.ones(n, np.int32), apix=np.full(n, APIX),
                         image_size=np.full(n, BOX, np.int32), ctf=ctf, phase_flipped=False,
                         source="bench_million", meta={"format": "relion"})


def dataset(work: Path, sizes, m: int, seed: int) -> dict:
    """Stack of max(sizes) images and one star per size (its first n rows), cached in ``work``."""
    from gmmcore.io.star import write_star

    n_max = max(sizes)
    base = distinct_particles(work, m, seed)
    d = work / f"million_seed{seed}_m{m}"
    d.mkdir(parents=True, exist_ok=True)
    info = {"distinct": m, "seed": seed, "folder": str(d)}
    stack = d / STACK
    have = 0
    if stack.exists():
        import mrcfile

        with mrcfile.open(str(stack), header_only=True) as h:
            have = int(h.header.nz)
    if have < n_max:
        info["stack"] = write_stack(stack, base, n_max, seed)
    info["stack_GB"] = round(stack.stat().st_size / 1e9, 2)
    table = None
    for n in sizes:
        star = d / f"particles_{n}.star"
        if not star.exists():
            if table is None:
                t0 = time.time()
                table = particle_rows(base, n_max, seed)
                info["rows_seconds"] = round(time.time() - t0, 1)
            t0 = time.time()
            write_star(table.subset(np.arange(n)) if n < n_max else table, star)
            info[f"write_star_{n}_seconds"] = round(time.time() - t0, 1)
    info["noise_sigma"] = _noise_sigma(base)
    return info


def measure(cmd, env) -> dict:
    """Run ``cmd`` under nice; wall, CPU (user+sys of the tree), peak summed anonymous/PSS/file memory."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc, peak = run_tree_sampled(["nice", "-n", "10"] + cmd, env, interval=0.2)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_anon_MB": round(peak["anon"], 1),
            "peak_pss_MB": round(peak["pss"], 1), "peak_file_MB": round(peak["file"], 1)}


def run_size(n: int, d: Path, args, env) -> dict:
    py = [sys.executable, "-m", "gmmcore"]
    star = d / f"particles_{n}.star"
    imp, ref, exp = d / f"import_{n}", d / f"refine_{n}", d / f"export_{n}.star"
    res = {"n_particles": n}
    if "import" in args.verbs:
        shutil.rmtree(imp, ignore_errors=True)
        res["import"] = measure(py + ["import", "--star", str(star), "--metadata-only", "--out", str(imp)], env)
        print(n, "import", res["import"], flush=True)
    if "refine" in args.verbs:
        shutil.rmtree(ref, ignore_errors=True)
        cmd = py + ["refine", "--particles", str(imp / "particles.star"), "--iter", "1", "--out", str(ref),
                    "--maxres", str(args.maxres), "--steps", str(args.steps), "--batch", str(args.batch),
                    "--seed", "1"]
        if args.ngauss:
            cmd += ["--ngauss", str(args.ngauss)]
        res["refine"] = measure(cmd, env)
        s = json.loads((ref / "summary.json").read_text())
        res["refine"]["resolution_initial_A"] = s["initial"]["resolution"]
        res["refine"]["resolution_after_A"] = s["iterations"][-1]["resolution"]
        res["refine"]["iteration_s"] = round(s["iterations"][-1].get("seconds", float("nan")), 1)
        print(n, "refine", res["refine"], flush=True)
    if "export" in args.verbs:
        exp.unlink(missing_ok=True)
        res["export"] = measure(py + ["export", "--particles", str(ref / "final" / "particles.star"),
                                      "--format", "relion", "--reference", str(star), "--out", str(exp)], env)
        print(n, "export", res["export"], flush=True)
    return res


def slopes(results: list) -> dict:
    """Least-squares slope per verb and figure: ms / particle (wall, CPU), kB / particle (anonymous)."""
    out = {}
    for verb in ("import", "refine", "export"):
        rs = [r for r in results if verb in r]
        if len(rs) < 2:
            continue
        n = np.array([r["n_particles"] for r in rs], float)
        fit = lambda key, scale: round(float(np.polyfit(n, [r[verb][key] * scale for r in rs], 1)[0]), 4)  # noqa: E731
        out[verb] = {"wall_ms_per_particle": fit("wall_s", 1e3), "cpu_ms_per_particle": fit("cpu_s", 1e3),
                     "anon_kB_per_particle": fit("peak_anon_MB", 1024)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100000, 300000, 1000000])
    ap.add_argument("--stack-size", type=int, default=None, help="images in the stack (default: the largest size)")
    ap.add_argument("--distinct", type=int, default=20000, help="distinct simulated particles the images repeat")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--verbs", nargs="+", default=["import", "refine", "export"], choices=["import", "refine", "export"])
    ap.add_argument("--maxres", type=float, default=8.0)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--ngauss", type=int, default=200)
    ap.add_argument("--batch", default="256")
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument("--out", default=str(HERE / "results" / "bench_million.json"))
    args = ap.parse_args()
    env = _env()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    info = dataset(work, sorted(set(args.sizes) | {args.stack_size or max(args.sizes)}), args.distinct, args.seed)
    info["seconds"] = round(time.time() - t0, 1)
    print("dataset", info, flush=True)
    d = Path(info["folder"])
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    kept = {r["n_particles"]: r for r in doc.get("results", [])}
    settings = {"maxres_A": args.maxres, "steps": args.steps, "ngauss": args.ngauss, "batch": args.batch}
    for n in args.sizes:  # in the order given (results are kept sorted by size)
        r = run_size(n, d, args, env)
        r["settings"] = settings
        kept[n] = {**kept.get(n, {}), **r}
        results = [kept[k] for k in sorted(kept)]
        doc = {"benchmark": "one million particles end to end: gmmcore import --metadata-only, refine --iter 1, "
                            "export (box 32)",
               "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "platform": platform.platform(), "shared": "2 cores shared with other jobs; nice -n 10"},
               "data": {"box": BOX, "apix": APIX, "snr": SNR, "model": "builtin:adk-closed",
                        "distinct_particles": args.distinct, "seed": args.seed,
                        "note": "a scale check, not a science one: image i is simulated particle (i mod "
                                f"{args.distinct}) with fresh noise; poses are that particle's true pose perturbed "
                                f"afresh per row ({PERTURB_ANGLE_DEG} deg, {PERTURB_SHIFT_PX} px), random half split, "
                                "one optics group; the star of n rows is the first n rows of the largest"},
               "what": "per verb, a fresh process under nice -n 10: wall time, CPU time (user+system of the process "
                       "tree), peaks over time of memory summed over the tree sampled every 0.2 s from /proc: "
                       "anonymous (RssAnon: what the run holds), PSS, file-backed (memory-mapped stack, libraries)",
               "results": results, "slopes": slopes(results), "dataset": info}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc.get("slopes", {}), indent=1))


if __name__ == "__main__":
    main()
