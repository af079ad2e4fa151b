"""Cramér–Rao bounds of per-particle poses on a realistic set (gmmcore.gmm.precision): what any
local refinement can achieve particle by particle, for the whole particle, the core and the
moving domain, at several bands.  A GMM of the set's true map (state t_ref), the true poses, the
noise measured in the images.  JSON → benchmarks/results/pose_bound.json (one key per set).

    python -m benchmarks.realistic.pose_bound --data benchmarks/realistic_cache --set rigid
    python -m benchmarks.realistic.pose_bound --data benchmarks/realistic_cache --set twobody --bands 6 4.5
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from gmmcore.backend import get_backend
from gmmcore.gmm.build import build_gmm
from gmmcore.gmm.precision import pose_precision
from gmmcore.grids import FourierGrid
from gmmcore.io.maps import read_map
from gmmcore.io.star import read_star
from gmmcore.particles import Poses

RESULTS = Path(__file__).resolve().parents[1] / "results" / "pose_bound.json"
REGIONS = {"particle": None, "core": "core_mask.mrc", "domain": "domain_mask.mrc",
           "domain2": "domain2_mask.mrc"}  # domain2: a two-body set's domain B (where the set has it)


def bounds(set_dir: Path, bands=(4.0, 3.2), n_sample: int = 200, minres: float = 25.0) -> dict:
    table = read_star(set_dir / "particles.star")
    truth = np.load(set_dir / "truth.npz")
    m, apix = read_map(set_dir / "truth_map.mrc")
    be = get_backend("tf")
    gmm, rep = build_gmm(m, apix, 2.0 * apix, seed=0, backend=be)
    poses = Poses(truth["rotations"], truth["origins_A"])
    rows = np.arange(len(table))
    out = {"gmm": {"n_gaussians": len(gmm), "map_vs_gmm_fsc_mean": round(float(rep.get("fsc_mean", np.nan)), 4)},
           "generation": json.loads((set_dir / "generation.json").read_text())["params"]}
    for band in bands:
        grid = FourierGrid(m.shape[0], apix, band, minres)
        for name, f in REGIONS.items():
            if f is not None and not (set_dir / f).is_file():
                continue
            mask = None if f is None else read_map(set_dir / f)[0]
            p = pose_precision(gmm, table, rows, poses, grid, be, region_mask=mask, n_sample=n_sample)
            out[f"{name}@{band:g}A"] = p.to_json()
            print(f"{set_dir.name} {name:8s} band {band:g} Å: ±{p.angle_deg:.2f}° / {p.shift_px:.2f} px "
                  f"({p.region_gaussians} Gaussians, {100 * p.region_mass:.0f}% of the mass)", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="benchmarks/realistic_cache", help="generated sets")
    ap.add_argument("--set", default="rigid")
    ap.add_argument("--key", default=None, help="result key (default: the set's name)")
    ap.add_argument("--bands", type=float, nargs="+", default=[4.0, 3.2], help="bands (Å; the assembly's: 6 4.5)")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    res = bounds(Path(a.data) / a.set, bands=tuple(a.bands))
    path = Path(a.out)
    old = json.loads(path.read_text()) if path.is_file() else {}
    old[a.key or a.set] = res
    path.write_text(json.dumps(old, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
