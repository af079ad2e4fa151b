"""Command-line options shared by several verbs (refine, refine-focused, refine-patches): alignment,
pose prior, device.

Not a verb: verbs never import each other, so what they share lives here (one layer below
:mod:`gmmcore.commands`).  The values and rules are those of ``gmmcore refine``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Union

from .errors import InputError


def add_alignment_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sym", default=None, help="symmetry (default: the --from run's, else C1; C1 for expanded particles)")
    p.add_argument("--ngauss", type=int, help="Gaussians per GMM (default: estimated from map and resolution)")
    p.add_argument("--maxres", type=float, help="finest target resolution used for alignment, Å")
    p.add_argument("--minres", type=float, default=25.0, help="coarsest resolution in the FRC, Å (default 25)")
    p.add_argument("--batch", default="16",
                   help="particles per batch on the device: the GPU-memory knob (default 16), or 'auto' (the "
                        "largest that fits the device's memory)")
    p.add_argument("--chunk", type=int, default=20000, help="particles read per chunk (default 20000)")
    p.add_argument("--steps", type=int, default=10, help="gradient steps per particle per iteration (default 10)")
    p.add_argument("--lr-angle", type=float, default=0.5, help="Adam step for rotations, degrees (default 0.5)")
    p.add_argument("--lr-shift", type=float, default=0.25, help="Adam step for shifts, pixels (default 0.25)")
    p.add_argument("--ring-weight", choices=["ssnr", "uniform"], default="ssnr",
                   help="FRC ring weighting: ssnr (default) or uniform (the paper's plain average)")
    p.add_argument("--prior-angle", type=float, default=None,
                   help="MAP pose prior centred on the poses this run starts from: expected angular error, "
                        "degrees (default 3)")
    p.add_argument("--prior-shift", type=float, default=None,
                   help="MAP pose prior: expected shift error, pixels (default 1)")
    p.add_argument("--no-prior", action="store_true", help="no pose prior (plain FRC maximum, as in the paper)")
    p.add_argument("--gpu", default=None,
                   help="GPU id (default: the first GPU visible); refine-patches: a list, e.g. 0,1,2,3, runs one "
                        "patch per GPU at once")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is visible")
    p.add_argument("--backend", choices=["tf", "jax"], default="tf",
                   help="array backend: tf (TensorFlow, the default) or jax (GPUs without TensorFlow; also the CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads to use (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="random seed (GMM seeding)")


def alignment_values(args: argparse.Namespace) -> dict:
    """Checked keyword values for the parameter dataclasses (FocusedParams, PatchParams)."""
    from .parallel.flags import parse_gpus

    gpu = parse_gpus(args.gpu)
    batch = parse_batch(args.batch)
    if args.chunk < 1 or args.steps < 1:
        raise InputError("--chunk and --steps must be ≥ 1")
    if args.threads is not None and args.threads < 1:
        raise InputError("must be ≥ 1", field="--threads")
    prior_angle, prior_shift = pose_prior(args)
    if args.sym:
        from .symmetry import symmetry_matrices

        symmetry_matrices(args.sym)
    return dict(sym=args.sym and args.sym.upper(), ngauss=args.ngauss, maxres=args.maxres, minres=args.minres,
                batch=batch, chunk=args.chunk, steps=args.steps, lr_angle=args.lr_angle, lr_shift=args.lr_shift,
                ring_weight=args.ring_weight, prior_angle=prior_angle, prior_shift=prior_shift, gpu=gpu, cpu=args.cpu, seed=args.seed,
                backend=args.backend, threads=args.threads)


def pose_prior(args: argparse.Namespace, angle_deg: float = 3.0, shift_px: float = 1.0):
    """(prior angle in degrees, prior shift in pixels) from ``--prior-angle/--prior-shift/--no-prior/
    --ring-weight`` (defaults ``angle_deg``, ``shift_px``); (None, None) without a prior.  The prior
    needs SSNR ring weights; given values must be > 0."""
    explicit = args.prior_angle is not None or args.prior_shift is not None
    if explicit and (args.no_prior or args.ring_weight != "ssnr"):
        raise InputError("a pose prior needs --ring-weight ssnr and no --no-prior", field="--prior-angle")
    for name in ("prior_angle", "prior_shift"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise InputError("must be > 0 (use --no-prior to switch the prior off)", field="--" + name.replace("_", "-"))
    if args.no_prior or args.ring_weight != "ssnr":
        return None, None
    return args.prior_angle or angle_deg, args.prior_shift or shift_px


def parse_batch(value) -> Union[int, str]:
    """``--batch``: a positive integer or 'auto'."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        b = int(value)
    except ValueError:
        raise InputError(f"not a batch size: {value!r} (a positive integer or 'auto')", field="--batch") from None
    if b < 1:
        raise InputError("must be ≥ 1 (or 'auto')", field="--batch")
    return b


def existing(path, flag: str) -> str:
    """The absolute path of an input that must exist (else InputError naming ``flag``)."""
    if not Path(path).exists():
        raise InputError("not found", path=path, field=flag)
    return str(Path(path).resolve())
