"""Conformation to pose: each particle's conformation (from `gmmcore heterogeneity`) → a change of pose for one region, then focused refinement.

Per half set, independently: decode each particle's latent into its conformation GMM; find the
pose at which the masked neutral GMM projects like the particle's masked conformation GMM does at
its initial pose (Adam on a rotation vector and a shift, --steps steps from the initial pose);
reconstruct the half maps at the new poses; then --focus-iter iterations of focused refinement
with the same mask.  Re-running the same command continues a killed run; with a higher --focus-iter
it adds focused iterations, and with other focused-stage options before the stage's first iteration
(e.g. after --focus-iter 0) it starts that stage anew; the conversion (DIR/convert/) is reused.

    gmmcore conf2pose --from heter --mask domain_mask.mrc --steps 30 --focus-iter 3 --out c2p

Writes DIR/final/ (particles.star, half1.mrc, half2.mrc, map.mrc, GMMs, pose_changes.npz) like any
refinement run, DIR/summary.json (kind "conf2pose": FSC in the mask for the consensus, the
converted poses and each focused iteration) and DIR/run.log.  The result is one region's
refinement: it can join a patch composite as one more patch.  ``--res`` is the old name of
``--convert-maxres`` (deprecated).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import defaults
from ..errors import InputError
from ..options import (RESOLUTION, TF_ONLY, add_band_arguments, add_deprecated_alias, add_focus_arguments,
                       add_prior_arguments, add_run_arguments, add_step_arguments, at_least, check, check_continue,
                       claim_run_output, existing, parse_batch, pose_prior, warn_without_gpu)
from ..parallel.flags import parse_gpus
from ..resources import set_cpu_threads


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, help="a gmmcore heterogeneity run directory")
    p.add_argument("--mask", required=True, help="mask of the target region (MRC, on the particles' grid)")
    p.add_argument("--out", required=True, help="run directory (re-running the same command continues it)")
    add_step_arguments(p, steps=30, lr_angle=2.0, lr_shift=0.5, steps_help="Adam steps of the pose search per particle",
                       lr_angle_note="; decays to 10 %%: reaches ≈ 33° in 30 steps")
    p.add_argument("--convert-maxres", type=float, help="finest resolution of the projections compared, Å "
                                                        "(default: the heterogeneity analysis' resolution)")
    add_deprecated_alias(p, "--res", "--convert-maxres", dest="convert_maxres")
    p.add_argument("--focus-iter", type=int, default=3, help="focused refinement iterations afterwards (default 3)")
    add_band_arguments(p, maxres_help="focused refinement: finest target resolution, Å",
                       minres_help="focused refinement: coarsest resolution in the FRC, Å")
    p.add_argument("--focus-steps", type=int, default=defaults.STEPS,
                   help=f"focused refinement: gradient steps per particle (default {defaults.STEPS})")
    add_prior_arguments(p, centred_on="the converted poses (focused refinement)")
    add_focus_arguments(p)
    add_run_arguments(p, backend_help=TF_ONLY,
                      gpu_help="GPU id to use (default: the first GPU TensorFlow sees)")


RULES = {"--convert-maxres": RESOLUTION, "--focus-iter": at_least(0), "--focus-steps": at_least(1)}


def run(args: argparse.Namespace) -> int:
    check(args, RULES, tf_only=True)
    batch = parse_batch(args.batch)
    prior_angle, prior_shift = pose_prior(args)
    src = Path(args.source)
    if not (src / "summary.json").exists():
        raise InputError("not a heterogeneity run directory (no summary.json)", path=src, field="--from")
    check_continue(args, "convert/params.json")
    mask = existing(args.mask, "--mask")
    claim_run_output(args, "conf2pose", "conf2pose", [mask], input_runs=[src])
    from ..backend import get_backend

    backend = get_backend("tf")  # TensorFlow imported with its start-up chatter kept off stderr, before the networks
    warn_without_gpu(backend, args, "conf2pose")
    from ..heter.conf2pose import Conf2PoseParams, run_conf2pose

    if args.threads is not None:  # the networks' thread pools and FFT workers follow it
        set_cpu_threads(args.threads)
    params = Conf2PoseParams(
        source=str(src.resolve()), mask=mask, out=str(args.out), steps=args.steps,
        lr_angle=args.lr_angle, lr_shift=args.lr_shift, res=args.convert_maxres, focus_iter=args.focus_iter,
        maxres=args.maxres, minres=args.minres, focus_steps=args.focus_steps,
        prior_angle=prior_angle, prior_shift=prior_shift,
        batch=batch, chunk=args.chunk, seed=args.seed, gpu=parse_gpus(args.gpu), cpu=args.cpu,
        width_rule=args.width_rule, mask_level=args.mask_level)
    run_conf2pose(params)
    return 0

