"""``gmmcore heterogeneity``: the DNN heterogeneity analysis of a finished refinement run, per half set.

For each half set h, on its own (:meth:`HalfPair.build`; nothing of the other half is read):

1. the neutral GMM: the run's final GMM of half h (a run without GMMs — ``--iter 0`` — gets one
   built from its final half map h at the analysis resolution);
2. motion weights: 1, or the ``--mask`` sampled at the neutral centres (only Gaussians inside move);
3. the decoder layout (anchors = K-means of the moving Gaussians) and the encoder/decoder pair,
   trained on half h's particles at their run poses (:mod:`gmmcore.heter.training`);
4. latents of half h's particles; PCA (PC1 oriented: +PC1 = larger radius of gyration of the moving
   Gaussians); ``--bins`` equal-count bins along PC1: the GMM decoded at each bin's mean latent
   and the map reconstructed from the bin's particles (standard reconstruction, run poses).

Run directory (``--out DIR``; re-running the same command continues a killed run)::

    params.json, run.log
    half{h}/checkpoint.npz          training checkpoint (every epoch)
    final/network_half{h}.npz       the trained pair (format: gmmcore.heter.pair) — marks the half trained
    final/latents.csv               rlnImageName, half, z1..zL, pc1, pc2 (one row per particle)
    final/latents.npz               latent (n, L) float32, pcs (n, 2), half (n,), frc_neutral, frc_decoded
    final/pca_half{h}.json          the half's PCA (mean, components, explained variance ratio)
    final/bins/half{h}_bin{k}.gmm.npz / .pdb / .mrc   decoded GMM and reconstructed map of bin k
    summary.json                    :class:`gmmcore.summary.HeterogeneitySummary`
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import List, Optional

import numpy as np

from .. import __version__, defaults
from ..backend import get_backend
from ..backend import tf as _tf_backend  # noqa: F401 - TensorFlow imported quietly, before the networks import it
from ..errors import InputError
from ..fourier import lowpass
from ..fsc import fsc
from ..gmm.build import build_gmm, robust_background
from ..gmm.model import GMM
from ..gmm.render import render_map
from ..grids import FourierGrid
from ..io.maps import read_map_on_grid, write_map
from ..masks import auto_fsc_mask, check_mask, values_at
from ..particles import HalfPair, check_geometry, check_split
from ..reconstruct import reconstruct_halves
from ..refine.rundir import RunDir
from ..safewrite import atomic_path, write_json
from ..summary import HeterogeneitySummary, LatentHalfReport
from .decoder import make_layout
from .latent import LatentPCA, orient_pc1, pc1_bins, write_latents_csv
from .pair import HalfNetwork
from .training import CheckpointStore, HalfTrainer, TrainSettings, encode

log = logging.getLogger("gmmcore.refine.heter")

IDENTITY = ("source", "latent", "anchors", "mask", "epochs", "full_epochs", "res", "minres", "batch", "lr",
            "lr_full", "latent_penalty", "residual_penalty", "latent_noise", "ring_weight", "seed",
            "amplitude")


@dataclass
class HeterogeneityParams:
    """``gmmcore heterogeneity`` parameters (Å, epochs, particles)."""

    source: str  # a finished refinement run directory
    out: str
    latent: int = 4
    anchors: int = 32
    mask: Optional[str] = None
    epochs: int = 20
    full_epochs: int = 10
    res: Optional[float] = None  # Å; default: training_band (7 Å, or the run's final resolution if coarser)
    minres: float = 40.0
    batch: int = 16
    chunk: int = 20000
    lr: float = 1e-3
    lr_full: float = 3e-4
    latent_penalty: float = 0.0
    residual_penalty: float = 1e-3
    latent_noise: float = 0.0
    amplitude: str = defaults.DECODER_AMPLITUDE  # "on": the decoder's amplitude head (gmmcore.heter.decoder)
    ring_weight: str = "ssnr"
    bins: int = 5
    seed: int = 0
    gpu: Optional[List[int]] = None
    cpu: bool = False
    version: str = field(default=__version__)

    def train_settings(self) -> TrainSettings:
        return TrainSettings(latent_dim=self.latent, anchors=self.anchors, epochs=self.epochs,
                             full_epochs=self.full_epochs, batch=self.batch, chunk=self.chunk, lr=self.lr,
                             lr_full=self.lr_full, latent_penalty=self.latent_penalty,
                             residual_penalty=self.residual_penalty, latent_noise=self.latent_noise,
                             amplitude=self.amplitude == "on",
                             ring_weight=self.ring_weight, seed=self.seed)


def map_gmm_fsc(map_: np.ndarray, gmm: GMM, apix: float, resolution_A: float, minres_A: float) -> float:
    """Mean FSC between a map and the GMM rendered on its grid, over shells minres → resolution."""
    freq, f = fsc(map_, render_map(gmm, map_.shape[0], apix), apix)
    band = (freq > 0) & (freq <= 1.0 / resolution_A) & (freq >= (1.0 / minres_A if minres_A > 0 else 0))
    return float(np.mean(f[band])) if band.any() else float("nan")


def _neutral_gmm(h: int, state, apix: float, res: float, minres: float, seed: int, backend, folder: Path) -> GMM:
    """The run's final GMM of half h; for a run without GMMs one built from its final half map h
    (saved as ``half{h}/neutral.gmm.npz``, reused on resume)."""
    if state.gmms is not None:
        return state.gmms[h]
    saved = folder / "neutral.gmm.npz"
    if saved.exists():
        return GMM.load(saved)
    log.info("half %d: the run has no GMMs; building the neutral GMM from its final half map at %.2f Å", h, res)
    gmm, _ = build_gmm(lowpass(state.half_maps[h], apix, res), apix, res, seed=seed + h, minres_A=min(minres, 25.0),
                       backend=backend)
    gmm.meta.update({"half": h})
    gmm.save(saved)
    return gmm


def _cover_region(h: int, neutral: GMM, coverage: dict, state, mask, apix: float, band_map: np.ndarray, p,
                  backend, folder: Path, net_path: Path):
    """(neutral GMM, its coverage): where the run's GMM leaves the masked region out (coverage
    ``low``), a GMM re-seeded on it (:func:`region_seeded_gmm`, at the run's final resolution; saved as ``half{h}/neutral_region.gmm.npz`` and reused on resume).  A half whose training
    began on the run's GMM (a run of an older version) keeps it.  ``band_map``: half h's map low-passed to
    the training band (what ``coverage`` was measured on)."""
    if not coverage["low"]:
        return neutral, coverage
    saved = folder / REGION_GMM
    if saved.exists():
        gmm = GMM.load(saved)
    elif net_path.exists() or CheckpointStore(folder).load() is not None:
        log.info("NOTE: half %d was trained on the run's GMM by an older version (no re-seeding); it keeps it", h)
        return neutral, coverage
    else:
        res_gmm = max(float(state.resolution_A), 2.1 * apix)  # the run's resolution
        log.info("half %d: re-seeding the GMM with the masked region seen down to %.2f of the threshold (%.2f Å)",
                 h, 1.0 / REGION_BOOST, res_gmm)
        gmm = region_seeded_gmm(state.half_maps[h], mask, apix, res_gmm, p.seed + h, p.minres, backend)
        gmm.meta.update({"half": h, "region_seeded": True})
        folder.mkdir(parents=True, exist_ok=True)
        gmm.save(saved)
    after = mask_coverage(band_map, gmm, mask, apix)
    after.update(before=coverage, region_seeded=True)
    log.info("half %d: re-seeded GMM of %d Gaussians (was %d): %.0f %% of its mass inside --mask", h, len(gmm),
             len(neutral), 100 * after["gmm_share"])
    return gmm, after


MIN_BIN_PARTICLES = 10  # particles per half in one bin along PC1: fewer make a map of noise
COVERAGE_WARN = 0.5  # warn when the GMM's share of mass in --mask is below this × the map's share of density
# re-seed the neutral GMM when its share in --mask is below this × the map's.  Small realistic occupancy
# sets (tests/test_realistic_occupancy.py, seeds 1–5): halves whose GMM held 0.35–0.78 of the map's share
# had PC1 AUCs for presence of 0.56–0.98 (least per seed 0.56–0.74); re-seeded, 0.92–0.98.  Halves at
# 0.92–0.98 gave 0.93 / 0.94 (re-seeded anyway: 0.94 / 0.96).  The assembly's and flexible set's GMMs
# hold 0.94 and 1.0 of it: not re-seeded, their measured runs unchanged.
RESEED_BELOW = 0.85
REGION_BOOST = 1.5  # a re-seeded neutral GMM: density inside --mask × this for its seeds (region from 2/3 of the threshold)
REGION_GMM = "neutral_region.gmm.npz"  # the re-seeded neutral GMM of a half, in its folder (reused on resume)


def region_seeded_gmm(half_map: np.ndarray, mask: np.ndarray, apix: float, resolution_A: float, seed: int,
                      minres_A: float, backend=None) -> GMM:
    """A GMM of ``half_map`` at ``resolution_A`` whose K-means seeds (and N estimate) see the density
    inside ``mask`` × :data:`REGION_BOOST` — the region is seeded down to 2/3 of the map's threshold —
    and whose fit is to the map itself (Å, as :func:`gmmcore.gmm.build.build_gmm`).  For a region the
    run's GMM leaves out (:func:`mask_coverage`): on the realistic occupancy set (a domain present in
    half of the particles) it brought the GMM's share in the mask from 0.3 % to 19 % (the map's: 17 %)
    and the analysis from chance to an AUC of 0.92–0.96 for presence (benchmarks/realistic/README.md)."""
    m = lowpass(half_map, apix, resolution_A)
    seen = m * np.where(mask > 0.5, REGION_BOOST, 1.0).astype(m.dtype)
    gmm, _ = build_gmm(m, apix, resolution_A, seed=seed, minres_A=min(minres_A, 25.0), seed_map=seen,
                       backend=backend)
    return gmm


def mask_coverage(half_map: np.ndarray, gmm: GMM, mask: np.ndarray, apix: float) -> dict:
    """How much of a region the GMM holds: ``map_share``, the share of the half map's density inside
    ``mask`` (voxels above the median + 1 robust noise σ, weighted by their height above it and by the
    soft mask), and ``gmm_share``, the share of the GMM's mass inside it (amplitudes × the mask at the
    centres).  A GMM keeps density above its threshold (:func:`gmmcore.gmm.build.auto_threshold`), so a
    part present in only some particles, or blurred by its motion, can be in the map and not in the
    GMM: ``low`` is True when ``gmm_share`` < :data:`RESEED_BELOW` × ``map_share`` (re-seed), ``short``
    when it is < :data:`COVERAGE_WARN` × ``map_share`` (warn).  The analysis only
    moves (and scales) the GMM's Gaussians: what the GMM leaves out, it cannot see."""
    v = np.asarray(half_map, np.float64)
    b, noise = robust_background(v)
    d = np.clip(v - b - noise, 0.0, None)
    map_share = float((d * mask).sum() / d.sum()) if d.sum() > 0 else 0.0
    a = np.asarray(gmm.amplitudes, np.float64)
    w = np.clip(values_at(mask, gmm.centers, apix), 0.0, 1.0)
    gmm_share = float((a * w).sum() / a.sum()) if a.sum() > 0 else 0.0
    return {"map_share": round(map_share, 4), "gmm_share": round(gmm_share, 4),
            "low": bool(gmm_share < RESEED_BELOW * map_share), "short": bool(gmm_share < COVERAGE_WARN * map_share)}


def _check_before_writing(p: HeterogeneityParams, state, rows, mask, apix: float) -> None:
    """What would otherwise be refused mid-run: a mask that misses every Gaussian (or the density
    of a run without GMMs), more bins than the particles fill."""
    n_min = min(int(r.size) for _, r in rows.items())
    if n_min < p.bins * MIN_BIN_PARTICLES:
        raise InputError(f"{p.bins} bins of a half set of {n_min} particles leave fewer than {MIN_BIN_PARTICLES} "
                         f"particles per bin: use at most {max(1, n_min // MIN_BIN_PARTICLES)}", field="--bins")
    if mask is None:
        return
    if state.gmms is not None:
        for h, g in state.gmms.items():
            if not (values_at(mask, g.centers, apix) > 0).any():
                raise InputError(f"no Gaussian of half {h}'s GMM lies inside the mask (it misses the particle)",
                                 path=p.mask, field="--mask")
    elif not float((mask * auto_fsc_mask(state.half_maps[1], state.half_maps[2], apix)).sum()) > 0:
        raise InputError("the mask does not overlap the particle's density", path=p.mask, field="--mask")


def training_band(res: Optional[float], run_resolution_A: float, apix: float) -> float:
    """The finest resolution (Å) of the networks' FRC: ``res`` when given, else the coarser of
    :data:`gmmcore.defaults.HETEROGENEITY_MAXRES_A` (7 Å) and the refinement's final resolution —
    never finer than 2.1 pixels."""
    if res:
        return float(res)
    return max(defaults.HETEROGENEITY_MAXRES_A, float(run_resolution_A), 2.1 * float(apix))


def made_with_final_resolution(out) -> bool:
    """True when ``out`` holds a heterogeneity run of an older version that trained at the run's final
    resolution by default (its params.json records ``res`` null): continuing it keeps that band."""
    f = Path(out) / "params.json"
    try:
        old = json.loads(f.read_text()) if f.is_file() else None
    except (OSError, ValueError):
        return False
    return isinstance(old, dict) and "latent" in old and "res" in old and old["res"] is None


def run_heterogeneity(p: HeterogeneityParams) -> HeterogeneitySummary:
    """Run (or continue) a heterogeneity analysis; returns its summary (also DIR/summary.json)."""
    t_start = time.time()
    src = RunDir(p.source)
    if not (src.path / "summary.json").exists():
        raise InputError("not a gmmcore refinement run (no summary.json)", path=src.path, field="--from")
    table, state = src.final_state()
    box, apix = check_geometry(table)
    rows = check_split(table)
    mask = check_mask(read_map_on_grid(p.mask, box, apix), path=p.mask) if p.mask else None
    older = p.res is None and made_with_final_resolution(p.out)
    res = max(float(state.resolution_A), 2.1 * apix) if older else training_band(p.res, float(state.resolution_A), apix)
    if res < 2 * apix:
        raise InputError(f"{res:g} Å is beyond Nyquist ({2 * apix:g} Å)", field="--res")
    if not older:  # the band trained at is part of a run's identity, not "the default"
        p = replace(p, res=res)
    _check_before_writing(p, state, rows, mask, apix)
    grid = FourierGrid(box, apix, res, p.minres)
    settings = p.train_settings()

    backend = get_backend()
    run = RunDir.create_or_continue(p.out, asdict(p), IDENTITY)
    device = backend.describe_devices(p.gpu, cpu_only=p.cpu)
    fin = run.path / "final"
    fin.mkdir(exist_ok=True)
    if older:
        log.info("NOTE: this run was made when the default band was the run's final resolution; it keeps it")
    log.info("gmmcore %s heterogeneity: %d particles (half 1: %d, half 2: %d), box %d, %.3f Å/px, band %.1f-%.2f Å, "
             "latent %d, anchors %d, device %s", __version__, len(table), rows[1].size, rows[2].size, box, apix,
             p.minres, res, p.latent, p.anchors, device)

    def one_half(h: int):
        folder = run.path / f"half{h}"
        neutral = _neutral_gmm(h, state, apix, res, p.minres, p.seed, backend, folder)
        half_map = lowpass(state.half_maps[h], apix, res)
        coverage = None if mask is None else mask_coverage(half_map, neutral, mask, apix)
        if coverage is not None:
            log.info("half %d: inside --mask, %.0f %% of the half map's density and %.0f %% of the GMM's mass", h,
                     100 * coverage["map_share"], 100 * coverage["gmm_share"])
            neutral, coverage = _cover_region(h, neutral, coverage, state, mask, apix, half_map, p, backend, folder,
                                              fin / f"network_half{h}.npz")
            if coverage["short"]:
                log.warning("WARNING: half %d: the GMM holds %.0f %% of its mass inside --mask where the half map has "
                            "%.0f %% of its density: density there is weaker than the GMM keeps (a part present in "
                            "only some particles, or blurred by its motion?), and this analysis cannot see what the "
                            "GMM leaves out", h, 100 * coverage["gmm_share"], 100 * coverage["map_share"])
        move = None if mask is None else np.clip(values_at(mask, neutral.centers, apix), 0.0, 1.0)
        if move is not None and not (move > 0).any():
            raise InputError(f"no Gaussian of half {h}'s GMM lies inside the mask", path=p.mask, field="--mask")
        net_path = fin / f"network_half{h}.npz"
        if net_path.exists():
            net = HalfNetwork.load(net_path)
            history = CheckpointStore(run.path / f"half{h}").load()
            history = history[0]["history"] if history else []
            log.info("half %d: trained network found", h)
        else:
            layout = make_layout(neutral, move, p.anchors, seed=p.seed + h)
            log.info("half %d: %d Gaussians, %d moving, %d anchors", h, len(neutral), len(layout.moving),
                     len(layout.anchors))
            trainer = HalfTrainer(table, rows[h], layout, grid, settings, h, CheckpointStore(run.path / f"half{h}"),
                                  backend)
            history = trainer.train()
            net = trainer.network()
            net.save(net_path)
        enc = encode(net, table, rows[h], chunk=p.chunk)
        pca = LatentPCA.fit(enc["latent"])
        pcs = pca.transform(enc["latent"])
        spread = float(np.std(pcs[:, 0])) or 1.0
        flipped = orient_pc1(pca, lambda z: net.decoder.gmm(z).centers, net.decoder.layout.moving,
                             net.decoder.layout.amplitudes, spread)
        pcs = pca.transform(enc["latent"])
        write_json(fin / f"pca_half{h}.json", pca.to_json())
        zero = net.decoder.gmm(np.zeros(p.latent))
        report = LatentHalfReport(
            n_particles=int(rows[h].size), network=str(net_path.relative_to(run.path)), history=history,
            explained_variance_ratio=[float(x) for x in pca.explained_variance_ratio],
            frc_neutral=float(enc["frc_neutral"].mean()), frc_decoded=float(enc["frc_decoded"].mean()),
            gmm_fsc_neutral=map_gmm_fsc(half_map, net.decoder.layout.neutral, apix, res, p.minres),
            gmm_fsc_decoder_zero=map_gmm_fsc(half_map, zero, apix, res, p.minres),
            n_gaussians=len(net.decoder.layout.centers), n_moving=net.decoder.M, n_anchors=net.decoder.K,
            pc1_flipped=bool(flipped), mask_coverage=coverage)
        log.info("half %d: mean FRC %.4f (neutral) -> %.4f (decoded); PC1 %.0f %% of the latent variance", h,
                 report.frc_neutral, report.frc_decoded, 100 * pca.explained_variance_ratio[0])
        return net, enc, pca, pcs, report

    halves = HalfPair.build(one_half)

    # latents of every particle, in table order
    n = len(table)
    latent = np.zeros((n, p.latent), np.float32)
    pcs = np.zeros((n, 2), np.float64)
    frc0, frc1 = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for h, (net, enc, pca, pc, rep) in halves.items():
        latent[rows[h]], pcs[rows[h]] = enc["latent"], pc[:, :2]
        frc0[rows[h]], frc1[rows[h]] = enc["frc_neutral"], enc["frc_decoded"]
    write_latents_csv(fin / "latents.csv", table.image_name, table.half, latent, pcs)
    with atomic_path(fin / "latents.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, latent=latent, pcs=pcs, half=np.asarray(table.half), frc_neutral=frc0, frc_decoded=frc1)

    # bins along PC1: decoded GMM at the bin's mean latent, map of the bin's particles (per half)
    bins = halves.map(lambda h, x: pc1_bins(x[3][:, 0], p.bins))
    nb = min(len(bins[1]), len(bins[2]))
    (fin / "bins").mkdir(exist_ok=True)
    for k in range(nb):
        idx = np.concatenate([rows[h][bins[h][k]] for h in (1, 2)])
        maps = reconstruct_halves(table, indices=idx, chunk=p.chunk)
        for h, (net, enc, pca, pc, rep) in halves.items():
            b = bins[h][k]
            stem = f"bins/half{h}_bin{k + 1}"
            g = net.decoder.gmm(enc["latent"][b].mean(0))
            g.save(fin / f"{stem}.gmm.npz")
            g.save_pdb(fin / f"{stem}.pdb")
            write_map(fin / f"{stem}.mrc", maps[h], apix)
            rep.bins.append({"pc1": float(pc[b, 0].mean()), "n": int(len(b)), "gmm": f"final/{stem}.gmm.npz",
                             "gmm_pdb": f"final/{stem}.pdb", "map": f"final/{stem}.mrc"})

    summary = HeterogeneitySummary(
        params=asdict(p), device=device, source=str(src.path.resolve()), latent_dim=int(p.latent), resolution_A=res,
        minres_A=float(p.minres), n_particles={str(h): int(r.size) for h, r in rows.items()},
        halves={str(h): x[4] for h, x in halves.items()}, seconds=time.time() - t_start, directory=str(run.path))
    summary.save()
    log.info("done in %.0f s; latents in %s", summary.seconds, fin / "latents.csv")
    return summary
