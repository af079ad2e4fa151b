"""Conformation to pose: each particle's conformation (from `gmmcore heterogeneity`) → a change of pose for one region, then focused refinement.

Per half set, independently: decode each particle's latent into its conformation GMM; find the
pose at which the masked neutral GMM projects like the particle's masked conformation GMM does at
its initial pose (Adam on a rotation vector and a shift, --steps steps from the initial pose);
reconstruct the half maps at the new poses; then --focus-iter iterations of focused refinement
with the same mask.  Re-running the same command continues a killed run.

    gmmcore conf2pose --from heter --mask domain_mask.mrc --steps 30 --focus-iter 3 --out c2p

Writes DIR/final/ (particles.star, half1.mrc, half2.mrc, map.mrc, GMMs, pose_changes.npz) like any
refinement run, DIR/summary.json (kind "conf2pose": FSC in the mask for the consensus, the
converted poses and each focused iteration) and DIR/run.log.  The result is one region's
refinement: it can join a patch composite as one more patch.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, help="a gmmcore heterogeneity run directory")
    p.add_argument("--mask", required=True, help="mask of the target region (MRC, on the particles' grid)")
    p.add_argument("--out", required=True, help="run directory (re-running the same command continues it)")
    p.add_argument("--steps", type=int, default=30, help="Adam steps of the pose search per particle (default 30)")
    p.add_argument("--lr-angle", type=float, default=2.0,
                   help="Adam step for rotations, degrees (default 2; decays to 10 %%: reaches ≈ 33° in 30 steps)")
    p.add_argument("--lr-shift", type=float, default=0.5, help="Adam step for shifts, pixels (default 0.5)")
    p.add_argument("--res", type=float, help="finest resolution of the projections compared, Å "
                                             "(default: the heterogeneity analysis' resolution)")
    p.add_argument("--focus-iter", type=int, default=3, help="focused refinement iterations afterwards (default 3)")
    p.add_argument("--maxres", type=float, help="focused refinement: finest target resolution, Å")
    p.add_argument("--minres", type=float, default=25.0, help="focused refinement: coarsest resolution in the FRC, Å")
    p.add_argument("--focus-steps", type=int, default=10, help="focused refinement: gradient steps per particle")
    p.add_argument("--prior-angle", type=float, default=3.0,
                   help="focused refinement: pose prior (degrees) centred on the converted poses (default 3)")
    p.add_argument("--prior-shift", type=float, default=1.0, help="focused refinement: pose prior, pixels (default 1)")
    p.add_argument("--no-prior", action="store_true", help="focused refinement without a pose prior")
    p.add_argument("--batch", type=int, default=16, help="particles per batch on the device (default 16)")
    p.add_argument("--chunk", type=int, default=20000, help="particles per chunk (default 20000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (GMM seeding)")
    p.add_argument("--gpu", default=None, help="GPU id to use (default: the first GPU TensorFlow sees)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is visible")
    p.add_argument("--continue", dest="cont", action="store_true",
                   help="continue the run in --out (re-running the same command does the same)")


def run(args: argparse.Namespace) -> int:
    from ..heter.conf2pose import Conf2PoseParams, run_conf2pose

    src = Path(args.source)
    if not (src / "summary.json").exists():
        raise InputError("not a heterogeneity run directory (no summary.json)", path=src, field="--from")
    if args.cont and not (Path(args.out) / "convert" / "params.json").exists():
        raise InputError("nothing to continue (no convert/params.json)", path=args.out, field="--continue")
    if not Path(args.mask).exists():
        raise InputError("file not found", path=args.mask, field="--mask")
    for name in ("steps", "batch", "chunk", "focus_steps"):
        if getattr(args, name) < 1:
            raise InputError("must be ≥ 1", field="--" + name.replace("_", "-"))
    if args.focus_iter < 0:
        raise InputError("must be ≥ 0", field="--focus-iter")
    for name in ("prior_angle", "prior_shift", "lr_angle", "lr_shift"):
        if getattr(args, name) <= 0:
            raise InputError("must be > 0", field="--" + name.replace("_", "-"))
    gpu = None
    if args.gpu not in (None, ""):
        try:
            gpu = [int(x) for x in str(args.gpu).split(",") if x.strip()]
        except ValueError:
            raise InputError(f"not a list of GPU ids: {args.gpu!r}", field="--gpu") from None
    params = Conf2PoseParams(
        source=str(src.resolve()), mask=str(Path(args.mask).resolve()), out=str(args.out), steps=args.steps,
        lr_angle=args.lr_angle, lr_shift=args.lr_shift, res=args.res, focus_iter=args.focus_iter, maxres=args.maxres,
        minres=args.minres, focus_steps=args.focus_steps,
        prior_angle=None if args.no_prior else args.prior_angle, prior_shift=None if args.no_prior else args.prior_shift,
        batch=args.batch, chunk=args.chunk, seed=args.seed, gpu=gpu, cpu=args.cpu)
    run_conf2pose(params)
    return 0
