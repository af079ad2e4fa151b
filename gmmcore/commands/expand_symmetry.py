"""Expand particles by a point group: one row per particle and symmetry operator (rotation A·S_k).

RELION's convention (relion_particle_symmetry_expand): each particle with rotation A becomes K rows
with rotations A·S_k (S_k the group's operators, identity first); image, origin, CTF and half set
are kept (image names written with absolute stack paths), and the columns rlnGmmSourceParticle /
rlnGmmSymmetryOperator trace each row back.
Refine the expanded particles in C1 with a mask on one asymmetric unit (refine-focused or
refine-patches), then --reimpose the symmetry on the result.

    gmmcore expand-symmetry --particles refined/final/particles.star --sym C3 --out expanded

Writes DIR/particles.star and DIR/summary.json.
"""
from __future__ import annotations

import argparse

from ..errors import InputError


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--particles", required=True, metavar="STAR", help="particles with poses (RELION star)")
    p.add_argument("--sym", required=True, help="point group: Cn, Dn, T, O, I (RELION orientation)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..expansion import SOURCE_COLUMN, expand_symmetry
    from ..io.stacks import referenced_stacks, resolved_image_names
    from ..io.star import read_star, write_star
    from ..safewrite import OutputGuard, check_output_path, claim_output
    from ..summary import ExpansionSummary
    from ..symmetry import symmetry_name, symmetry_order

    if not Path(args.particles).is_file():
        raise InputError("file not found", path=args.particles, field="--particles")
    K = symmetry_order(args.sym)
    check_output_path(args.out, "--out", folder=True)
    table = read_star(args.particles)
    df = table.star_particles
    if df is not None and SOURCE_COLUMN in getattr(df, "columns", ()):
        raise InputError(f"these particles are already symmetry-expanded (column {SOURCE_COLUMN}): expand the "
                         "original particles once", path=args.particles, field="--particles")
    out = Path(args.out)
    claim_output(out, "expand-symmetry", "expand-symmetry", [args.particles] + referenced_stacks(table))
    table.image_name = resolved_image_names(table)  # absolute: the expanded star lives elsewhere
    with OutputGuard(out):
        exp = expand_symmetry(table, args.sym)
        write_star(exp, out / "particles.star")
        per_half = {str(h): int((exp.half == h).sum()) for h in (1, 2)}
        ExpansionSummary(sym=symmetry_name(args.sym), operators=K, n_input=len(table), n_particles=len(exp),
                         per_half=per_half, particles="particles.star", source=str(Path(args.particles).resolve()),
                         convention="rotation A*S_k (RELION relion_particle_symmetry_expand)").save(out)
    print(f"{len(table)} particles x {K} operators of {symmetry_name(args.sym)} = {len(exp)} rows in "
          f"{out}/particles.star")
    return 0
