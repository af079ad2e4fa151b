"""Build a Gaussian mixture model from a map at a resolution.

Seeds by amplitude-weighted K-means of the map's density (N estimated from the resolution unless
--ngauss), or one Gaussian per heavy atom of a model (--seed-model); then fits centres, amplitudes
and widths to the map's transform within the resolution.

    gmmcore build-gmm --map refined/final/half1.mrc --resolution 4 --out gmm/half1

Writes PREFIX.gmm.npz (the model), PREFIX.pdb (pseudo-atoms for ChimeraX: width in the B-factor
column) and PREFIX.json (fit report: map-vs-GMM FSC per shell).
"""
from __future__ import annotations

from pathlib import Path

from .. import defaults
from ..errors import InputError


def configure_parser(p) -> None:
    p.add_argument("--map", required=True, help="half map (MRC)")
    p.add_argument("--resolution", type=float, required=True, help="target resolution (Å)")
    p.add_argument("--ngauss", type=int, default=None, help="number of Gaussians (default: estimated)")
    p.add_argument("--seed-model", default=None,
                   help="PDB to seed one Gaussian per heavy atom (coordinates in the map's frame), or builtin:adk-closed")
    p.add_argument("--minres", type=float, default=defaults.MINRES_A,
                   help=f"lowest resolution fitted (Å, default {defaults.MINRES_A:g})")
    p.add_argument("--iterations", type=int, default=300, help="Adam steps (default 300)")
    p.add_argument("--threshold", type=float, default=None, help="density threshold for K-means (default: automatic)")
    p.add_argument("--seed", type=int, default=defaults.SEED, help=f"random seed (default {defaults.SEED})")
    p.add_argument("--backend", choices=defaults.BACKENDS, default=defaults.BACKEND,
                   help="array backend of the fit: tf (TensorFlow, default) or jax (runs on a GPU when JAX sees one)")
    p.add_argument("--out", required=True, help="output prefix: PREFIX.gmm.npz, PREFIX.pdb, PREFIX.json")


def run(args) -> int:
    from ..backend import get_backend
    from ..gmm.build import build_gmm
    from ..io.maps import read_map
    from ..safewrite import check_output_path, claim_output, refuse_overwriting_inputs, write_json

    if args.ngauss is not None and args.ngauss < 1:
        raise InputError("must be at least 1", field="--ngauss")
    if not (args.resolution > 0):
        raise InputError("must be positive", field="--resolution")
    outputs = [str(args.out) + ext for ext in (".gmm.npz", ".pdb", ".json")]
    for o in outputs:
        check_output_path(o, "--out", folder=False)
    seed_model = args.seed_model if args.seed_model and not str(args.seed_model).startswith("builtin:") else None
    refuse_overwriting_inputs(outputs, [args.map, seed_model])
    if not Path(args.map).is_file():
        raise InputError("file not found", path=args.map, field="--map")
    for o in outputs:
        claim_output(o, None, "build-gmm", [args.map, seed_model], folder=False)
    m, apix = read_map(args.map)
    gmm, report = build_gmm(m, apix, args.resolution, n_gaussians=args.ngauss, seed_model=args.seed_model,
                            seed=args.seed, minres_A=args.minres, iterations=args.iterations,
                            threshold=args.threshold, backend=get_backend(args.backend))
    gmm.meta["source_map"] = str(args.map)
    report["backend"] = args.backend
    prefix = str(args.out)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    gmm.save(prefix + ".gmm.npz")
    gmm.save_pdb(prefix + ".pdb")
    report["map"] = str(args.map)
    write_json(prefix + ".json", report)
    print(f"{len(gmm)} Gaussians, map-vs-GMM FSC {report['fsc_mean']:.3f} "
          f"({1 / report['freq'][0]:.1f}–{1 / report['freq'][-1]:.1f} Å) → {prefix}.gmm.npz")
    return 0
