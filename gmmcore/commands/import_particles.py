"""Import particles from a RELION star or a cryoSPARC .cs: phase flip, write star + stack + summary.

Outputs in ``--out DIR`` (see docs/ARCHITECTURE.md): ``particles.star`` (RELION 3.1+, Å origins,
rlnRandomSubset, rlnCtfDataArePhaseFlipped), ``particles.mrcs`` (phase-flipped images, unless
``--metadata-only`` / ``--no-phase-flip`` / the input is already flipped, in which case the star
points at the original stacks by absolute path), ``summary.json``.  The original image name of
every particle is kept in rlnImageOriginalName so ``gmmcore export --reference`` can find it.
Inputs are never modified: DIR may not be the input's folder, nor a folder holding its stacks; a
failed or interrupted import leaves nothing in DIR.

Where the stacks are looked for: the names as given (absolute), relative to --stack-root, the
input file's folder, the working folder and every folder above the input file (the RELION project
folder holding Extract/jobNNN/, the cryoSPARC project folder holding J12/); then the same names
without their leading folders (stacks moved elsewhere).  A missing stack names the folders searched.
--metadata-only reads no image: stacks found are written with absolute paths, the others keep
their names as given, with one warning "N stacks not found".

Missing values: pixel size → give --apix; voltage / Cs → give --voltage / --cs-mm (an error
otherwise, never a guess); amplitude contrast → 0.1 as in RELION, with a warning (--amp-contrast
sets another).  Half sets: no split, or particles without one, stop the import unless --new-split;
an empty or lopsided split (a half with < 10 % of the particles) is kept with a warning (refine
and reconstruct refuse it) — --new-split replaces it by a random one; an image in both halves is
an error (--new-split makes a split that keeps each image in one half).  Warnings go to stderr and
summary.json.

    gmmcore import --star Refine3D/job042/run_data.star --out imported
    gmmcore import --cs J42_particles.cs --stack-root /cryosparc/P3 --out imported
    gmmcore import --star old_relion30.star --voltage 300 --cs-mm 2.7 --metadata-only --out imported
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .. import defaults
from ..errors import InputError
from ..particles import MIN_HALF_FRACTION, assign_split
from ..safewrite import (OutputGuard, check_output_path, claim_output, refuse_overwriting_inputs,
                         remove_stale_temporaries, sigterm_as_interrupt)
from ..summary import ImportSummary

NEW_SPLIT_SEED = 20240601
STAR_NAME = "particles.star"
STACK_NAME = "particles.mrcs"
OUTPUTS = (STAR_NAME, STACK_NAME, "summary.json")


def configure_parser(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--star", metavar="FILE", help="RELION particle star file (3.0, 3.1, 4 or 5)")
    src.add_argument("--cs", metavar="FILE", help="cryoSPARC particle .cs file")
    p.add_argument("--stack-root", metavar="DIR", default=None,
                   help="folder the image paths are relative to, searched first (default: the input file's folder, "
                        "the working folder, the folders above the input file; see above)")
    p.add_argument("--apix", type=float, default=None, metavar="A",
                   help="pixel size (Å); fills a missing one, must agree within 1%% with the file's")
    p.add_argument("--voltage", type=float, default=None, metavar="KV",
                   help="acceleration voltage (kV) when the file has none (must agree with the file's otherwise)")
    p.add_argument("--cs-mm", type=float, default=None, metavar="MM",
                   help="spherical aberration (mm) when the file has none (must agree with the file's otherwise)")
    p.add_argument("--amp-contrast", type=float, default=None, metavar="Q",
                   help="amplitude contrast when the file has none (default 0.1, as RELION, with a warning)")
    p.add_argument("--metadata-only", action="store_true",
                   help="do not read images (the stacks need not be here): write the star with absolute paths to "
                        "the stacks found, names as given for the others")
    p.add_argument("--no-phase-flip", action="store_true",
                   help="check the images but do not phase flip them; the star points at the original stacks")
    p.add_argument("--new-split", action="store_true",
                   help="assign a random gold-standard half split (fixed seed) when the input has no usable one "
                        f"(none, incomplete, a half below {MIN_HALF_FRACTION:.0%}%, or an image in both halves)")
    p.add_argument("--chunk", type=int, default=defaults.CHUNK, help="images per chunk (memory use ~ chunk·box²·4 bytes)")
    p.add_argument("--out", metavar="DIR", required=True,
                   help="output folder (not the input's folder, nor one holding its stacks)")


def _log(msg: str) -> None:
    print(f"gmmcore import: {msg}", file=sys.stderr, flush=True)


def read_input(args, need_stacks: bool = True):
    """The ParticleTable of ``--star`` / ``--cs`` (pixel size and CTF constants filled and checked)."""
    from ..io.cryosparc import read_cs
    from ..io.star import read_star

    kw = dict(image_root=args.stack_root, apix=args.apix, voltage=getattr(args, "voltage", None),
              cs=getattr(args, "cs_mm", None), amp_contrast=getattr(args, "amp_contrast", None),
              need_stacks=need_stacks)
    if args.star is not None:
        return read_star(args.star, **kw)
    return read_cs(args.cs, **kw)


def _pass_through(table) -> pd.DataFrame:
    if isinstance(table.star_particles, pd.DataFrame):
        return table.star_particles.reset_index(drop=True).copy()
    return pd.DataFrame(index=pd.RangeIndex(len(table)))


def _check_args(args) -> None:
    if args.chunk < 1:
        raise InputError("must be at least 1", field="--chunk")
    for name, flag in (("apix", "--apix"), ("voltage", "--voltage")):
        v = getattr(args, name, None)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise InputError(f"must be a positive number (got {v})", field=flag)
    q = getattr(args, "amp_contrast", None)
    if q is not None and not (0 <= q < 1):
        raise InputError(f"must be in [0, 1) (got {q})", field="--amp-contrast")
    c = getattr(args, "cs_mm", None)
    if c is not None and not math.isfinite(c):
        raise InputError(f"must be a number (got {c})", field="--cs-mm")
    if args.stack_root is not None and not Path(args.stack_root).is_dir():
        raise InputError("folder not found", path=args.stack_root, field="--stack-root")
    check_output_path(args.out, "--out", folder=True)


def _check_space(out: Path, n: int, box: int) -> None:
    """Refuse before writing when the output file system cannot hold the phase-flipped stack."""
    need = 1024 + n * box * box * 4
    from ..safewrite import _existing_ancestor

    try:
        free = shutil.disk_usage(str(_existing_ancestor(out.resolve()))).free
    except OSError:
        return
    if free < need * 1.02 + 1e6:
        raise InputError(f"not enough free space for the phase-flipped stack: {need / 1e9:.2f} GB needed, "
                         f"{free / 1e9:.2f} GB free (or use --metadata-only / --no-phase-flip)", path=out,
                         field="--out")


def run(args) -> int:
    from ..io.stacks import (StackWriter, iter_images, locate_image_names, referenced_stacks, resolved_image_names,
                             stack_stamp, table_locator)
    from ..io.star import write_star
    from ..progress import progress

    _check_args(args)
    table = read_input(args, need_stacks=not args.metadata_only)
    n = len(table)
    if n == 0:
        raise InputError("no particles in the input", path=table.source)
    warnings = list(table.meta.get("warnings", []))
    split = assign_split(table, args.new_split, seed=NEW_SPLIT_SEED, keep_unusable=True)
    if "split_warning" in table.meta:
        warnings.append(f"{table.source}: {table.meta['split_warning']}; refine and reconstruct refuse such a split "
                        "(use --new-split to assign a new random one)")
    original_names = pd.Series(np.asarray(table.image_name, dtype=object)).astype(str).to_numpy(object)
    out = Path(args.out)

    flip = not (args.metadata_only or args.no_phase_flip or table.phase_flipped)
    if flip:
        sizes = np.unique(table.image_size)
        if sizes.size != 1:
            raise InputError(f"particles have different image sizes {sizes.tolist()}; import each size separately",
                             path=table.source, field="rlnImageSize")
    # every stack resolved (or, metadata-only, looked for) before anything is written
    if args.metadata_only:
        names, missing = locate_image_names(table)
    else:
        names, missing = resolved_image_names(table), []  # an error names the first missing stack
    if missing:
        warnings.append(f"{len(missing)} stacks not found (image names kept as given), e.g. {missing[0]!r}; looked in "
                        f"{table_locator(table).searched()}")
    inputs = [table.source] + referenced_stacks(table)
    refuse_overwriting_inputs([out / f for f in OUTPUTS], inputs, out_dir=out)
    if flip:
        _check_space(out, n, int(table.image_size[0]))
    claim_output(out, "import", "import", inputs)

    removed = remove_stale_temporaries(out)
    if removed:
        _log(f"removed {len(removed)} temporary file(s) left by an interrupted run in {out}")
    with sigterm_as_interrupt(), OutputGuard(out):
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
            table.image_name = names
            if table.phase_flipped and not (args.metadata_only or args.no_phase_flip):
                _log("the input is already phase flipped; images are used as they are")
        sp = _pass_through(table)
        if "rlnImageOriginalName" not in sp.columns:
            sp["rlnImageOriginalName"] = original_names
        table.star_particles = sp
        # the star last, with the stamp of the stack published just before it: a kill between the two
        # renames leaves a star that refuses the new stack instead of pairing with it
        write_star(table, out / STAR_NAME, stacks={STACK_NAME: stack_stamp(out / STACK_NAME)} if flip else None)

        if split == "new-random":
            _log(f"{table.meta['split_note']}")
        for w in warnings:
            _log(f"warning: {w}")
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
            warnings=warnings,
            split_note=table.meta.get("split_note"),
            stacks_missing=len(missing),
        )
        summary.save(out)
    _log(f"{n} particles ({summary.per_half['1']} / {summary.per_half['2']} per half) -> {out / STAR_NAME}")
    return 0
