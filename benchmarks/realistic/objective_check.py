"""Can a focused objective see a domain's true pose?  A check on a generated set with known poses.

For particles of half 1 at the poses of a run (by default global refinement: the consensus pose),
the FRC objective the aligner maximises — data_scale·S, S the SSNR-weighted FRC against a GMM
(:mod:`gmmcore.gmm.align`), no prior — is computed at the run's pose and at the particle's true
*domain* pose (truth.npz: ``domain_pose_rotations`` / ``domain_pose_origins_A``).  A local search
can only move a particle's pose towards the domain's if the objective is higher there, so the
fraction of particles with J(true domain pose) > J(run pose) is an upper bound on what focused
refinement from that start can do with that template, whatever its search.

Templates (``--template``, each half 1's GMM): the run's own (``run``), another run's
(``RUN_DIR``: its final/gmm_half1.gmm.npz), or a GMM fitted here to a map (``MAP.mrc`` at the band
``--fit-res``).  Focus variants: the whole GMM; the default focus (σ'² = σ²/d outside the domain
mask, L 0.25); the paper's σ' = σ/d; the domain's Gaussians alone (amplitudes outside set to 0).

    python -m benchmarks.realistic.objective_check --data /work/sci_asm/assembly \
        --run /work/sci_asm/runs/assembly/all/global --template run C2P_RUN TRUE_DOMAIN_HALF1.mrc \
        --out benchmarks/results/objective_check_assembly.json
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.realistic.truth import truth_rows
from gmmcore.backend import get_backend
from gmmcore.gmm.align import particle_transforms
from gmmcore.gmm.build import build_gmm
from gmmcore.gmm.focus import widen_outside
from gmmcore.gmm.model import GMM
from gmmcore.grids import FourierGrid, normalised_ring_weights, ssnr_data_scale, ssnr_ring_weights
from gmmcore.io.maps import read_map
from gmmcore.io.stacks import iter_images
from gmmcore.io.star import read_star
from gmmcore.masks import values_at


def focus_variants(gmm: GMM, domain_mask: np.ndarray, apix: float) -> dict:
    """The GMMs compared: whole, default focus (variance), the paper's (sigma), the domain alone."""
    inside = np.clip(values_at(domain_mask, gmm.centers, apix), 0.0, 1.0)
    return {"whole": gmm,
            "focus variance L0.25 (default)": widen_outside(domain_mask, apix, 0.25, "variance")(1, gmm),
            "focus sigma L0.25 (paper)": widen_outside(domain_mask, apix, 0.25, "sigma")(1, gmm),
            "domain Gaussians only": replace(gmm, amplitudes=gmm.amplitudes * inside)}


def template(spec: str, run: Path, fit_res: float, apix: float) -> GMM:
    if spec == "run":
        return GMM.load(run / "final" / "gmm_half1.gmm.npz")
    p = Path(spec)
    if p.is_dir():
        return GMM.load(p / "final" / "gmm_half1.gmm.npz")
    m, _ = read_map(p)
    return build_gmm(np.asarray(m, np.float32), apix, fit_res, seed=1)[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="generated set (truth.npz, domain_mask.mrc)")
    ap.add_argument("--run", required=True, type=Path, help="run whose final poses are the start")
    ap.add_argument("--template", nargs="+", default=["run"])
    ap.add_argument("--bands", nargs="+", type=float, default=[3.7, 6.0, 8.0], help="alignment bands, Å")
    ap.add_argument("--fit-res", type=float, default=3.7, help="resolution of a GMM fitted to a --template map, Å")
    ap.add_argument("--n", type=int, default=256, help="particles of half 1")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)

    t_start = time.time()
    tab = read_star(a.run / "final" / "particles.star")
    truth = np.load(a.data / "truth.npz")
    idx = truth_rows(tab)
    rows = np.where(tab.half == 1)[0][:a.n]
    box, apix = int(tab.image_size[0]), float(tab.apix[0])
    mask = read_map(a.data / "domain_mask.mrc")[0]
    sub = tab.subset(rows)
    Rd, od = truth["domain_pose_rotations"][idx[rows]], truth["domain_pose_origins_A"][idx[rows]]
    imgs = np.empty((len(rows), box, box), np.float32)
    for pos, chunk in iter_images(sub, None, chunk=len(rows)):
        imgs[pos] = chunk
    pos = np.arange(len(rows))
    be = get_backend("tf")
    out = {"data": str(a.data), "run": str(a.run), "n_particles": int(len(rows)), "rows": []}
    for spec in a.template:
        gmm = template(spec, a.run, a.fit_res, apix)
        for band in a.bands:
            grid = FourierGrid(box, apix, band, 25.0)
            F = particle_transforms(imgs, sub, pos, grid)
            for name, g in focus_variants(gmm, mask, apix).items():
                rings = be.frc_rings(g, grid, F, sub.rotation, sub.origin)
                w = normalised_ring_weights(ssnr_ring_weights(rings, grid), grid.nrings)
                scale = ssnr_data_scale(rings, grid)
                gain = scale * (be.frc_rings(g, grid, F, Rd, od) @ w - rings @ w)
                row = {"template": spec, "band_A": band, "variant": name, "n_gaussians": len(g),
                       "fraction_true_domain_higher": round(float(np.mean(gain > 0)), 3),
                       "mean_gain": round(float(gain.mean()), 2), "median_gain": round(float(np.median(gain)), 2)}
                out["rows"].append(row)
                print(json.dumps(row), flush=True)
    out["seconds"] = round(time.time() - t_start, 1)
    if a.out:
        a.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
