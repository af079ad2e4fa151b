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


def _available_memory() -> int:
    """Bytes of memory available to this process now (MemAvailable; 0 when unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def check_inputs(args: argparse.Namespace):
    """Every check before anything is written or the large arrays are allocated → (half 1, half 2,
    Å/px, mask or None, memory need in bytes)."""
    import os

    import numpy as np

    from ..io.maps import read_map, read_map_on_grid
    from ..localres import memory_bytes
    from ..masks import check_mask, check_overlap

    if args.window < 4:
        raise InputError(f"must be at least 4 voxels (got {args.window})", field="--window")
    if args.step < 1:
        raise InputError(f"must be at least 1 voxel (got {args.step})", field="--step")
    if not 0 < args.threshold < 1:
        raise InputError(f"must be between 0 and 1 (got {args.threshold})", field="--threshold")
    for flag, path in (("--half1", args.half1), ("--half2", args.half2), ("--mask", args.mask)):
        if path and not os.path.isfile(path):
            raise InputError("file not found", path=path, field=flag)
    if os.path.realpath(args.half1) == os.path.realpath(args.half2):
        raise InputError("is the same file as --half1: give the two independent half maps", path=args.half2,
                         field="--half2")
    h1, apix = read_map(args.half1)
    h2, apix2 = read_map(args.half2)
    if h1.shape != h2.shape or len(set(h1.shape)) != 1:
        raise InputError(f"half maps of shapes {h1.shape} and {h2.shape}: need two equal cubes", path=args.half2,
                         field="--half2")
    if abs(apix2 - apix) > 0.01 * apix:
        raise InputError(f"pixel size {apix2:g} Å differs from --half1's {apix:g} Å: the half maps must share "
                         "one grid", path=args.half2, field="--half2")
    if np.array_equal(h1, h2):
        raise InputError("holds the same map as --half1 (the local resolution would be Nyquist everywhere): give "
                         "the two independent half maps", path=args.half2, field="--half2")
    box = h1.shape[0]
    if args.window > box:
        raise InputError(f"{args.window} voxels is larger than the {box}-voxel box", field="--window")
    if args.step > box:
        raise InputError(f"{args.step} voxels is larger than the {box}-voxel box", field="--step")
    mask = check_mask(read_map_on_grid(args.mask, box, apix), path=args.mask) if args.mask else None
    if mask is not None:
        check_overlap(mask, 0.5 * (h1 + h2), apix, path=args.mask)
    need = memory_bytes(box, args.window)
    free = _available_memory()
    if free and need > free:
        raise InputError(f"needs about {need / 1e9:.1f} GB of memory, {free / 1e9:.1f} GB are available: use a "
                         "smaller --window", field="--window")
    return h1, h2, apix, mask, need


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ..io.maps import write_map
    from ..localres import local_resolution, region_summary
    from ..masks import auto_mask
    from ..safewrite import OutputGuard, check_output_path, claim_output
    from ..summary import LocalResolutionSummary

    check_output_path(args.out, "--out", folder=True)
    h1, h2, apix, mask, need = check_inputs(args)
    out = Path(args.out)
    claim_output(out, "local-resolution", "local-resolution", [args.half1, args.half2, args.mask])
    if mask is None:
        mask = auto_mask(0.5 * (h1 + h2), apix)
    print(f"gmmcore local-resolution: about {need / 1e9:.2f} GB of working memory", file=sys.stderr)
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
