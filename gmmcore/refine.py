"""GMM global pose refinement (gold standard): the iteration driver and its run directory.

For each iteration i = 1..n and each half h independently:
  half map of iteration i−1 (low-passed to its FSC resolution) → GMM_h (fit within that
  resolution) → local pose refinement of half h's particles against GMM_h only → reconstruction
  of each half → FSC between the two raw half maps (unmasked and masked) → next target resolution.
Nothing mixes the halves except the FSC, whose resolution sets the next target for both (as in
any gold-standard refinement); a fixed target (``--maxres`` coarser than what is reached) makes the
halves fully independent.

Run directory (``--out DIR``), everything written atomically:
  params.json                 the parameters (re-running the same command continues the run)
  iter000/                    input poses: half1.mrc, half2.mrc, report.json
  iterNNN/                    gmm_half{1,2}.gmm.npz (+ .json fit report), align_half{h}_chunkNNNN.npz
                              (per-chunk checkpoints), poses.npz, half1.mrc, half2.mrc,
                              report.json (written last: marks the iteration complete)
  final/                      particles.star, half1.mrc, half2.mrc, map.mrc, gmm_half{1,2}.gmm.npz/.pdb,
                              pose_changes.npz
  summary.json                per-iteration resolution, FSC curves, pose changes, GMM-vs-map FSC
  run.log                     the log
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

from . import __version__
from .atomic import write_json
from .errors import InputError
from .fourier import lowpass
from .fsc import auto_mask, half_map_report
from .geometry import angular_distance
from .importer import assign_split
from .io.maps import read_map, write_map
from .io.star import read_star, write_star
from .particles import ParticleTable

log = logging.getLogger("gmmcore.refine")

# Parameters that define the result: a run directory with other values cannot be continued.
_IDENTITY = ("particles", "ref", "ngauss", "maxres", "minres", "sym", "mask", "steps", "lr_angle", "lr_shift",
             "seed", "new_split", "pad", "ring_weight", "prior_angle",
             "prior_shift")


@dataclass
class RefineParams:
    particles: str
    out: str
    ref: Optional[str] = None
    ref_lowpass: float = 20.0  # Å
    iterations: int = 5
    ngauss: Optional[int] = None
    maxres: Optional[float] = None  # Å: finest target resolution allowed
    minres: float = 25.0  # Å: coarsest ring used by the FRC
    sym: str = "C1"
    mask: Optional[str] = None
    batch: int = 16
    chunk: int = 20000
    steps: int = 10
    lr_angle: float = 0.5  # degrees per Adam step
    lr_shift: float = 0.25  # pixels per Adam step
    ring_weight: str = "ssnr"  # "ssnr" or "uniform" (the paper's plain average over rings)
    prior_angle: Optional[float] = 3.0  # degrees: MAP pose prior centred on the input poses (None: off)
    prior_shift: Optional[float] = 1.0  # pixels
    gpu: Optional[List[int]] = None
    cpu: bool = False
    seed: int = 0
    new_split: bool = False
    pad: int = 2
    version: str = field(default=__version__)


# ---------------------------------------------------------------------------------------------


def _setup_logging(out: Path) -> None:
    log.setLevel(logging.INFO)
    if not any(getattr(h, "_gmm_out", None) == str(out) for h in log.handlers):
        for h in list(log.handlers):
            log.removeHandler(h)
        fh = logging.FileHandler(out / "run.log")
        fh._gmm_out = str(out)
        sh = logging.StreamHandler(sys.stdout)
        sh._gmm_out = str(out)
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        fh.setFormatter(fmt)
        sh.setFormatter(fmt)
        log.addHandler(fh)
        log.addHandler(sh)
        log.propagate = False


def _check_params(p: RefineParams, out: Path) -> None:
    """A run directory continues only with the same defining parameters."""
    pfile = out / "params.json"
    if pfile.exists():
        old = json.loads(pfile.read_text())
        diff = [k for k in _IDENTITY if old.get(k) != asdict(p).get(k)]
        if diff:
            raise InputError(f"holds a run with different parameters ({', '.join(diff)}); "
                             "use a new --out, or the same parameters to continue", path=out)
        log.info("continuing the run in %s", out)
    write_json(pfile, asdict(p))


def _load_particles(p: RefineParams):
    """Read and check the particles → (table, whether a new half split was made)."""
    table = read_star(p.particles)
    if len(table) == 0:
        raise InputError("no particles", path=p.particles)
    if len(set(table.image_size.tolist())) > 1:
        raise InputError(f"particles of several box sizes {sorted(set(table.image_size.tolist()))}; "
                         "refine one box size at a time", path=p.particles, field="rlnImageSize")
    if np.ptp(table.apix) > 1e-3 * table.apix.max():
        raise InputError(f"optics groups with different pixel sizes {sorted(set(np.round(table.apix, 4).tolist()))} "
                         "are not supported in one refinement", path=p.particles, field="rlnImagePixelSize")
    return table, assign_split(table, p.new_split, seed=p.seed) == "new-random"


def _reconstruct(table: ParticleTable, p: RefineParams, folder: Path):
    from .reconstruct import reconstruct_halves

    halves = reconstruct_halves(table, sym=p.sym, pad=p.pad, chunk=p.chunk)
    apix = float(table.apix[0])
    for h in (1, 2):
        write_map(folder / f"half{h}.mrc", halves[h], apix)
    return halves[1], halves[2]


def _target_resolution(measured: float, p: RefineParams, apix: float) -> float:
    res = max(measured, 2.0 * apix * 1.05)
    if p.maxres:
        res = max(res, p.maxres)
    return float(res)


def _pose_change(R0, o0, R1, o1, apix) -> dict:
    ang = angular_distance(R0, R1)
    sh = np.linalg.norm(o1 - o0, axis=1) / apix
    return {"angle_mean": float(ang.mean()), "angle_median": float(np.median(ang)),
            "shift_mean": float(sh.mean()), "shift_median": float(np.median(sh))}


def run_refinement(p: RefineParams) -> dict:
    """Run (or continue) a global refinement; returns the summary dict (also in DIR/summary.json)."""
    from .gmm.align import align_particles
    from .gmm.build import build_gmm
    from .gmm.kernels import PoseSettings, configure_devices
    from .gmm.model import GMM

    out = Path(p.out)
    # Check every input before anything is written, so a corrected command can use the same --out.
    table, new_split = _load_particles(p)
    apix = float(table.apix[0])
    box = int(table.image_size[0])
    mask = None
    if p.mask:
        mask, mask_apix = read_map(p.mask)
        if mask.shape != (box,) * 3:
            raise InputError(f"mask is {mask.shape}, particles need ({box}, {box}, {box})", path=p.mask)
    user_mask = mask

    out.mkdir(parents=True, exist_ok=True)
    _setup_logging(out)
    _check_params(p, out)
    device = configure_devices(p.gpu, cpu_only=p.cpu)
    n_half = {h: int(np.sum(table.half == h)) for h in (1, 2)}
    log.info("gmmcore %s refine: %d particles (half 1: %d, half 2: %d), box %d, %.3f Å/px, %s, device %s",
             __version__, len(table), n_half[1], n_half[2], box, apix, p.sym, device)
    if new_split:
        log.info("NOTE: no half-set split in the input: made a new random split (seed %d)", p.seed)

    summary = {"params": asdict(p), "device": device, "n_particles": n_half, "iterations": []}

    # ---- iteration 0: the input poses
    it0 = out / "iter000"
    it0.mkdir(exist_ok=True)
    if (it0 / "report.json").exists():
        report0 = json.loads((it0 / "report.json").read_text())
        h1, _ = read_map(it0 / "half1.mrc")
        h2, _ = read_map(it0 / "half2.mrc")
    else:
        t0 = time.time()
        log.info("reconstructing half maps at the input poses")
        h1, h2 = _reconstruct(table, p, it0)
        if mask is None:
            mask = auto_mask(0.5 * (h1 + h2), apix)
            write_map(out / "mask_auto.mrc", mask, apix)
        report0 = half_map_report(h1, h2, apix, mask)
        report0["seconds"] = time.time() - t0
        write_json(it0 / "report.json", report0)
    if mask is None:
        mask, _ = read_map(out / "mask_auto.mrc")
    summary["initial"] = report0
    log.info("input poses: resolution %.2f Å (masked), %.2f Å (unmasked)",
             report0["resolution_masked"], report0["resolution_unmasked"])

    halves = {1: h1, 2: h2}
    if p.ref:
        ref, _ = read_map(p.ref)
        if ref.shape != (box,) * 3:
            raise InputError(f"reference is {ref.shape}, particles need ({box}, {box}, {box})", path=p.ref)
        ref_lp = lowpass(ref, apix, p.ref_lowpass)
        halves = {1: ref_lp, 2: ref_lp}
        log.info("first GMMs from --ref low-passed to %.1f Å", p.ref_lowpass)
    measured = report0["resolution"] if not p.ref else max(report0["resolution"], p.ref_lowpass)
    R = table.rotation.copy()
    o = table.origin.copy()
    R_in, o_in = R.copy(), o.copy()
    settings = PoseSettings(steps=p.steps, lr_angle_deg=p.lr_angle, lr_shift_px=p.lr_shift,
                            prior_angle_deg=p.prior_angle, prior_shift_px=p.prior_shift)
    gmms = {}

    for it in range(1, p.iterations + 1):
        folder = out / f"iter{it:03d}"
        folder.mkdir(exist_ok=True)
        if (folder / "report.json").exists():
            rec = json.loads((folder / "report.json").read_text())
            summary["iterations"].append(rec)
            with np.load(folder / "poses.npz") as z:
                R, o = z["rotation"], z["origin"]
            halves = {h: read_map(folder / f"half{h}.mrc")[0] for h in (1, 2)}
            gmms = {h: GMM.load(folder / f"gmm_half{h}.gmm.npz") for h in (1, 2)}
            measured = rec["resolution"]
            log.info("iteration %d already complete (%.2f Å)", it, measured)
            continue
        t0 = time.time()
        target = _target_resolution(measured, p, apix)
        log.info("iteration %d/%d: target resolution %.2f Å", it, p.iterations, target)
        gmm_fsc, n_gauss = {}, {}
        for h in (1, 2):
            gfile = folder / f"gmm_half{h}.gmm.npz"
            if gfile.exists():
                gmms[h] = GMM.load(gfile)
                rep = json.loads((folder / f"gmm_half{h}.json").read_text())
            else:
                # Only a user's mask may shape the GMM: the automatic mask is made from both
                # halves and serves the FSC alone, so it must not touch either half's model.
                m = lowpass(halves[h] * user_mask if user_mask is not None else halves[h], apix, target)
                try:
                    gmms[h], rep = build_gmm(m, apix, target, n_gaussians=p.ngauss, seed=p.seed + h,
                                             minres_A=p.minres)
                except InputError as exc:
                    raise InputError(f"half {h}, iteration {it}: {exc.message} (is this half's map empty or "
                                     "pure noise?)", path=folder / f"half{h}", field=exc.field) from None
                gmms[h].meta.update({"half": h, "iteration": it})
                gmms[h].save(gfile)
                write_json(folder / f"gmm_half{h}.json", rep)
            gmm_fsc[str(h)] = float(rep.get("fsc_mean", float("nan")))
            n_gauss[str(h)] = len(gmms[h])
            log.info("  half %d: GMM of %d Gaussians, map-vs-GMM FSC %.3f", h, len(gmms[h]), gmm_fsc[str(h)])

        R_new, o_new = R.copy(), o.copy()
        score0, score1 = {}, {}
        cur = table.with_poses(R, o)
        for h in (1, 2):
            idx = np.flatnonzero(table.half == h)
            res = align_particles(cur, idx, gmms[h], target, p.minres, settings, batch=p.batch, chunk=p.chunk,
                                  checkpoint_dir=folder, tag=f"align_half{h}", desc=f"iter {it} half {h}",
                                  ring_weight=p.ring_weight, prior_rotation=R_in, prior_origin=o_in)
            R_new[idx], o_new[idx] = res["rotation"], res["origin"]
            score0[str(h)], score1[str(h)] = float(res["score0"].mean()), float(res["score"].mean())
            log.info("  half %d: mean FRC %.4f -> %.4f", h, score0[str(h)], score1[str(h)])
        np.savez(folder / "poses.npz", rotation=R_new, origin=o_new)
        change = _pose_change(R, o, R_new, o_new, apix)
        R, o = R_new, o_new

        h1, h2 = _reconstruct(table.with_poses(R, o), p, folder)
        halves = {1: h1, 2: h2}
        rep = half_map_report(h1, h2, apix, mask)
        measured = rep["resolution"]
        rec = {"iteration": it, "target_resolution": target, **rep, "pose_change": change,
               "frc": {"before": score0, "after": score1}, "gmm_fsc": gmm_fsc, "n_gaussians": n_gauss,
               "seconds": time.time() - t0, "dir": folder.name}
        write_json(folder / "report.json", rec)
        summary["iterations"].append(rec)
        write_json(out / "summary.json", summary)
        log.info("  resolution %.2f Å (masked), %.2f Å (unmasked); pose change %.2f° / %.2f px; %.0f s",
                 rep["resolution_masked"], rep["resolution_unmasked"], change["angle_mean"], change["shift_mean"],
                 rec["seconds"])

    # ---- final outputs
    fin = out / "final"
    fin.mkdir(exist_ok=True)
    final_table = table.with_poses(R, o)
    write_star(final_table, fin / "particles.star")
    for h in (1, 2):
        write_map(fin / f"half{h}.mrc", halves[h], apix)
        if h in gmms:
            gmms[h].save(fin / f"gmm_half{h}.gmm.npz")
            gmms[h].save_pdb(fin / f"gmm_half{h}.pdb")
    final_res = summary["iterations"][-1]["resolution"] if summary["iterations"] else report0["resolution"]
    write_map(fin / "map.mrc", lowpass(0.5 * (halves[1] + halves[2]), apix, final_res), apix)
    ang = angular_distance(R_in, R)
    sh = np.linalg.norm(o - o_in, axis=1) / apix
    np.savez(fin / "pose_changes.npz", angle_deg=ang, shift_px=sh, half=table.half)
    summary["final"] = {
        "particles": "final/particles.star", "half1": "final/half1.mrc", "half2": "final/half2.mrc",
        "map": "final/map.mrc", "gmm": {"1": "final/gmm_half1.gmm.npz", "2": "final/gmm_half2.gmm.npz"},
        "gmm_pdb": {"1": "final/gmm_half1.pdb", "2": "final/gmm_half2.pdb"},
        "pose_changes": "final/pose_changes.npz", "resolution": final_res,
        "resolution_initial": report0["resolution"],
    }
    write_json(out / "summary.json", summary)
    log.info("done: %.2f Å -> %.2f Å; results in %s", report0["resolution"], final_res, fin)
    return summary


# ---------------------------------------------------------------------------------------------
# command line


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--particles", required=True, help="RELION star with poses and half sets (e.g. from `gmmcore import`)")
    p.add_argument("--out", required=True, help="run directory (re-running the same command continues it)")
    p.add_argument("--ref", help="optional starting map (MRC); low-passed to --ref-lowpass for the first GMMs")
    p.add_argument("--ref-lowpass", type=float, default=20.0, help="low-pass for --ref, Å (default 20)")
    p.add_argument("--iter", dest="iterations", type=int, default=5, help="iterations (default 5)")
    p.add_argument("--ngauss", type=int, help="Gaussians per GMM (default: estimated from map and resolution)")
    p.add_argument("--maxres", type=float, help="finest target resolution used for alignment, Å")
    p.add_argument("--minres", type=float, default=25.0, help="coarsest resolution in the FRC, Å (default 25)")
    p.add_argument("--sym", default="C1", help="symmetry: C1, Cn, Dn, T, O, I (default C1)")
    p.add_argument("--mask", help="soft mask (MRC) for the masked FSC and applied to each half map before its GMM is built (default: an automatic mask, used for the FSC only)")
    p.add_argument("--batch", type=int, default=16, help="particles per batch on the device: the GPU-memory knob (default 16)")
    p.add_argument("--chunk", type=int, default=20000, help="particles read per chunk (default 20000)")
    p.add_argument("--steps", type=int, default=10, help="gradient steps per particle per iteration (default 10)")
    p.add_argument("--lr-angle", type=float, default=0.5, help="Adam step for rotations, degrees (default 0.5)")
    p.add_argument("--lr-shift", type=float, default=0.25, help="Adam step for shifts, pixels (default 0.25)")
    p.add_argument("--ring-weight", choices=["ssnr", "uniform"], default="ssnr",
                   help="FRC ring weighting for alignment: ssnr (population FRC × ring size, estimated per half; "
                        "default) or uniform (plain average over rings, as in the paper)")
    p.add_argument("--prior-angle", type=float, default=None,
                   help="MAP pose prior centred on the input poses: their expected angular error, degrees "
                        "(default 3). Keeps low-SNR particles from drifting; strong data overrides it")
    p.add_argument("--prior-shift", type=float, default=None,
                   help="MAP pose prior: expected shift error of the input poses, pixels (default 1)")
    p.add_argument("--no-prior", action="store_true",
                   help="no pose prior: plain maximum of the FRC (as in the paper; implied by --ring-weight uniform)")
    p.add_argument("--gpu", default=None, help="GPU ids to use, e.g. 0 or 0,1 (default: what TensorFlow sees)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is visible")
    p.add_argument("--new-split", action="store_true", help="make a new random half split when the input has none")
    p.add_argument("--seed", type=int, default=0, help="random seed (GMM seeding, new split)")
    p.add_argument("--continue", dest="cont", action="store_true",
                   help="continue the run in --out (re-running the same command does the same)")


def run(args: argparse.Namespace) -> int:
    gpu = None
    if args.gpu not in (None, ""):
        try:
            gpu = [int(x) for x in str(args.gpu).replace(" ", "").split(",") if x != ""]
        except ValueError:
            raise InputError(f"not a list of GPU ids: {args.gpu!r}", field="--gpu") from None
    for name in ("particles", "ref", "mask"):
        v = getattr(args, name)
        if v and not Path(v).exists():
            raise InputError("file not found", path=v, field=f"--{name}")
    if args.iterations < 0 or args.batch < 1 or args.chunk < 1 or args.steps < 1:
        raise InputError("--iter must be ≥ 0, --batch, --chunk and --steps ≥ 1")
    explicit = args.prior_angle is not None or args.prior_shift is not None
    if explicit and (args.no_prior or args.ring_weight != "ssnr"):
        raise InputError("a pose prior needs --ring-weight ssnr and no --no-prior", field="--prior-angle")
    for name in ("prior_angle", "prior_shift"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise InputError("must be > 0 (use --no-prior to switch the prior off)", field="--" + name.replace("_", "-"))
    use_prior = not args.no_prior and args.ring_weight == "ssnr"
    prior_angle = (args.prior_angle or RefineParams.prior_angle) if use_prior else None
    prior_shift = (args.prior_shift or RefineParams.prior_shift) if use_prior else None
    out = Path(args.out)
    if args.cont and not (out / "params.json").exists():
        raise InputError("nothing to continue (no params.json)", path=out, field="--continue")
    params = RefineParams(particles=str(Path(args.particles).resolve()), out=str(out), ref=args.ref and str(Path(args.ref).resolve()),
                          ref_lowpass=args.ref_lowpass, iterations=args.iterations, ngauss=args.ngauss, maxres=args.maxres,
                          minres=args.minres, sym=args.sym, mask=args.mask and str(Path(args.mask).resolve()), batch=args.batch,
                          chunk=args.chunk, steps=args.steps, lr_angle=args.lr_angle, lr_shift=args.lr_shift, ring_weight=args.ring_weight,
                          prior_angle=prior_angle, prior_shift=prior_shift, gpu=gpu,
                          cpu=args.cpu, seed=args.seed, new_split=args.new_split)
    from .symmetry import symmetry_matrices

    symmetry_matrices(params.sym)  # validates --sym
    run_refinement(params)
    return 0
