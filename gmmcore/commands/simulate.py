"""Simulate particles from an atomic model, with known poses (and a perturbed copy of them).

Projections of the model's GMM (one Gaussian per heavy atom), CTF (not phase flipped, like raw
data), white noise at --snr; true poses and poses perturbed by exactly --perturb-angle degrees and
--perturb-shift pixels; a second model (--model-b) morphs particles between two conformations;
--domain makes a domain turn rigidly about its hinge by a per-particle angle (uniform within
±--domain-angle); --copies SYM puts several copies of the model in each particle (an assembly with
that point-group symmetry; each copy's domain moves on its own).

    gmmcore simulate --model builtin:adk-closed --n 2000 --box 64 --apix 1.2 --snr 1 --out sim
    gmmcore simulate --domain lid --domain-angle 10 --n 2000 --box 64 --apix 1.2 --snr 1 --out sim_lid
    gmmcore simulate --copies C3 --n 1000 --box 64 --apix 2.5 --snr 1 --out sim_c3

Writes particles.mrcs, particles_true.star, particles_perturbed.star, true_map.mrc, truth.npz and
simulation.json in --out (see gmmcore.simulate); with --domain also domain_mask.mrc (copy 0's
domain over its range of motion) and the per-particle domain angles and poses in truth.npz; with
--copies also unit_mask.mrc (copy 0).
"""
from __future__ import annotations

import argparse

from .. import defaults


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.add_argument("--model", default="builtin:adk-closed",
                   help="atomic model: a PDB file, builtin:adk-closed or builtin:adk-open")
    p.add_argument("--model-b", default=None,
                   help="second model with the same atoms (e.g. builtin:adk-open): particles are linear morphs "
                        "A + t(B−A), t uniform in [0, 1] (or --conformation)")
    p.add_argument("--conformation", type=float, default=None, help="fixed morph parameter t in [0, 1]")
    p.add_argument("--n", type=int, default=1000, help="number of particles")
    p.add_argument("--box", type=int, default=64, help="box size (pixels)")
    p.add_argument("--apix", type=float, default=1.5, help="pixel size (Å)")
    p.add_argument("--snr", type=float, default=0.05,
                   help="signal variance (inside the particle) / noise variance; 0 = no noise")
    p.add_argument("--defocus-min", type=float, default=10000.0, help="smallest mean defocus (Å)")
    p.add_argument("--defocus-max", type=float, default=25000.0, help="largest mean defocus (Å)")
    p.add_argument("--astigmatism", type=float, default=500.0, help="largest |dU − dV| (Å)")
    p.add_argument("--voltage", type=float, default=300.0, help="voltage (kV)")
    p.add_argument("--cs", type=float, default=2.7, help="spherical aberration (mm)")
    p.add_argument("--amp-contrast", type=float, default=0.1, help="amplitude contrast")
    p.add_argument("--b-factor", type=float, default=30.0, help="map blur (Å²) added to the atom widths")
    p.add_argument("--perturb-angle", type=float, default=3.0,
                   help="rotation error of the perturbed poses (degrees, exact, random axis)")
    p.add_argument("--perturb-shift", type=float, default=1.0,
                   help="origin error of the perturbed poses (pixels, exact, random direction)")
    p.add_argument("--max-origin", type=float, default=2.0, help="largest true origin (pixels)")
    p.add_argument("--optics-groups", type=int, default=1, help="number of optics groups")
    p.add_argument("--domain", default=None,
                   help="moving domain: lid (residues 122-159) or nmp (30-59) of adenylate kinase, residue "
                        "ranges such as 122-159[,170-180] (in every copy), or copy:K (the K-th copy of --copies, "
                        "hinged at its interface); it turns rigidly about its hinge")
    p.add_argument("--domain-angle", type=float, default=10.0,
                   help="the domain's angle per particle is uniform in ±this (degrees)")
    p.add_argument("--copies", default=None,
                   help="copies of the model per particle, placed by a point group (C2, C3, D2, ...)")
    p.add_argument("--copy-offset", type=float, default=None,
                   help="distance of each copy from the assembly centre, Å (default: copies touch, closest atoms 4 Å apart)")
    p.add_argument("--seed", type=int, default=defaults.SEED, help="random seed")
    p.add_argument("--backend", choices=defaults.BACKENDS, default=defaults.BACKEND, help="array backend that projects the model")
    p.add_argument("--out", required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..safewrite import OutputGuard, check_output_path, claim_output, refuse_overwriting_inputs
    from ..simulate import (JSON, PERTURBED_STAR, STACK_NAME, TRUE_MAP, TRUE_MAP_B, TRUE_STAR, TRUTH,
                            simulate_dataset)

    check_output_path(args.out, "--out", folder=True)
    models = [m for m in (args.model, args.model_b) if m and not str(m).startswith("builtin:")]
    refuse_overwriting_inputs([Path(args.out) / f for f in (STACK_NAME, TRUE_STAR, PERTURBED_STAR, TRUE_MAP,
                                                            TRUE_MAP_B, TRUTH, JSON)], models)
    claim_output(args.out, "simulate", "simulate", models)
    with OutputGuard(args.out):
        res = simulate_dataset(
            args.out, model=args.model, n_particles=args.n, box=args.box, apix=args.apix,
            snr=None if args.snr == 0 else args.snr, defocus_range=(args.defocus_min, args.defocus_max),
            astigmatism=args.astigmatism, voltage=args.voltage, cs=args.cs, amp_contrast=args.amp_contrast,
            b_factor=args.b_factor, perturb_angle_deg=args.perturb_angle, perturb_shift_px=args.perturb_shift,
            max_origin_px=args.max_origin, seed=args.seed, model_b=args.model_b, conformation=args.conformation,
            optics_groups=args.optics_groups, copies=args.copies, copy_offset_A=args.copy_offset,
            domain=args.domain, domain_angle_deg=args.domain_angle, backend=args.backend)
    print(f"simulated {res['n_particles']} particles ({res['box']} px, {res['apix']} Å/px, SNR {res['snr']}) "
          f"in {args.out}: {STACK_NAME}, {TRUE_STAR}, {PERTURBED_STAR}, {TRUE_MAP}, {TRUTH}, {JSON}")
    return 0
