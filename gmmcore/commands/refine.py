"""GMM global refinement of particle poses (gold standard: one GMM per half set).

Each iteration: per half, a GMM of the half map (within the current resolution) → local
refinement of that half's poses against it (MAP, FRC) → reconstruction of both halves → FSC; the
measured resolution sets the next target.  Re-running the same command continues a killed run.

    gmmcore refine --particles imported/particles.star --iter 5 --out refined
    gmmcore refine --particles imported/particles.star --iter 5 --out refined --gpu 0,1,2,3
    gmmcore refine --particles imported/particles.star --iter 5 --out refined \
        --cluster slurm --workers 8 --worker-gpus 1 --queue gpu --walltime 12:00:00

Writes DIR/final/ (particles.star, half1.mrc, half2.mrc, map.mrc, GMMs, pose_changes.npz),
DIR/summary.json (FSC per iteration, pose changes) and DIR/run.log.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..errors import InputError
from ..options import parse_batch, pose_prior
from ..parallel import flags as execution


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
    p.add_argument("--batch", default="16",
                   help="particles per batch on the device: the GPU-memory knob (default 16), or 'auto': the largest "
                        "power of two whose working memory fits half the device's free memory (results do not "
                        "depend on it)")
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
    p.add_argument("--gpu", default=None, help="GPU id(s), e.g. 0 or 0,1,2,3 (default: the first GPU the backend sees); "
                                             "several ids: one worker process per GPU, particles shared out")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is visible")
    p.add_argument("--backend", choices=["tf", "jax"], default="tf",
                   help="array backend: tf (TensorFlow, the default; CPU or GPU) or jax (JAX: GPUs without "
                        "TensorFlow, also runs on the CPU); the log says which backend and device run")
    p.add_argument("--new-split", action="store_true",
                   help="make a new random half split when the input has no usable one (none, incomplete, a half "
                        "with < 10%% of the particles, or an image in both halves); logged in run.log")
    p.add_argument("--seed", type=int, default=0, help="random seed (GMM seeding, new split)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads to use (TensorFlow, FFTs, half maps reconstructed in parallel; default: all cores)")
    p.add_argument("--force", action="store_true",
                   help="refine even with fewer particles per half set than a gold-standard refinement needs "
                        "(π·box/2: the views that fill Fourier space to Nyquist)")
    p.add_argument("--continue", dest="cont", action="store_true",
                   help="continue the run in --out (re-running the same command does the same)")
    execution.configure_parser(p)


def _check_outputs(args: argparse.Namespace) -> None:
    """--out is a usable folder that holds none of the inputs (the particles star, its stacks, the
    reference and the mask), and every stack is found — checked before anything is written."""
    from ..io.stacks import referenced_stacks
    from ..io.star import read_star
    from ..safewrite import check_output_path, refuse_overwriting_inputs

    check_output_path(args.out, "--out", folder=True)
    stacks = referenced_stacks(read_star(args.particles, need_stacks=False), required=True)
    refuse_overwriting_inputs([], [args.particles, args.ref, args.mask] + stacks, out_dir=args.out)


def run(args: argparse.Namespace) -> int:
    gpu = execution.parse_gpus(args.gpu)
    for name in ("particles", "ref", "mask"):
        v = getattr(args, name)
        if v and not Path(v).exists():
            raise InputError("file not found", path=v, field=f"--{name}")
    batch = parse_batch(args.batch)
    _check_numbers(args)
    _check_outputs(args)
    from ..refine import global_refine
    from ..refine.global_refine import RefineParams
    from ..symmetry import symmetry_matrices

    prior_angle, prior_shift = pose_prior(args, RefineParams.prior_angle, RefineParams.prior_shift)
    out = Path(args.out)
    if args.cont and not (out / "params.json").exists():
        raise InputError("nothing to continue (no params.json)", path=out, field="--continue")
    params = RefineParams(particles=str(Path(args.particles).resolve()), out=str(out), ref=args.ref and str(Path(args.ref).resolve()),
                          ref_lowpass=args.ref_lowpass, iterations=args.iterations, ngauss=args.ngauss, maxres=args.maxres,
                          minres=args.minres, sym=args.sym, mask=args.mask and str(Path(args.mask).resolve()), batch=batch,
                          chunk=args.chunk, steps=args.steps, lr_angle=args.lr_angle, lr_shift=args.lr_shift, ring_weight=args.ring_weight,
                          prior_angle=prior_angle, prior_shift=prior_shift, gpu=gpu,
                          cpu=args.cpu, seed=args.seed, new_split=args.new_split, threads=args.threads,
                          force=args.force, backend=args.backend)
    symmetry_matrices(params.sym)  # validates --sym
    options = execution.execution_options(args, gpu, out)
    rc, _ = execution.run_on_executor("refine", options, lambda ex: global_refine.run_global(params, executor=ex))
    return rc


def _check_numbers(args) -> None:
    """Every numeric option in its range before anything runs (NaN is never in range)."""
    def need(ok: bool, flag: str, what: str) -> None:
        if not ok:
            raise InputError(f"{what} (got {getattr(args, flag.lstrip('-').replace('-', '_'), None)!r})", field=flag)

    finite = math.isfinite
    need(args.iterations >= 0, "--iter", "must be ≥ 0")
    for flag in ("--chunk", "--steps"):  # --batch: parse_batch
        need(getattr(args, flag[2:]) >= 1, flag, "must be ≥ 1")
    need(args.ngauss is None or args.ngauss >= 1, "--ngauss", "must be ≥ 1 (leave it out to estimate it)")
    need(args.threads is None or args.threads >= 1, "--threads", "must be ≥ 1")
    for flag in ("--lr-angle", "--lr-shift", "--minres", "--ref-lowpass"):
        v = getattr(args, flag[2:].replace("-", "_"))
        need(finite(v) and v > 0, flag, "must be a positive number")
    need(args.maxres is None or (finite(args.maxres) and args.maxres > 0), "--maxres", "must be a positive resolution in Å")
    if args.maxres is not None and args.maxres >= args.minres:
        raise InputError(f"--maxres {args.maxres:g} Å must be finer (smaller) than --minres {args.minres:g} Å",
                         field="--maxres")
    for flag in ("--prior-angle", "--prior-shift"):
        v = getattr(args, flag[2:].replace("-", "_"))
        need(v is None or finite(v), flag, "must be a number")
