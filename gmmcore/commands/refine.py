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
from pathlib import Path

from .. import defaults
from ..options import POSITIVE, add_alignment_arguments, check, check_continue, existing_all, parse_batch, pose_prior
from ..parallel import flags as execution
from ..parallel.flags import parse_gpus


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--particles", required=True, help="RELION star with poses and half sets (e.g. from `gmmcore import`)")
    p.add_argument("--out", required=True, help="run directory (re-running the same command continues it)")
    p.add_argument("--ref", help="optional starting map (MRC); low-passed to --ref-lowpass for the first GMMs")
    p.add_argument("--ref-lowpass", type=float, default=20.0, help="low-pass for --ref, Å (default 20)")
    p.add_argument("--iter", dest="iterations", type=int, default=5, help="iterations (default 5)")
    p.add_argument("--mask", help="soft mask (MRC) for the masked FSC and applied to each half map before its GMM is built (default: an automatic mask, used for the FSC only)")
    p.add_argument("--new-split", action="store_true",
                   help="make a new random half split when the input has no usable one (none, incomplete, a half "
                        "with < 10%% of the particles, or an image in both halves); logged in run.log")
    p.add_argument("--force", action="store_true",
                   help="refine even with fewer particles per half set than a gold-standard refinement needs "
                        "(π·box/2: the views that fill Fourier space to Nyquist)")
    add_alignment_arguments(p, sym=defaults.SYMMETRY, prior_help="the input poses",
                            seed_help="random seed (GMM seeding, new split)",
                            gpu_help="GPU id(s), e.g. 0 or 0,1,2,3 (default: the first GPU the backend sees); "
                                     "several ids: one worker process per GPU, particles shared out")
    execution.configure_parser(p)


def _check_outputs(args: argparse.Namespace, particles: str):
    """--out is a usable folder that holds none of the inputs (the particles star, its stacks, the
    reference and the mask), and every stack is found — checked before anything is written.

    Returns the particles as :func:`gmmcore.refine.global_refine.run_global` reads them from
    ``particles`` (the star's absolute path), so the star is parsed once: every stack was found, so
    reading without requiring the stacks gave the same table (RELION 3.0 image sizes included)."""
    from dataclasses import replace

    from ..io.stacks import referenced_stacks
    from ..io.star import read_star
    from ..safewrite import check_output_path, claim_output, refuse_overwriting_inputs

    check_output_path(args.out, "--out", folder=True)
    table = read_star(args.particles, need_stacks=False)  # errors name the star as given
    stacks = referenced_stacks(table, required=True)
    inputs = [args.particles, args.ref, args.mask] + stacks
    refuse_overwriting_inputs([], inputs, out_dir=args.out)
    claim_output(args.out, "global", "refine", inputs)
    # one-value columns shared here: the caller holds this table while the refinement runs
    return replace(table, source=particles).with_shared_values()


def run(args: argparse.Namespace) -> int:
    check(args, {"--ref-lowpass": POSITIVE})
    gpu = parse_gpus(args.gpu)
    paths = existing_all(args, ("--particles", "--ref", "--mask"))
    table = _check_outputs(args, paths["particles"])
    from ..refine import global_refine
    from ..refine.global_refine import RefineParams

    prior_angle, prior_shift = pose_prior(args, RefineParams.prior_angle, RefineParams.prior_shift)
    out = Path(args.out)
    check_continue(args)
    params = RefineParams(particles=paths["particles"], out=str(out), ref=paths["ref"],
                          ref_lowpass=args.ref_lowpass, iterations=args.iterations, ngauss=args.ngauss, maxres=args.maxres,
                          minres=args.minres, sym=args.sym, mask=paths["mask"], batch=parse_batch(args.batch),
                          chunk=args.chunk, steps=args.steps, lr_angle=args.lr_angle, lr_shift=args.lr_shift, ring_weight=args.ring_weight,
                          prior_angle=prior_angle, prior_shift=prior_shift, gpu=gpu,
                          cpu=args.cpu, seed=args.seed, new_split=args.new_split, threads=args.threads,
                          force=args.force, backend=args.backend, band_rule=args.band_rule,
                          align_from=args.align_from,
                          drop_worst=args.drop_worst, gmm_fit=args.gmm_fit, gmm_start=args.gmm_start, gmm_local_res=args.gmm_local_res,
                          gmm_n_scale=args.gmm_n_scale, gmm_density=args.gmm_density)
    options = execution.execution_options(args, gpu, out)
    rc, _ = execution.run_on_executor("refine", options,
                                      lambda ex: global_refine.run_global(params, executor=ex, table=table))
    return rc
