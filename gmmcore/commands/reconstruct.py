"""Reconstruct the two half maps of particles and measure their gold-standard FSC.

Direct Fourier inversion of each half set (padding, trilinear insertion, CTF weighting of
phase-flipped or raw images, gridding correction, symmetry); FSC unmasked and masked (mask from
--mask or an automatic one), resolution at FSC 0.143.

    gmmcore reconstruct --particles imported/particles.star --sym C1 --out rec

Writes DIR/half1.mrc, half2.mrc, map.mrc (average, low-passed to the resolution) and summary.json.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from .. import defaults
from ..errors import InputError


def configure_parser(p) -> None:
    p.add_argument("--particles", required=True, metavar="STAR", help="particles (RELION star) with poses and half sets")
    p.add_argument("--sym", default="C1", help="point group: C1, Cn, Dn, T, O, I (RELION orientation); default C1")
    p.add_argument("--mask", metavar="MRC", help="mask for the masked FSC (default: automatic mask from the map)")
    p.add_argument("--pad", type=float, default=2, help="padding factor (default 2)")
    p.add_argument("--chunk", type=int, default=defaults.CHUNK,
                   help=f"images read per chunk (default {defaults.CHUNK})")
    p.add_argument("--workers", type=int, default=None, help="processes: 2 reconstructs the halves in parallel (default: 2 if >= 2 CPUs and >= 2000 particles)")
    p.add_argument("--out", default="reconstruct", metavar="DIR", help="output folder (default ./reconstruct)")


def run(args) -> int:
    from ..fourier import lowpass
    from ..fsc import half_map_report
    from ..io.maps import read_map_on_grid, write_map
    from ..io.star import read_star
    from ..masks import check_in_particle_sphere, check_mask, check_overlap
    from ..particles import check_geometry, check_split
    from ..reconstruct import reconstruct_halves
    from ..io.stacks import referenced_stacks
    from ..safewrite import OutputGuard, check_output_path, claim_output, refuse_overwriting_inputs
    from ..summary import HalfMapReport, ReconstructSummary
    from ..symmetry import symmetry_matrices, symmetry_name

    symmetry_matrices(args.sym)
    if not (math.isfinite(args.pad) and 1 <= args.pad <= 4):
        raise InputError(f"padding factor must be between 1 and 4 (got {args.pad})", field="--pad")
    if args.chunk < 1:
        raise InputError(f"chunk must be >= 1 (got {args.chunk})", field="--chunk")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"must be >= 1 (got {args.workers})", field="--workers")
    check_output_path(args.out, "--out", folder=True)
    t0 = time.time()
    table = read_star(args.particles)
    box, apix = check_geometry(table)
    rows = check_split(table)
    mask = check_mask(read_map_on_grid(args.mask, box, apix), path=args.mask) if args.mask else None
    if mask is not None:  # its overlap with the density is checked once the half maps are made
        check_in_particle_sphere(mask, path=args.mask)
    out = Path(args.out)
    inputs = [args.particles, args.mask] + referenced_stacks(table, required=True)
    refuse_overwriting_inputs([out / f for f in ("half1.mrc", "half2.mrc", "map.mrc", "summary.json")], inputs,
                              out_dir=out)
    claim_output(out, "reconstruct", "reconstruct", inputs)
    with OutputGuard(out):
        halves = reconstruct_halves(table, sym=args.sym, pad=args.pad, chunk=args.chunk, workers=args.workers)
        if mask is not None:  # the particle's map is known only now: the mask must overlap its density
            check_overlap(mask, 0.5 * (halves[1] + halves[2]), apix, path=args.mask)
        report = half_map_report(halves[1], halves[2], apix, mask=mask)
        avg = lowpass(0.5 * (halves[1] + halves[2]), apix, report["resolution"])
        write_map(out / "half1.mrc", halves[1], apix)
        write_map(out / "half2.mrc", halves[2], apix)
        write_map(out / "map.mrc", avg.astype(np.float32), apix)
        ReconstructSummary(report=HalfMapReport.from_json(report),
                           n_particles={str(h): int(r.size) for h, r in rows.items()}, apix=apix, box=box, sym=symmetry_name(args.sym), pad=args.pad,
                           mask=str(args.mask) if args.mask else "auto", particles=str(args.particles),
                           seconds=round(time.time() - t0, 2)).save(out)
    print(f"resolution {report['resolution']:.2f} Å (masked), {report['resolution_unmasked']:.2f} Å (unmasked); "
          f"maps in {out}")
    return 0
