"""Local resolution of two half maps: windowed FSC at every voxel (as blocres does).

At points every --step voxels a cube of --window voxels (soft spherical window) is cut from both
half maps; the FSC of the two cubes falls below --threshold (default 0.5, the usual criterion for
small windows) at the local resolution.  Values between points are interpolated; voxels outside
--mask are 0.

    gmmcore local-resolution --half1 patches/final/half1.mrc --half2 patches/final/half2.mrc --out locres

Writes DIR/local_resolution.mrc (Å per voxel) and DIR/summary.json (window, threshold, median and
percentiles within the mask).
"""
from __future__ import annotations

import argparse

from ..errors import InputError


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--half1", required=True, metavar="MRC", help="half map 1")
    p.add_argument("--half2", required=True, metavar="MRC", help="half map 2")
    p.add_argument("--mask", metavar="MRC", help="only inside this mask (default: an automatic mask of the average)")
    p.add_argument("--window", type=int, default=16, help="window size, voxels (default 16)")
    p.add_argument("--step", type=int, default=2, help="distance between sample points, voxels (default 2)")
    p.add_argument("--threshold", type=float, default=0.5, help="FSC threshold (default 0.5)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path


    from ..io.maps import read_map, read_map_on_grid, write_map
    from ..localres import local_resolution, region_summary
    from ..masks import auto_mask
    from ..safewrite import OutputGuard
    from ..summary import LocalResolutionSummary

    if args.window < 4 or args.step < 1 or not 0 < args.threshold < 1:
        raise InputError("need --window ≥ 4, --step ≥ 1 and 0 < --threshold < 1")
    h1, apix = read_map(args.half1)
    h2, _ = read_map(args.half2)
    if h1.shape != h2.shape or len(set(h1.shape)) != 1:
        raise InputError(f"half maps of shapes {h1.shape} and {h2.shape}: need two equal cubes", path=args.half2,
                         field="--half2")
    mask = read_map_on_grid(args.mask, h1.shape[0], apix) if args.mask else auto_mask(0.5 * (h1 + h2), apix)
    out = Path(args.out)
    with OutputGuard(out):
        lr = local_resolution(h1, h2, apix, mask=mask, window_px=args.window, step=args.step,
                              threshold=args.threshold)
        write_map(out / "local_resolution.mrc", lr, apix)
        stats = region_summary(lr, mask)
        LocalResolutionSummary(local_resolution="local_resolution.mrc", window_px=args.window, step_px=args.step,
                               threshold=args.threshold, apix=apix, mask=str(args.mask) if args.mask else "auto",
                               within_mask=stats, half1=str(Path(args.half1).resolve()),
                               half2=str(Path(args.half2).resolve())).save(out)
    print(f"local resolution within the mask: median {stats['median']:.2f} Å (10-90 %: {stats['p10']:.2f}-"
          f"{stats['p90']:.2f} Å); map in {out}/local_resolution.mrc")
    return 0
