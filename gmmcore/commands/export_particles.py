"""Write (refined) particles as a RELION star or a cryoSPARC .cs.

``--format relion``: a RELION 3.1+ star.  With ``--reference ORIGINAL.star`` the original file's rows
(image names, optics, every column) are written with the new poses, origins and half sets — the
way back from a phase-flipped import to the original particles.
``--format cryosparc``: a .cs; with ``--reference ORIGINAL.cs`` every field of the original records
survives and only alignments3D/pose, shift and split are updated.

Rows are matched to the reference by image index + path (rlnImageOriginalName, which ``gmmcore
import`` records, or rlnImageName); when names do not match and the counts agree, by order; else
the export stops with an error.

    gmmcore export --particles refined/final/particles.star --format relion --reference run_data.star --out refined.star
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--particles", metavar="STAR", required=True, help="particle star file (e.g. refine's final star)")
    p.add_argument("--format", choices=["relion", "cryosparc"], required=True, help="output format")
    p.add_argument("--reference", metavar="ORIGINAL", default=None,
                   help="the original star/.cs the particles were imported from (keeps its fields and image names)")
    p.add_argument("--original-images", action="store_true",
                   help="without --reference: point rlnImageName at the images the particles were imported from "
                        "(rlnImageOriginalName, which `gmmcore import` records) instead of its phase-flipped copy")
    p.add_argument("--out", metavar="FILE", required=True, help="output file (.star or .cs)")


def _star_reference_rows(table, ref, ref_path) -> np.ndarray:
    from ..io.stacks import reference_rows
    from ..particles import image_keys

    return reference_rows(table, image_keys(ref.image_name, ref_path), ref_path, "rlnImageName")


def to_original_images(table):
    """The table pointing at the images the particles were imported from (rlnImageOriginalName):
    a row whose name changes was a phase-flipped copy of a raw original, so the result is marked
    not phase-flipped; rows of an import that did not copy images keep their names."""
    df = table.star_particles
    if df is None or "rlnImageOriginalName" not in getattr(df, "columns", ()):
        return table, False
    original = df["rlnImageOriginalName"].astype(str).to_numpy(object)
    changed = original != np.asarray(table.image_name).astype(str)
    if not changed.any():
        return table, False
    if not changed.all():
        raise InputError("only some rows have a phase-flipped copy of their image; export them with --reference",
                         path=table.source or None, field="rlnImageOriginalName")
    from dataclasses import replace

    return replace(table, image_name=original, phase_flipped=False), True


def export(particles, fmt: str, out, reference=None, original_images: bool = False) -> Path:
    """Library form of the verb; returns the written path."""
    from ..io.cryosparc import write_cs
    from ..io.stacks import referenced_stacks
    from ..io.star import read_star, write_star
    from ..safewrite import check_output_path, claim_output, refuse_overwriting_inputs

    check_output_path(out, "--out", folder=False)
    table = read_star(particles, need_stacks=False)
    out = Path(out)
    inputs = [particles, reference] + referenced_stacks(table)
    refuse_overwriting_inputs([out], inputs)
    if reference is not None and not Path(reference).is_file():
        raise InputError("file not found", path=reference, field="--reference")
    claim_output(out, None, "export", inputs, folder=False)
    if fmt == "cryosparc":
        if reference is not None and Path(reference).suffix == ".star":
            raise InputError("--reference for --format cryosparc must be the original .cs", path=reference)
        return write_cs(table, out, reference=reference)
    if fmt != "relion":
        raise InputError(f"unknown format {fmt!r}", field="--format")
    if reference is None:
        if original_images:
            table, swapped = to_original_images(table)
            if swapped:
                print("gmmcore export: rlnImageName points at the original (not phase-flipped) images",
                      file=sys.stderr)
        return write_star(table, out)
    # with a reference, only the particles' original names and poses are needed: drop the rest first
    from dataclasses import replace

    from ..io.stacks import original_image_names
    table = replace(table, image_name=original_image_names(table), star_particles=None, star_optics=None)
    if Path(reference).suffix == ".cs":
        from ..io.cryosparc import read_cs
        ref = read_cs(reference, need_stacks=False)
        rows = _star_reference_rows(table, ref, reference)
        ref = ref.subset(rows)
        ref.cs_records = None
        # cryoSPARC paths are relative to its project folder: make them absolute when the stacks exist
        from ..io.stacks import resolved_image_names
        try:
            ref.image_name = resolved_image_names(ref)
        except InputError:
            pass
    else:
        ref = read_star(reference, need_stacks=False)
        rows = _star_reference_rows(table, ref, reference)
        ref = ref.subset(rows)
    # origins are in Å in both; keep them in Å (same particles, same pixel size)
    result = ref.with_poses(table.rotation, table.origin)
    if (np.asarray(table.half) > 0).any():
        result.half = np.asarray(table.half).copy()
    return write_star(result, out)


def run(args) -> int:
    if args.original_images and args.reference:
        raise InputError("--reference already points at the original images; leave out --original-images",
                         field="--original-images")
    path = export(args.particles, args.format, args.out, reference=args.reference,
                  original_images=args.original_images)
    print(f"gmmcore export: wrote {path}", file=sys.stderr)
    return 0
