"""Patch-by-patch GMM refinement: focused refinement of K patches, then composite half maps.

From a finished run (--from): K-means of its GMM centres into --patches patches (the same for both
halves), one soft mask per patch (--patch-shape tight: the particle's density shared out by nearest
Gaussian, so the patches tile it; sphere: radius = its farthest Gaussian; both plus a --falloff
pixel soft edge); per patch --iter focused iterations (Gaussians outside its mask widened) from
the run's final state; then per half the composite Σ M_i·Map_i / Σ M_i (the global map filling
where Σ M_i < 1) and the gold-standard FSC of the two composite halves.  Each patch is its own
resumable run in DIR/patch_NN: --gpu 0,1,2,3 (one worker per GPU), --workers, --dask-scheduler or
--cluster run patches at once, one unit per patch; --patch N runs only some (the call that finds
every patch finished makes the composite).  --reimpose SYM symmetrises the composite of a
run on symmetry-expanded particles.

    gmmcore refine-patches --from refined --patches 8 --iter 3 --out patches
    gmmcore refine-patches --from refined --patches 8 --patch 3 --out patches   # one patch (a worker)

Writes DIR/final/half1.mrc, half2.mrc (composite), map.mrc, weights.mrc; DIR/patch_NN/final/
(each patch's particles.star, half maps, GMMs); DIR/masks/patch_NN.mrc; DIR/patches.json;
DIR/summary.json (kind "patches": per-patch and composite FSCs) and DIR/run.log.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import defaults
from ..errors import InputError
from ..options import (add_alignment_arguments, add_focus_arguments, alignment_values, at_least, check,
                       check_band_on_grid, check_continue, check_user_mask, claim_run_output, existing, run_grid)
from ..parallel import flags as execution


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, metavar="RUN_DIR", help="a finished gmmcore run (with GMMs)")
    p.add_argument("--patches", type=int, default=8, help="number of patches K (default 8)")
    p.add_argument("--iter", dest="iterations", type=int, default=3, help="focused iterations per patch (default 3)")
    p.add_argument("--patch-shape", choices=defaults.PATCH_SHAPES, default=defaults.PATCH_SHAPE,
                   help="patch masks: tight = the particle's density shared out by nearest Gaussian (the patches "
                        "tile the particle); sphere = a sphere around each patch's Gaussians (default %s)"
                        % defaults.PATCH_SHAPE)
    p.add_argument("--falloff", type=float, default=5.0, help="soft fall-off of the patch masks, pixels (default 5)")
    p.add_argument("--patch-seed", type=int, default=0, help="seed of the K-means of the GMM centres (default 0)")
    p.add_argument("--patch", default=None, metavar="N[,N...]",
                   help="run only these patches (1-based), e.g. one per worker; the composite waits for all")
    p.add_argument("--reimpose", default=None, metavar="SYM",
                   help="symmetrise the composite (particles expanded with gmmcore expand-symmetry, refined in C1)")
    p.add_argument("--fsc-mask", metavar="MRC", help="mask of the FSC (default: the --from run's FSC mask)")
    p.add_argument("--out", required=True, help="run directory (re-running the same command continues it)")
    add_alignment_arguments(p, gpu_help="GPU id(s), e.g. 0 or 0,1,2,3 (default: the first GPU the backend sees); "
                                        "several ids: one patch per GPU at once")
    add_focus_arguments(p)
    execution.configure_parser(p)


def run(args: argparse.Namespace) -> int:
    from ..refine.patches import PatchParams, run_patches

    check(args, {"--patches": at_least(1), "--falloff": at_least(0), "--patch-seed": at_least(0)})
    check_continue(args)
    only = None
    if args.patch:
        try:
            only = [int(x) for x in str(args.patch).replace(" ", "").split(",") if x]
        except ValueError:
            raise InputError(f"not a list of patch numbers: {args.patch!r}", field="--patch") from None
    _check_before_writing(args, only)
    params = PatchParams(source=existing(args.source, "--from"), out=str(args.out), patches=args.patches,
                         iterations=args.iterations, patch_shape=args.patch_shape, falloff_px=args.falloff,
                         patch_seed=args.patch_seed, only=only,
                         reimpose=args.reimpose, fsc_mask=existing(args.fsc_mask, "--fsc-mask") if args.fsc_mask else None,
                         **alignment_values(args))
    # one unit per patch: several GPUs / workers refine patches at once (--gpu 0,1 / --workers / --cluster)
    options = execution.execution_options(args, params.gpu, Path(args.out))
    rc, s = execution.run_on_executor("refine-patches", options, lambda ex: run_patches(params, executor=ex))
    if rc:
        return rc
    comp = s.composite()
    if comp is None:
        done = sum(1 for r in s.patch_records() if r.complete)
        print(f"{done} of {len(s.patch_records())} patches finished in {args.out}; run again without --patch "
              "(or with the rest) for the composite")
    else:
        print(f"resolution {s.resolution_initial:.2f} Å (start) -> {comp.resolution:.2f} Å (composite); "
              f"results in {args.out}/final")
    return 0


def _check_before_writing(args: argparse.Namespace, only) -> None:
    """The band against the grid, the patch count against the Gaussians, the FSC mask and the
    output folder (one lock per patch with --patch: workers share a run) — before anything is written."""
    source = existing(args.source, "--from")
    if only is not None and any(not 1 <= i <= args.patches for i in only):
        raise InputError(f"patches are numbered 1..{args.patches} (got {args.patch})", field="--patch")
    grid = run_grid(source)
    if grid is not None:
        box, apix, n_gauss, density = grid
        check_band_on_grid(args, apix)
        if n_gauss is not None and args.patches > n_gauss:
            raise InputError(f"{args.patches} patches but the --from run's GMM has {n_gauss} Gaussians: at most "
                             "one patch per Gaussian", field="--patches")
        if args.fsc_mask:
            check_user_mask(args.fsc_mask, "--fsc-mask", box, apix, density)
    keys = None if only is None else [f"patch_{i:02d}" for i in sorted(set(only))]
    claim_run_output(args, "patches", "refine-patches", [source, args.fsc_mask], input_runs=[source],
                     lock_keys=keys)
