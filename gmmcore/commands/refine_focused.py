"""Focused GMM refinement: refine poses on a masked region (Gaussians outside the mask widened).

From a finished run (--from, e.g. a `gmmcore refine` directory) or from another program's
particles and half maps (--particles --half1 --half2): per half, a GMM of the half map whose
Gaussians outside --mask are widened (σ'² = σ²/(0.25 + 0.75·M), M the mask at the Gaussian's centre:
2× where M = 0; --width-rule sigma for the paper's σ' = σ/(…), 4×), then local pose refinement of that half's particles against it, reconstruction and
FSC — unmasked, with the FSC mask, and within the focus mask.  The pose prior is centred on the
poses the run starts from.  Re-running the same command continues a killed run.

    gmmcore refine-focused --from refined --mask lid_mask.mrc --iter 3 --out focused
    gmmcore refine-focused --particles run_data.star --half1 h1.mrc --half2 h2.mrc --mask m.mrc --out focused

Writes DIR/final/ (particles.star, half1.mrc, half2.mrc, map.mrc, GMMs, pose_changes.npz against
the start), DIR/focus_mask.mrc, DIR/fsc_mask.mrc, DIR/summary.json (kind "focused"; per iteration
resolution_focus / fsc_focus besides the usual FSCs) and DIR/run.log.
"""
from __future__ import annotations

import argparse

from ..errors import InputError
from ..options import (add_alignment_arguments, add_focus_arguments, alignment_values, check, check_band_on_grid,
                       check_continue, check_user_mask, claim_run_output, existing, existing_all, run_grid)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", metavar="RUN_DIR", help="a finished gmmcore run to start from")
    p.add_argument("--particles", metavar="STAR", help="or: particles with poses and half sets (RELION star)")
    p.add_argument("--half1", metavar="MRC", help="with --particles: half map 1 at those poses")
    p.add_argument("--half2", metavar="MRC", help="with --particles: half map 2 at those poses")
    p.add_argument("--mask", required=True, metavar="MRC", help="focus mask (0..1) on the particles' grid")
    p.add_argument("--fsc-mask", metavar="MRC",
                   help="mask of the FSC (default: the --from run's FSC mask, or an automatic one)")
    p.add_argument("--iter", dest="iterations", type=int, default=3, help="focused iterations (default 3)")
    p.add_argument("--reimpose", default=None, metavar="SYM",
                   help="also write the symmetric composite final/reimposed_*.mrc (particles expanded with "
                        "gmmcore expand-symmetry, refined in C1 with a mask on one asymmetric unit)")
    p.add_argument("--out", required=True, help="run directory (re-running the same command continues it)")
    add_alignment_arguments(p)
    add_focus_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..refine.focused import FocusedParams, run_focused_command

    check(args)
    if bool(args.source) == bool(args.particles):
        raise InputError("give either --from RUN_DIR or --particles STAR (with --half1 and --half2)", field="--from")
    if args.particles and not (args.half1 and args.half2):
        raise InputError("--particles needs --half1 and --half2 (the half maps at those poses)", field="--half1")
    check_continue(args)
    paths = existing_all(args, ("--particles", "--half1", "--half2", "--mask", "--fsc-mask"))
    source = existing(args.source, "--from") if args.source else None
    _check_before_writing(args, paths, source)
    params = FocusedParams(out=str(args.out), iterations=args.iterations, source=source, **paths,
                           reimpose=args.reimpose and args.reimpose.upper(), **alignment_values(args))
    s = run_focused_command(params)
    print(f"resolution {s.resolution_initial:.2f} -> {s.resolution_final:.2f} Å (FSC mask); within the focus "
          f"mask {s.final.resolution_focus_initial:.2f} -> {s.final.resolution_focus:.2f} Å; "
          f"results in {args.out}/final")
    return 0


def _check_before_writing(args: argparse.Namespace, paths: dict, source) -> None:
    """The band against the grid, the masks (grid, 0..1, not empty, overlapping the particle) and
    the output folder — before anything is written."""
    from ..io.maps import read_map

    stacks = []
    if source:
        grid = run_grid(source)
    else:
        from ..io.stacks import referenced_stacks
        from ..io.star import read_star

        stacks = referenced_stacks(read_star(paths["particles"], need_stacks=False))
        m, apix = read_map(paths["half1"])
        m2, apix2 = read_map(paths["half2"])
        grid = (m.shape[0], apix, None, 0.5 * (m + m2) if m2.shape == m.shape else None)
    if grid is not None:
        box, apix, _, density = grid
        check_band_on_grid(args, apix)
        for flag in ("--mask", "--fsc-mask"):
            path = paths[flag.lstrip("-").replace("-", "_")]
            if path:
                check_user_mask(path, flag, box, apix, density)
    claim_run_output(args, "focused", "refine-focused", list(paths.values()) + stacks, input_runs=[source])
