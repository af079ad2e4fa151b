"""Science benchmark: refinement modes on the realistic sets (benchmarks/realistic/), scored against the truth.

    python benchmarks/bench_science.py --set flexible --modes global focused
    python benchmarks/bench_science.py --set flexible --modes focused --extra-focused "--width-rule variance" \
        --tag variance
    python benchmarks/bench_science.py --set rigid --modes truth global --n 1000

Modes (each a gmmcore command on the set's start poses; folders under --work/<set>/):
  truth     the true core-frame poses (reference row: the domain blurred by its motion)
  start     the start poses (≈ 2.4° / 1.2 px from the truth)
  global    gmmcore import + gmmcore refine
  focused   gmmcore refine-focused --from global --mask domain_mask.mrc
  patches   gmmcore refine-patches --from global --patches 3 (each patch's poses scored; the composite
            half maps' FSC reported as made by gmmcore; inside each patch's mask: the patch's poses vs
            global's poses (RELION maps) and the composite vs global (gmmcore maps))
  heterogeneity  gmmcore heterogeneity --from global alone, its latent scored against the true state
            (benchmarks.realistic.latent_check: |ρ(PC1, t)|, R², and on the occupancy set the AUC of PC1)
  c2p       gmmcore heterogeneity --from global, then gmmcore conf2pose --mask domain_mask.mrc
  relion    the field's standard for the same job, as the peer: RELION's auto-refine (relion_refine_mpi
            --auto_refine under mpirun -n 3, CPU) with local searches from the same start poses (σ_ang 2°,
            ±6°; healpix order 4 = 3.75° and finer as RELION's auto-sampling decides; offsets ±3 px), from
            a reference reconstructed from the start poses (relion_reconstruct, limited to 10 Å in its first
            iteration), the set's particle mask as solvent mask with its corrected FSC driving the
            resolution, gold-standard halves as the set's; scored like the others from its poses, and
            its own (marginalised) half maps scored too (``relion_own_maps``)
Each run is skipped when its final/ folder exists (--rerun to redo).  Extra flags per mode:
--extra-global, --extra-focused, --extra-patches, --extra-heterogeneity, --extra-c2p, --extra-relion
(one string each).

Scores per run (its poses exported with `gmmcore export --reference` to the set's raw images):
* an INDEPENDENT reconstruction: `relion_reconstruct --ctf --subset 1|2` of the run's poses;
  gold-standard FSC-0.143 (gmmcore.fsc.fsc_masked, phase-randomisation corrected) of the two half
  maps inside the domain mask, the core mask and the particle mask; and the map (mean of the halves)
  against the truth map (state t_ref): FSC-0.5 resolution and mean FSC up to 2/3 Nyquist, same masks;
* angular error (degrees; mean and median) against the true poses in the core frame (the particle's
  true rotation A) and in the domain's frame (A·Q, Q the LID's motion from t_ref to the particle's
  state) — the latter is what a domain-focused run should approach;
* wall time of the run.
Results: benchmarks/results/bench_science.json (a dict keyed "<set>/<mode>[/<tag>][@n<N>]"; later
runs update it).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gmmcore.io.maps import read_map, write_map  # noqa: E402
from gmmcore.io.star import read_star  # noqa: E402

from benchmarks.realistic.latent_check import latent_scores  # noqa: E402
from benchmarks.realistic.truth import MASKS, map_scores, pose_errors, read_halves  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_science.json"
MODES = ("truth", "truth-domain", "start", "global", "focused", "patches", "heterogeneity", "c2p", "relion")


def gmmcore(*args: str, log: Path) -> float:
    """Run a gmmcore verb (same interpreter, niceness inherited); returns its wall time (s)."""
    cmd = [sys.executable, "-m", "gmmcore", *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               GMMCORE_NO_PROGRESS="1", TF_CPP_MIN_LOG_LEVEL="2")
    t0 = time.time()
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        fh.flush()
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    if done.returncode != 0:
        raise RuntimeError(f"gmmcore {args[0]} failed ({done.returncode}); see {log}")
    return time.time() - t0


def relion_halves(star: Path, out: Path, apix: float, project: Path) -> tuple:
    """relion_reconstruct --ctf per half set → (half1, half2) arrays; run in ``project`` (RELION reads
    relative image names from its working folder)."""
    maps = []
    for s in (1, 2):
        o = out / f"relion_half{s}.mrc"
        done = subprocess.run(["relion_reconstruct", "--i", str(Path(star).resolve()), "--o", str(o.resolve()),
                               "--subset", str(s), "--ctf", "--angpix", str(apix)], cwd=str(project),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0 or not o.is_file():
            raise RuntimeError(f"relion_reconstruct failed:\n{done.stdout[-2000:]}")
        maps.append(read_map(o)[0].astype(np.float64))
    return maps[0], maps[1]


def patch_mask_scores(patch_run: Path, work: Path, global_run: Path, set_dir: Path, apix: float, sub: str) -> dict:
    """Inside each patch's own mask (``patch_run``/masks/patch_NN.mrc): that patch's poses
    (RELION reconstruction, score folder ``score_<sub>_patch_NN``) against the global run's
    (``score_global``), and the composite's gmmcore half maps against global's — the issue's
    "better inside each patch".  Patch names → {"patch", "global", "composite_gmmcore",
    "global_gmmcore"} (each map_scores of that one mask), plus "mean_gain_truth_fsc_mean": the
    mean over patches of the gain in mean FSC against the truth (patch vs global, composite vs global)."""
    masks = {p.stem: p for p in sorted((patch_run / "masks").glob("patch_*.mrc"))}
    glob_relion = read_halves(work / "score_global", "relion_half{}.mrc")
    comp, glob = read_halves(patch_run / "final"), read_halves(global_run / "final")
    out = {}
    for name, f in masks.items():
        one = {name: f}
        out[name] = {"patch": map_scores(*read_halves(work / f"score_{sub}_{name}", "relion_half{}.mrc"), set_dir,
                                         apix, one)[name],
                     "global": map_scores(*glob_relion, set_dir, apix, one)[name],
                     "composite_gmmcore": map_scores(*comp, set_dir, apix, one)[name],
                     "global_gmmcore": map_scores(*glob, set_dir, apix, one)[name]}
    gain = lambda a, b: round(float(np.mean([v[a]["truth_fsc_mean"] - v[b]["truth_fsc_mean"]  # noqa: E731
                                              for v in out.values()])), 4)
    out["mean_gain_truth_fsc_mean"] = {"patch_vs_global": gain("patch", "global"),
                                       "composite_vs_global_gmmcore": gain("composite_gmmcore", "global_gmmcore")}
    return out


def pose_scores(star: Path, set_dir: Path) -> dict:
    """Angular error (degrees) in the core and the domain's frame, shift error (px): mean, median."""
    err = pose_errors(star, set_dir)
    f = lambda v: {"mean": round(float(v.mean()), 3), "median": round(float(np.median(v)), 3)}  # noqa: E731
    return {**{k: f(v) for k, v in err.items()}, "n": int(len(err["core_deg"]))}


def export_raw(star: Path, set_dir: Path, out: Path, log: Path) -> Path:
    """A run's poses on the set's raw (not phase-flipped) images: gmmcore export --reference."""
    dst = out / "poses_raw.star"
    gmmcore("export", "--particles", str(star), "--format", "relion", "--reference",
            str(set_dir / "particles.star"), "--out", str(dst), log=log)
    return dst


def generation(set_dir: Path) -> dict:
    """The set's generation.json (its parameters under "params": apix, box, ...)."""
    return json.loads((Path(set_dir) / "generation.json").read_text())


def score(star: Path, set_dir: Path, out: Path, log: Path, raw: bool = False) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    apix = float(generation(set_dir)["params"]["apix"])
    raw_star = star if raw else export_raw(star, set_dir, out, log)
    h1, h2 = relion_halves(raw_star, out, apix, set_dir)
    return {"maps": map_scores(h1, h2, set_dir, apix), "poses": pose_scores(star, set_dir)}


def relion_refine(start_star: Path, set_dir: Path, out: Path, threads: int, extra: str, log: Path) -> float:
    """RELION auto-refine, local searches from the poses of ``start_star`` (the peer of ``gmmcore
    refine``; module notes, mode ``relion``); returns its wall time (s).  Runs in ``set_dir`` (the
    stack's relative names); the reference is the mean of the start poses' RELION half maps."""
    out.mkdir(parents=True, exist_ok=True)
    gen = generation(set_dir)
    apix, box = float(gen["params"]["apix"]), int(gen["params"]["box"])
    h1, h2 = relion_halves(start_star, out, apix, set_dir)  # out/relion_half{1,2}.mrc: the start's
    ref = out / "start_reference.mrc"
    write_map(ref, (0.5 * (h1 + h2)).astype(np.float32), apix)
    diameter = min(0.9 * box * apix, 2.0 * float(gen["signal_disc_radius_px"]) * apix + 20.0)  # Å
    # gold-standard halves need MPI: a leader and one follower per half (relion_refine_mpi, Open MPI)
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "3", "relion_refine_mpi",
           "--i", str(Path(start_star).resolve()), "--o", str((out / "run").resolve()), "--ref", str(ref.resolve()),
           "--firstiter_cc", "--ini_high", "10", "--auto_refine",
           "--split_random_halves", "--low_resol_join_halves", "40", "--particle_diameter", f"{diameter:.0f}",
           "--ctf", "--sym", "C1", "--zero_mask", "--flatten_solvent", "--norm", "--scale", "--pad", "2",
           # the particle mask as solvent mask, and its FSC (phase-randomisation corrected) driving the
           # resolution: without them RELION's unmasked FSC held this small particle at 7.4 Å
           "--solvent_mask", str((set_dir / MASKS["particle"]).resolve()), "--solvent_correct_fsc",
           "--oversampling", "1", "--healpix_order", "4", "--auto_local_healpix_order", "4", "--sigma_ang", "2",
           "--offset_range", "3", "--offset_step", "1", "--j", str(max(1, threads // 2)), "--pool", "30",
           "--dont_combine_weights_via_disc", *shlex.split(extra)]
    t0 = time.time()
    with open(log, "a") as fh:
        fh.write("$ (cd " + shlex.quote(str(set_dir)) + ") " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        fh.flush()
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=str(set_dir))
    if done.returncode != 0 or not (out / "run_data.star").is_file():
        raise RuntimeError(f"relion_refine failed ({done.returncode}); see {log}")
    return time.time() - t0


def domain_truth_star(set_dir: Path) -> Path:
    """``particles_true_domain.star`` beside the set's stack (made once): the true star with each
    particle's pose replaced by its moving domain's (truth.npz ``domain_pose_*``)."""
    from gmmcore.io.star import write_star

    dst = set_dir / "particles_true_domain.star"
    if not dst.is_file():
        truth = np.load(set_dir / "truth.npz")
        tab = read_star(set_dir / "particles_true.star")
        idx = np.array([int(str(nm).split("@")[0]) - 1 for nm in tab.image_name])
        write_star(tab.with_poses(truth["domain_pose_rotations"][idx], truth["domain_pose_origins_A"][idx]), dst)
    return dst


def subset_star(set_dir: Path, n: int, work: Path, name: str) -> Path:
    """The first n particles of a set's star (reduced runs); the full star when n is None."""
    src = set_dir / name
    if n is None:
        return src
    from gmmcore.io.star import write_star

    tab = read_star(src)
    dst = set_dir / f"subset_{n}_{name}"  # beside the stack: relative image names stay valid
    write_star(tab.subset(np.arange(min(n, len(tab)))), dst)
    return dst


def run_modes(a) -> dict:
    set_dir = Path(a.data) / a.set
    if not (set_dir / "generation.json").is_file():
        raise SystemExit(f"no generated set in {set_dir}: run python -m benchmarks.realistic.generate --set {a.set}")
    work = Path(a.work) / a.set / (f"n{a.n}" if a.n else "all")
    work.mkdir(parents=True, exist_ok=True)
    log = work / "bench.log"
    common = ["--threads", str(a.threads)] if a.threads else []
    tag = f"/{a.tag}" if a.tag else ""
    results = {}

    def done(d: Path) -> bool:
        return (d / "final" / "particles.star").is_file() or (d / "final" / "half1.mrc").is_file()

    def fresh(d: Path) -> None:
        if a.rerun and d.exists():
            shutil.rmtree(d)

    def record(mode: str, entry: dict) -> None:
        key = f"{a.set}/{mode}{tag}" + (f"@n{a.n}" if a.n else "")
        entry.update(n_particles=a.n, set=a.set)
        results[key] = entry
        print(json.dumps({key: entry}), flush=True)

    start_star = subset_star(set_dir, a.n, work, "particles.star")
    if "truth" in a.modes:
        record("truth", score(subset_star(set_dir, a.n, work, "particles_true.star"), set_dir, work / "score_truth",
                              log, raw=True))
    if "truth-domain" in a.modes:  # the moving domain's own true poses: the ceiling of any focused method
        record("truth-domain", score(subset_star(set_dir, a.n, work, domain_truth_star(set_dir).name), set_dir,
                                     work / "score_truth_domain", log, raw=True))
    if "start" in a.modes:
        record("start", score(start_star, set_dir, work / "score_start", log, raw=True))
    imported = work / "imported"
    if not (imported / "particles.star").is_file():
        gmmcore("import", "--star", str(start_star), "--out", str(imported), log=log)
    g = work / "global"  # the run every focused / patch / c2p variant starts from
    if "global" in a.modes:
        # a tagged variant with its own flags runs in its own folder; the default run stays the start of the others
        gv = work / f"global_{a.tag}" if a.tag and a.extra_global else g
        fresh(gv)
        sec = 0.0 if done(gv) else gmmcore("refine", "--particles", str(imported / "particles.star"), "--out", str(gv),
                                           "--iter", str(a.iter_global), *common, *shlex.split(a.extra_global), log=log)
        record("global", {**score(gv / "final" / "particles.star", set_dir, work / f"score_{gv.name}", log),
                          "seconds": round(sec, 1), "extra": a.extra_global})
    mask = str(set_dir / MASKS["domain"])
    sub = a.tag or "default"
    if "focused" in a.modes:
        d = work / f"focused_{sub}"
        fresh(d)
        sec = 0.0 if done(d) else gmmcore("refine-focused", "--from", str(g), "--mask", mask, "--out", str(d),
                                          "--iter", str(a.iter_focused), *common, *shlex.split(a.extra_focused),
                                          log=log)
        record("focused", {**score(d / "final" / "particles.star", set_dir, work / f"score_focused_{sub}", log),
                           "seconds": round(sec, 1), "extra": a.extra_focused})
    if "patches" in a.modes:
        d = work / f"patches_{sub}"
        fresh(d)
        sec = 0.0 if done(d) else gmmcore("refine-patches", "--from", str(g), "--patches", "3", "--out", str(d),
                                          "--iter", str(a.iter_patches), *common, *shlex.split(a.extra_patches),
                                          log=log)
        entry = {"seconds": round(sec, 1), "extra": a.extra_patches, "patches": {}}
        for p in sorted(d.glob("patch_*")):
            entry["patches"][p.name] = score(p / "final" / "particles.star", set_dir, work / f"score_{sub}_{p.name}",
                                             log)
        apix = float(generation(set_dir)["params"]["apix"])
        entry["composite_gmmcore_maps"] = map_scores(*read_halves(d / "final"), set_dir, apix)
        entry["global_gmmcore_maps"] = map_scores(*read_halves(g / "final"), set_dir, apix)  # like for like
        if not (work / "score_global" / "relion_half1.mrc").is_file():
            score(g / "final" / "particles.star", set_dir, work / "score_global", log)
        entry["in_patch_masks"] = patch_mask_scores(d, work, g, set_dir, apix, sub)
        record("patches", entry)
    if "heterogeneity" in a.modes:
        h = work / f"heterogeneity_{sub}"
        fresh(h)
        sec = 0.0
        if not (h / "final" / "latents.csv").is_file():
            sec += gmmcore("heterogeneity", "--from", str(g), "--out", str(h), *shlex.split(a.extra_heterogeneity),
                           log=log)
        record("heterogeneity", {"latent": latent_scores(h, set_dir), "seconds": round(sec, 1),
                                 "extra": a.extra_heterogeneity})
    if "c2p" in a.modes:
        h = work / f"heterogeneity_{sub}"
        d = work / f"c2p_{sub}"
        fresh(h)
        fresh(d)
        sec = 0.0
        if not (h / "final" / "latents.csv").is_file():
            sec += gmmcore("heterogeneity", "--from", str(g), "--out", str(h), *shlex.split(a.extra_heterogeneity),
                           log=log)
        if not done(d):
            sec += gmmcore("conf2pose", "--from", str(h), "--mask", mask, "--out", str(d), *shlex.split(a.extra_c2p),
                           log=log)
        record("c2p", {**score(d / "final" / "particles.star", set_dir, work / f"score_c2p_{sub}", log),
                       "seconds": round(sec, 1), "extra": a.extra_heterogeneity + " | " + a.extra_c2p})
    if "relion" in a.modes:
        d = work / f"relion_{sub}"
        fresh(d)
        sec = 0.0
        it = a.relion_score_iter
        if it is None and not (d / "run_data.star").is_file():
            sec = relion_refine(start_star, set_dir, d, a.threads, a.extra_relion, log)
        star, halves = ((d / "run_data.star", "run_half{}_class001_unfil.mrc") if it is None else
                        (d / f"run_it{it:03d}_data.star", f"run_it{it:03d}_half{{}}_class001.mrc"))
        apix = float(generation(set_dir)["params"]["apix"])
        own = map_scores(*read_halves(d, halves), set_dir, apix)
        entry = score(star, set_dir, work / (f"score_relion_{sub}" + ("" if it is None else f"_it{it:03d}")), log,
                      raw=True)
        record("relion" + ("" if it is None else f"_it{it:03d}"),
               {**entry, "relion_own_maps": own, "seconds": round(sec, 1), "extra": a.extra_relion})
    return results


def save(results: dict, path: Path = RESULTS) -> None:
    old = json.loads(path.read_text()) if path.is_file() else {}
    old.update(results)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(old, indent=1, sort_keys=True))
    tmp.replace(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Refinement modes on the realistic sets, scored against the truth.")
    p.add_argument("--set", choices=["rigid", "flexible", "assembly", "occupancy", "twobody"], default="flexible")
    p.add_argument("--modes", nargs="+", choices=MODES, default=["truth", "global", "focused"])
    p.add_argument("--data", default=str(ROOT / "benchmarks" / "realistic_cache"), help="generated sets")
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "realistic_cache" / "runs"), help="run folders")
    p.add_argument("--n", type=int, default=None, help="use only the first N particles (reduced runs)")
    p.add_argument("--tag", default="", help="label of this variant (run folders and result keys)")
    p.add_argument("--rerun", action="store_true", help="redo the selected runs even when finished")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iter-global", type=int, default=5)
    p.add_argument("--iter-focused", type=int, default=3)
    p.add_argument("--iter-patches", type=int, default=3)
    for m in ("global", "focused", "patches", "heterogeneity", "c2p", "relion"):
        p.add_argument(f"--extra-{m}", default="", help=f"extra flags for the {m} command (one quoted string)")
    p.add_argument("--relion-score-iter", type=int, default=None,
                   help="mode relion: score iteration K of a stopped or unfinished RELION run (key relion_itK)")
    p.add_argument("--out", default=str(RESULTS), help="results JSON")
    a = p.parse_args(argv)
    res = run_modes(a)
    save(res, Path(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
