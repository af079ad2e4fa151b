"""Import particles from a RELION star or a cryoSPARC .cs: phase flip, write star + stack + summary.

Outputs in ``--out DIR`` (see docs/ARCHITECTURE.md): ``particles.star`` (RELION 3.1+, Å origins,
rlnRandomSubset, rlnCtfDataArePhaseFlipped), ``particles.mrcs`` (phase-flipped images, unless
``--metadata-only`` / ``--no-phase-flip`` / the input is already flipped, in which case the star
points at the original stacks by absolute path), ``summary.json``.  The original image name of
every particle is kept in rlnImageOriginalName so ``gmmcore export --reference`` can find it.
Inputs are never modified; a failed import leaves nothing in DIR.

    gmmcore import --star Refine3D/job042/run_data.star --out imported
    gmmcore import --cs J42_particles.cs --stack-root /cryosparc/P3 --out imported
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..particles import assign_split
from ..safewrite import OutputGuard
from ..summary import ImportSummary

NEW_SPLIT_SEED = 20240601
STAR_NAME = "particles.star"
STACK_NAME = "particles.mrcs"


def configure_parser(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--star", metavar="FILE", help="RELION particle star file (3.0, 3.1, 4 or 5)")
    src.add_argument("--cs", metavar="FILE", help="cryoSPARC particle .cs file")
    p.add_argument("--stack-root", metavar="DIR", default=None,
                   help="folder that relative image paths are relative to (default: the input file's folder, "
                        "the working folder, then the two folders above the input file)")
    p.add_argument("--apix", type=float, default=None, metavar="A",
                   help="pixel size (Å); fills a missing one, must agree within 1%% with the file's")
    p.add_argument("--metadata-only", action="store_true",
                   help="do not read images: write the star with absolute paths to the original stacks")
    p.add_argument("--no-phase-flip", action="store_true",
                   help="check the images but do not phase flip them; the star points at the original stacks")
    p.add_argument("--new-split", action="store_true",
                   help="assign a random gold-standard half split (fixed seed) when the input has none")
    p.add_argument("--chunk", type=int, default=20000, help="images per chunk (memory use ~ chunk·box²·4 bytes)")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder")


def _log(msg: str) -> None:
    print(f"gmmcore import: {msg}", file=sys.stderr, flush=True)


def read_input(args):
    """The ParticleTable of ``--star`` / ``--cs`` (pixel size, split checked)."""
    from ..io.cryosparc import read_cs
    from ..io.star import read_star

    if args.star is not None:
        return read_star(args.star, image_root=args.stack_root, apix=args.apix)
    return read_cs(args.cs, image_root=args.stack_root, apix=args.apix)


def _pass_through(table) -> pd.DataFrame:
    if isinstance(table.star_particles, pd.DataFrame):
        return table.star_particles.reset_index(drop=True).copy()
    return pd.DataFrame(index=pd.RangeIndex(len(table)))


def run(args) -> int:
    from ..io.stacks import StackWriter, iter_images, resolved_image_names
    from ..io.star import write_star
    from ..progress import progress

    if args.chunk < 1:
        raise InputError("must be at least 1", field="--chunk")
    table = read_input(args)
    n = len(table)
    if n == 0:
        raise InputError("no particles in the input", path=table.source)
    split = assign_split(table, args.new_split, seed=NEW_SPLIT_SEED)
    original_names = np.asarray(table.image_name).astype(str)
    out = Path(args.out)

    flip = not (args.metadata_only or args.no_phase_flip or table.phase_flipped)
    if flip:
        sizes = np.unique(table.image_size)
        if sizes.size != 1:
            raise InputError(f"particles have different image sizes {sizes.tolist()}; import each size separately",
                             path=table.source, field="rlnImageSize")
        # resolve every stack before writing anything
        resolved_image_names(table)

    with OutputGuard(out):
        if flip:
            from ..ctf import phase_flip

            box = int(table.image_size[0])
            n_chunks = math.ceil(n / args.chunk)
            with StackWriter(out / STACK_NAME, box, float(np.median(table.apix)), n=n) as writer:
                for rows, images in progress(iter_images(table, chunk=args.chunk), total=n_chunks,
                                             desc="phase flip", unit="chunk"):
                    apix_rows = table.apix[rows]
                    flipped = np.empty_like(images)
                    for a in np.unique(apix_rows):
                        m = apix_rows == a
                        flipped[m] = phase_flip(images[m], table.ctf.subset(rows[m]), float(a))
                    writer.write(rows, flipped)
            table.image_name = np.asarray([f"{i + 1:06d}@{STACK_NAME}" for i in range(n)], dtype=object)
            table.phase_flipped = True
            table.image_root = str(out.resolve())
        else:
            if args.no_phase_flip and not args.metadata_only:
                for _ in progress(iter_images(table, chunk=args.chunk), total=math.ceil(n / args.chunk),
                                  desc="check images", unit="chunk"):
                    pass  # reading raises on NaN images and wrong sizes
            table.image_name = resolved_image_names(table)
            if table.phase_flipped and not (args.metadata_only or args.no_phase_flip):
                _log("the input is already phase flipped; images are used as they are")
        sp = _pass_through(table)
        if "rlnImageOriginalName" not in sp.columns:
            sp["rlnImageOriginalName"] = original_names
        table.star_particles = sp
        write_star(table, out / STAR_NAME)

        if split == "new-random":
            _log(f"the input has no half-set split: assigned a new random split (seed {NEW_SPLIT_SEED})")
        groups, counts = np.unique(table.optics_group, return_counts=True)
        summary = ImportSummary(
            n_particles=n,
            per_half={"1": int((table.half == 1).sum()), "2": int((table.half == 2).sum())},
            per_optics_group={str(int(g)): int(c) for g, c in zip(groups, counts)},
            phase_flipped=bool(table.phase_flipped),
            source=str(Path(table.source).resolve()),
            format=table.meta.get("format"),
            split=split,
            star=STAR_NAME,
            stack=STACK_NAME if flip else None,
            apix=sorted({round(float(a), 6) for a in np.unique(table.apix)}),
            box=sorted({int(b) for b in np.unique(table.image_size)}),
        )
        summary.save(out)
    _log(f"{n} particles ({summary.per_half['1']} / {summary.per_half['2']} per half) -> {out / STAR_NAME}")
    return 0
