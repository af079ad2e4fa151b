"""Realistic benchmark sets: RELION projections (`relion_project --ctf`, RELION's own white noise) of
maps computed from the bundled adenylate kinase models (see README.md beside this file).

    python -m benchmarks.realistic.generate --set flexible --out benchmarks/realistic_cache
    python -m benchmarks.realistic.generate --set rigid --n 400 --snr 0.1 --out /tmp/small
    python -m benchmarks.realistic.generate --set assembly --out benchmarks/realistic_cache
    python -m benchmarks.realistic.generate --set occupancy --out benchmarks/realistic_cache
    python -m benchmarks.realistic.generate --set twobody --out benchmarks/realistic_cache

Frames and truth
----------------
* Both models (1AKE closed = t 0, 4AKE open = t 1; same atom order) are superposed on the CORE
  (residues outside LID 122–159 and NMP 30–59, mass-weighted Kabsch), then centred so the centre of
  mass of the reference state t_ref = 0.5 sits at the box centre (voxel box//2).  The core barely
  moves along the trajectory, so "the core frame" is the particle frame of the truth.
* Trajectory: LID and NMP each move as rigid bodies: x(t) = R_d^t x_A + t u_d + t (x_B − R_d x_A − u_d)
  (R_d, u_d the domain's Kabsch motion A → B; the last term, the non-rigid rest, is linear); the core
  is linear in atom coordinates.  Each particle draws t uniform in [0, 1); its map is that of its
  bin's centre t_b (``bins`` bins).  The rigid set is the closed state (t = 0 = t_ref).
* Moving domain: LID (it moves most: ≈ 53° between the models, vs ≈ 43° for NMP).  Per particle,
  ``domain_rotation`` Q and ``domain_translation_A`` u: the domain's Kabsch motion from t_ref to its
  bin (y = Q z + u); the domain's pose — where the t_ref map explains the moved domain — is
  (A·Q, o − (A u)_xy) (RELION A, origins in Å, the sign convention of :mod:`gmmcore.simulate`).
* Assembly set (a domain of tens of kDa in a larger particle, where a per-particle pose of the
  domain is physically possible — the LID's is not, see pose_bound.py): six closed ADK copies at
  the vertices of a regular octahedron (edge 46 Å between centres of mass; each copy turned by a
  seeded rotation, the most open of 64 tries: closest approach 2.8 Å), ≈ 145 kDa, box 80 at
  1.75 Å/px.  Two neighbouring copies (≈ 48 kDa, a third of the mass) are the moving domain: a
  rigid turn about a hinge halfway between the domain's and the core's centres of mass, axis
  perpendicular to the line joining them, by swing·(2t − 1), swing 15°, t uniform — none at t_ref
  0.5, 7.6° on average.  "lid" in the code below names this domain; the core is the other four.
* Occupancy set (a change of mass, not of shape: what the heterogeneity decoder's amplitude head is
  for): the assembly without its swing, the domain present in half of the particles.  Two "bins":
  bin 0 (t 0) the four core copies alone, bin 1 (t 1) all six; each particle's t is its bin (0 or
  1), drawn as t uniform → bin, so the same seed gives the same poses as the assembly set.  The
  truth map (t_ref 0.5) is the whole assembly; the domain's pose is the core's (Q = I).
* Two-body set (parts that move separately, each alignable: what patch-by-patch refinement is
  for): the assembly's six copies as three rigid pairs of neighbouring copies, each a third of the
  mass — domain A (copies 0, 1: "lid"), domain B (copies 2, 4: "lid2") and the core (copies 3, 5).
  A and B each turn about their own hinge (as the assembly's domain, halfway to the core's centre of
  mass, a seeded axis perpendicular to that line) by swing·(2t − 1), swing 8°, with their own t
  (t = (t_A, t_B), each uniform and independent; t_ref (0.5, 0.5)); ``bins`` per axis, so bins²
  maps.  ``domain_mask.mrc`` / ``domain2_mask.mrc`` cover A / B over their swing, the truth holds
  both domains' poses (``domain_*`` for A, ``domain2_*`` for B).
* Masks (soft, 3-px raised-cosine edge, :func:`gmmcore.masks.points_mask`): ``domain_mask.mrc``
  voxels within 4 Å of the LID atoms of any bin and nearer to them than to the other atoms of
  t_ref; ``core_mask.mrc`` the same for the core atoms of t_ref; ``particle_mask.mrc`` within 4 Å
  of any atom of any bin.
* Noise: SNR = mean over particles of the variance of the clean (CTF-corrupted) projection inside a
  disc about the box centre (radius: the largest atom radius over all bins + 3 Å) / σ_noise²; σ_noise
  from the clean projections themselves.  RELION's projector seeds its noise generator the same way
  in every call (the noise of image k does not depend on the map), so the clean projections are made
  per bin map (``relion_project --ctf``) and the noise by ONE call over all particles on a zero map
  (``relion_project --ctf --add_noise --white_noise σ``), then added: independent noise everywhere.
  The noise realisation is thus fixed by RELION (not by ``seed``); everything else is seeded.
* Start poses: the true rotation turned about a random axis by |N(0, s²I₃)| (s = 1.5°: mean ≈ 2.4°),
  origins moved by N(0, s²I₂) (s = 0.96 px: mean 1.2 px).  ``particles.star`` holds the start poses,
  ``particles_true.star`` the true ones (core frame), ``truth.npz`` every truth array.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
from scipy.spatial.transform import Rotation

from gmmcore.geometry import random_rotations
from gmmcore.io.maps import write_map
from gmmcore.io.pdb import atomic_masses, atomic_numbers, builtin_model_path, read_atoms_with_residues
from gmmcore.io.star import write_star
from gmmcore.masks import points_mask
from gmmcore.particles import CTFParams, ParticleTable

from benchmarks.realistic.atom_maps import atom_map, atom_sigmas, read_b_factors

LID = (122, 159)
NMP = (30, 59)
T_REF = 0.5
SETS = {"rigid": dict(n=4000, flexible=False), "flexible": dict(n=6000, flexible=True),
        "assembly": dict(n=6000, flexible=True, assembly=True, box=80, apix=1.75),
        "occupancy": dict(n=6000, flexible=True, assembly=True, occupancy=True, box=80, apix=1.75),
        "twobody": dict(n=6000, flexible=True, assembly=True, twobody=True, box=80, apix=1.75, bins=8)}
DEFAULT_BOX, DEFAULT_APIX = 64, 1.5
# The assembly set: an octahedral cluster of ASSEMBLY_COPIES closed ADK copies (≈ 24 kDa each); two
# neighbouring copies form the moving domain (≈ 48 kDa, a third of the mass), which swings about a
# hinge at its contact with the rest by up to ±ASSEMBLY_SWING_DEG (uniform over the particles; none
# at t_ref).
ASSEMBLY_COPIES = 6
ASSEMBLY_DOMAIN_COPIES = 2
ASSEMBLY_EDGE_A = 46.0  # distance between neighbouring copies' centres of mass
ASSEMBLY_SWING_DEG = 15.0
ASSEMBLY_SEED = 5
TWOBODY_COPIES = ((0, 1), (2, 4))  # domains A and B (octahedron edges x–y and −x–z); the core: −y, −z
TWOBODY_SWING_DEG = 8.0
STACK = "particles.mrcs"


def _kabsch(mobile: np.ndarray, target: np.ndarray, w: np.ndarray):
    """(R, u) minimising Σ w |R·mobile + u − target|²."""
    cm = (mobile * w[:, None]).sum(0) / w.sum()
    ct = (target * w[:, None]).sum(0) / w.sum()
    H = ((mobile - cm) * w[:, None]).T @ (target - ct)
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(Vt.T @ U.T))
    R = Vt.T @ np.diag([1.0, 1.0, d]) @ U.T
    return R, ct - R @ cm


def load_trajectory() -> dict:
    """The two ADK states superposed on the core and the rigid-domain interpolation (module notes)."""
    pa, pb = builtin_model_path("adk-closed"), builtin_model_path("adk-open")
    xa, el, res = read_atoms_with_residues(pa)
    xb, el_b, _ = read_atoms_with_residues(pb)
    ba, bb = read_b_factors(pa), read_b_factors(pb)
    if not (len(xa) == len(xb) == len(ba) == len(bb)) or np.any(el != el_b):
        raise SystemExit("the bundled ADK models do not match atom for atom")
    m = atomic_masses(el)
    lid = (res >= LID[0]) & (res <= LID[1])
    nmp = (res >= NMP[0]) & (res <= NMP[1])
    core = ~lid & ~nmp
    R, u = _kabsch(xb[core], xa[core], m[core])
    xb = xb @ R.T + u
    domains = []
    for sel in (lid, nmp):
        Rd, ud = _kabsch(xa[sel], xb[sel], m[sel])
        domains.append((sel, Rotation.from_matrix(Rd).as_rotvec(), ud, xb[sel] - (xa[sel] @ Rd.T + ud)))
    traj = {"xa": xa, "xb": xb, "elements": el, "resseq": res, "mass": m, "lid": lid, "nmp": nmp, "core": core,
            "ba": ba, "bb": bb, "domains": domains}
    x_ref = coords_at(traj, T_REF)
    traj["centre"] = (x_ref * m[:, None]).sum(0) / m.sum()
    traj["domain_angle_deg"] = [float(np.rad2deg(np.linalg.norm(d[1]))) for d in domains]
    return traj


def load_assembly(domain_copies: int = ASSEMBLY_DOMAIN_COPIES, edge_A: float = ASSEMBLY_EDGE_A,
                  swing_deg: float = ASSEMBLY_SWING_DEG, seed: int = ASSEMBLY_SEED, twobody: bool = False) -> dict:
    """The assembly set's trajectory (module notes): six closed ADK copies at the vertices of a
    regular octahedron of edge ``edge_A``, each turned by a seeded random rotation (the most open of
    64 tries: largest closest approach between copies); the first ``domain_copies`` (neighbours) are
    the moving domain.  Its hinge: the point halfway from its centre of mass to the core's, axis
    perpendicular to that line (seeded).  At trajectory point t the domain is turned about the hinge
    by swing·(2t − 1) — 0 at t_ref 0.5.  ``twobody``: the two domains of TWOBODY_COPIES, each with its
    own hinge (t a pair; module notes)."""
    from scipy.spatial import cKDTree

    one = load_trajectory()
    m1 = one["mass"]
    x1 = one["xa"] - (one["xa"] * m1[:, None]).sum(0) / m1.sum()
    verts = np.array([[1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float64)
    verts *= edge_A / math.sqrt(2.0)  # neighbouring unit vertices are √2 apart
    copies = len(verts)
    rng = np.random.default_rng(seed)
    best, best_gap = None, -1.0
    for _ in range(64):
        rots = random_rotations(copies, rng)
        parts = [x1 @ r.T + v for r, v in zip(rots, verts)]
        gap = min(cKDTree(parts[i]).query(parts[j])[0].min() for i in range(copies) for j in range(i + 1, copies))
        if gap > best_gap:
            best, best_gap = parts, float(gap)
    x = np.concatenate(best)
    n1 = len(x1)
    bodies = TWOBODY_COPIES if twobody else (tuple(range(domain_copies)),)
    copy_of = np.repeat(np.arange(copies), n1)
    sels = [np.isin(copy_of, b) for b in bodies]  # "lid" (and "lid2") = the moving domain(s) throughout this module
    core_copies = [c for c in range(copies) if not any(c in b for b in bodies)]
    core_c = verts[core_copies].mean(0)
    hinges = []
    for b in bodies:
        dom_c = verts[list(b)].mean(0)
        line = (dom_c - core_c) / np.linalg.norm(dom_c - core_c)
        axis = np.cross(line, rng.normal(size=3))
        hinges.append((0.5 * (dom_c + core_c), axis / np.linalg.norm(axis), math.radians(swing_deg)))
    lid = sels[0]
    moving = np.any(sels, axis=0)
    ba = np.tile(one["ba"], copies)
    mass = np.tile(m1, copies)
    traj = {"xa": x, "xb": x, "elements": np.tile(one["elements"], copies), "resseq": np.tile(one["resseq"], copies),
            "mass": mass, "lid": lid, "nmp": np.zeros(len(x), bool), "core": ~moving, "ba": ba, "bb": ba,
            "domains": [], "hinge": hinges[0], "min_gap_A": best_gap}
    if twobody:
        traj.update(lid2=sels[1], hinges=hinges)
    traj["centre"] = (x * mass[:, None]).sum(0) / mass.sum()
    traj["domain_angle_deg"] = [2.0 * float(swing_deg)]
    return traj


def coords_at(traj: dict, t: float, centred: bool = False) -> np.ndarray:
    """Atom coordinates (Å) at trajectory point t ∈ [0, 1] (a pair (t_A, t_B) for a two-body set),
    centred on the box centre if asked."""
    if "hinges" in traj:  # two bodies: each turns rigidly about its own hinge by its own t
        x = traj["xa"].copy()
        for sel, (p, axis, swing), tb in zip((traj["lid"], traj["lid2"]), traj["hinges"], np.broadcast_to(t, (2,))):
            R = Rotation.from_rotvec(axis * swing * (2.0 * float(tb) - 1.0)).as_matrix()
            x[sel] = (x[sel] - p) @ R.T + p
        return x - traj["centre"] if centred else x
    if "hinge" in traj:  # the assembly: the domain turns rigidly about its hinge
        p, axis, swing = traj["hinge"]
        x = traj["xa"].copy()
        sel = traj["lid"]
        R = Rotation.from_rotvec(axis * swing * (2.0 * t - 1.0)).as_matrix()
        x[sel] = (x[sel] - p) @ R.T + p
        return x - traj["centre"] if centred else x
    x = traj["xa"] + t * (traj["xb"] - traj["xa"])
    for sel, rotvec, ud, rest in traj["domains"]:
        Rt = Rotation.from_rotvec(t * rotvec).as_matrix()
        x[sel] = traj["xa"][sel] @ Rt.T + t * ud + t * rest
    return x - traj["centre"] if centred else x


def b_factors_at(traj: dict, t) -> np.ndarray:
    return traj["ba"] + float(np.ravel(t)[0]) * (traj["bb"] - traj["ba"])  # the assembly's are t-independent


def map_at(traj: dict, t: float, box: int, apix: float) -> np.ndarray:
    """The map at trajectory point t (an occupancy set: without the domain below t 0.5)."""
    keep = ~traj["lid"] if traj.get("occupancy") and t < 0.5 else np.ones(len(traj["lid"]), bool)
    return atom_map(coords_at(traj, t, True)[keep], atomic_numbers(traj["elements"])[keep],
                    atom_sigmas(b_factors_at(traj, t))[keep], box, apix)


# --------------------------------------------------------------------------------------------
# truth


def trajectory_span(span: float) -> float:
    """The first trajectory point of a flexible set: t ∈ [t0, t0 + span], centred on t_ref
    (span 1: the whole closed → open trajectory)."""
    return max(0.0, T_REF - span / 2.0) if span < 1.0 else 0.0


def draw_truth(n: int, box: int, apix: float, seed: int, flexible: bool, bins: int, optics_groups: int = 2,
               max_origin_px: float = 2.0, start_angle_deg: float = 2.4, start_shift_px: float = 1.2,
               span: float = 1.0) -> dict:
    """Poses, CTFs, halves, optics groups, trajectory points (t ∈ [t0, t0 + span]) and start poses (seeded)."""
    rng = np.random.default_rng(seed)
    rot = random_rotations(n, rng)
    r = max_origin_px * np.sqrt(rng.uniform(size=n))
    phi = rng.uniform(0, 2 * np.pi, n)
    origins = np.stack([r * np.cos(phi), r * np.sin(phi)], 1) * apix
    half = np.where(np.arange(n) < (n + 1) // 2, 1, 2).astype(np.int8)
    rng.shuffle(half)
    group = (rng.permutation(n) % optics_groups + 1).astype(np.int32)
    dmean = rng.uniform(8000.0, 25000.0, n)  # 0.8–2.5 µm
    astig = rng.uniform(0.0, 1000.0, n)
    ctf = CTFParams(defocus_u=dmean + astig / 2, defocus_v=dmean - astig / 2, defocus_angle=rng.uniform(0, 180, n),
                    voltage=np.full(n, 300.0), cs=np.where(group == 1, 2.7, 2.0),
                    amp_contrast=np.where(group == 1, 0.1, 0.07), phase_shift=np.zeros(n), bfactor=np.zeros(n))
    s_ang = start_angle_deg / (2.0 * math.sqrt(2.0 / math.pi))  # mean of a 3-D Maxwell = 2s·sqrt(2/π)
    rot_start = Rotation.from_rotvec(np.deg2rad(s_ang) * rng.normal(size=(n, 3))).as_matrix() @ rot
    s_sh = start_shift_px / math.sqrt(math.pi / 2.0)  # mean of a 2-D Rayleigh = s·sqrt(π/2)
    origins_start = origins + s_sh * apix * rng.normal(size=(n, 2))
    t0 = trajectory_span(span)
    t = t0 + span * rng.uniform(0.0, 1.0, n) if flexible else np.zeros(n)
    b = np.minimum(((t - t0) / span * bins).astype(np.int64), bins - 1) if flexible else np.zeros(n, np.int64)
    return {"rotations": rot, "origins_A": origins, "half": half, "optics_group": group, "ctf": ctf,
            "rotations_start": rot_start, "origins_start_A": origins_start, "t": t, "bin": b}


def domain_motion(traj: dict, t_bins: np.ndarray, domain: str = "lid"):
    """Per bin, the domain's (``"lid"``, or ``"lid2"`` of a two-body set) Kabsch motion (Q, u) from
    t_ref to t_b in the centred frame: y = Q z + u."""
    sel, m = traj[domain], traj["mass"]
    z = coords_at(traj, T_REF, True)[sel]
    Q, U = [], []
    for tb in t_bins:
        R, u = _kabsch(z, coords_at(traj, tb if np.ndim(tb) else float(tb), True)[sel], m[sel])
        Q.append(R)
        U.append(u)
    return np.asarray(Q), np.asarray(U)


def table(truth: dict, rotations, origins, apix: float, box: int, names) -> ParticleTable:
    n = len(rotations)
    return ParticleTable(image_name=np.asarray(names), rotation=np.asarray(rotations, np.float64),
                         origin=np.asarray(origins, np.float64), half=truth["half"].copy(),
                         optics_group=truth["optics_group"].copy(), apix=np.full(n, float(apix)),
                         image_size=np.full(n, int(box), np.int32), ctf=truth["ctf"], phase_flipped=False,
                         source="benchmarks/realistic", meta={"format": "relion", "simulated": True})


# --------------------------------------------------------------------------------------------
# RELION


def _relion_project(map_path: Path, star: Path, out_root: Path, noise_sigma: Optional[float] = None) -> np.ndarray:
    """Images of ``relion_project --ctf`` (with RELION's white noise when ``noise_sigma``)."""
    import mrcfile

    cmd = ["relion_project", "--i", str(map_path), "--ang", str(star), "--ctf", "--o", str(out_root)]
    if noise_sigma is not None:
        cmd += ["--add_noise", "--white_noise", repr(float(noise_sigma))]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stack = Path(str(out_root) + ".mrcs")
    if done.returncode != 0 or not stack.is_file():
        raise RuntimeError(f"relion_project failed ({done.returncode}):\n{done.stdout[-2000:]}")
    with mrcfile.open(stack, permissive=True) as fh:
        return np.asarray(fh.data, np.float32).reshape(-1, fh.data.shape[-2], fh.data.shape[-1]).copy()


def signal_disc(box: int, radius_px: float) -> np.ndarray:
    y, x = np.mgrid[:box, :box] - box // 2
    return x * x + y * y <= radius_px * radius_px


# --------------------------------------------------------------------------------------------
# the set


def generate(out_dir, kind: str = "flexible", n: Optional[int] = None, seed: int = 17, box: Optional[int] = None,
             apix: Optional[float] = None, snr: float = 0.05, bins: Optional[int] = None, force: bool = False,
             start_angle_deg: float = 2.4, start_shift_px: float = 1.2, span: float = 1.0) -> dict:
    """Make one set in ``out_dir`` (skipped when ``generation.json`` there has the same parameters;
    ``start_angle_deg`` / ``start_shift_px``: the mean start-pose error; ``span``: the part of the
    trajectory a flexible set covers, centred on t_ref — 1 the whole, smaller for a smaller motion).
    Returns the parameters and summary written to ``generation.json``."""
    if shutil.which("relion_project") is None:
        raise SystemExit("relion_project (RELION) is not on PATH")
    out = Path(out_dir)
    spec = SETS[kind]
    n = int(spec["n"] if n is None else n)
    box = int(spec.get("box", DEFAULT_BOX) if box is None else box)
    apix = float(spec.get("apix", DEFAULT_APIX) if apix is None else apix)
    flexible = bool(spec["flexible"])
    bins = int(spec.get("bins", 20) if bins is None else bins)
    occupancy = bool(spec.get("occupancy"))
    if occupancy:
        bins, span = 2, 1.0  # t 0: domain absent, t 1: present (module notes)
    params = {"set": kind, "n": n, "seed": int(seed), "box": int(box), "apix": float(apix), "snr": float(snr),
              "bins": int(bins) if flexible else 1, "start_angle_deg": float(start_angle_deg),
              "start_shift_px": float(start_shift_px), "version": 1}
    if flexible and span != 1.0:
        params["span"] = float(span)
    twobody = bool(spec.get("twobody"))
    swing = 0.0 if occupancy else TWOBODY_SWING_DEG if twobody else ASSEMBLY_SWING_DEG
    if twobody:
        params["twobody"] = {"domains": [list(b) for b in TWOBODY_COPIES], "bins_per_domain": int(bins)}
        params["bins"] = int(bins) ** 2
    if spec.get("assembly"):
        params["assembly"] = {"copies": ASSEMBLY_COPIES, "domain_copies": ASSEMBLY_DOMAIN_COPIES, "edge_A": ASSEMBLY_EDGE_A,
                              "swing_deg": swing, "seed": ASSEMBLY_SEED}
    if occupancy:
        params["occupancy"] = {"domain_present_fraction": 0.5}
    info_path = out / "generation.json"
    if not force and info_path.is_file():
        old = json.loads(info_path.read_text())
        if old.get("params") == params:
            return old
    t0 = time.time()
    if out.exists():
        shutil.rmtree(out)
    (out / "maps").mkdir(parents=True)
    traj = load_assembly(swing_deg=swing, twobody=twobody) if spec.get("assembly") else load_trajectory()
    traj["occupancy"] = occupancy
    nb = int(bins) if twobody else params["bins"]
    t_bins = trajectory_span(span) + (np.arange(nb) + 0.5) / nb * span if flexible else np.zeros(1)
    truth = draw_truth(n, box, apix, seed, flexible, nb, start_angle_deg=start_angle_deg,
                       start_shift_px=start_shift_px, span=span)
    if occupancy:  # each particle's state is its bin: 0 without the domain, 1 with it
        t_bins = np.array([0.0, 1.0])
        truth["t"] = truth["bin"].astype(np.float64)
    t_ref = T_REF if flexible else 0.0
    if twobody:  # domain B's t drawn after everything else (same poses as the assembly set of this seed)
        t_b = trajectory_span(span) + span * np.random.default_rng([seed, 2]).uniform(0.0, 1.0, n)
        bin_b = np.minimum(((t_b - trajectory_span(span)) / span * nb).astype(np.int64), nb - 1)
        truth["t"] = np.stack([truth["t"], t_b], 1)
        truth["bin"] = truth["bin"] * nb + bin_b
        t_bins = np.stack(np.meshgrid(t_bins, t_bins, indexing="ij"), -1).reshape(-1, 2)
        t_ref = (T_REF, T_REF)

    # Maps: the reference state (truth map) and one per bin.
    write_map(out / "truth_map.mrc", map_at(traj, t_ref, box, apix), apix)
    bin_maps = []
    for b, tb in enumerate(t_bins):
        p = out / "maps" / f"bin_{b:02d}.mrc"
        write_map(p, map_at(traj, tb if twobody else float(tb), box, apix), apix)
        bin_maps.append(p)

    # Masks.
    core, lid = traj["core"], traj["lid"]
    x_ref = coords_at(traj, t_ref, True)
    all_bins = [coords_at(traj, tb if twobody else float(tb), True) for tb in (t_bins if flexible else [0.0])]
    for name, sel in (("domain_mask.mrc", lid), ("domain2_mask.mrc", traj.get("lid2"))):
        if sel is not None:
            pts = np.concatenate([x[sel] for x in all_bins])
            write_map(out / name, points_mask(pts, box, apix, 4.0, 3.0, exclude_A=x_ref[~sel]), apix)
    write_map(out / "core_mask.mrc", points_mask(x_ref[core], box, apix, 4.0, 3.0, exclude_A=x_ref[~core]), apix)
    write_map(out / "particle_mask.mrc", points_mask(np.concatenate(all_bins), box, apix, 4.0, 3.0), apix)

    # Clean projections per bin (true poses), then σ_noise from them, then RELION's noise.
    names = np.array([f"{i + 1:06d}@{STACK}" for i in range(n)])
    clean = np.empty((n, box, box), np.float32)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp = Path(tmp)
        for b, p in enumerate(bin_maps):
            idx = np.flatnonzero(truth["bin"] == b)
            if not len(idx):
                continue
            tab = table(truth, truth["rotations"], truth["origins_A"], apix, box, names).subset(idx)
            write_star(tab, tmp / f"bin_{b:02d}.star")
            clean[idx] = _relion_project(p, tmp / f"bin_{b:02d}.star", tmp / f"clean_{b:02d}")
        r_px = min((max(float(np.linalg.norm(x, axis=1).max()) for x in all_bins) + 3.0) / apix, box / 2 - 1)
        disc = signal_disc(box, r_px)
        sig_var = float(clean[:, disc].var(axis=1).mean())
        noise_sigma = math.sqrt(sig_var / snr)
        zero = tmp / "zero.mrc"
        write_map(zero, np.zeros((box,) * 3, np.float32), apix)
        write_star(table(truth, truth["rotations"], truth["origins_A"], apix, box, names), tmp / "all.star")
        noise = _relion_project(zero, tmp / "all.star", tmp / "noise", noise_sigma)
        clean += noise
        del noise
    import mrcfile

    with mrcfile.new(out / STACK, overwrite=True) as fh:
        fh.set_data(clean)
        fh.voxel_size = apix
    del clean

    # Stars and truth.
    write_star(table(truth, truth["rotations_start"], truth["origins_start_A"], apix, box, names),
               out / "particles.star")
    write_star(table(truth, truth["rotations"], truth["origins_A"], apix, box, names), out / "particles_true.star")
    A = truth["rotations"]
    domains = {}
    for key, dom in (("domain", "lid"), ("domain2", "lid2")):
        if dom == "lid2" and not twobody:
            continue
        Q, U = domain_motion(traj, t_bins, dom) if flexible else (np.eye(3)[None], np.zeros((1, 3)))
        q, u = Q[truth["bin"]], U[truth["bin"]]
        domains.update({f"{key}_rotation": q, f"{key}_translation_A": u,
                        f"{key}_pose_rotations": np.einsum("nab,nbc->nac", A, q),
                        f"{key}_pose_origins_A": truth["origins_A"] - np.einsum("nab,nb->na", A, u)[:, :2]})
    q = domains["domain_rotation"]
    ctf = truth["ctf"]
    np.savez(out / "truth.npz", rotations=A, origins_A=truth["origins_A"], rotations_start=truth["rotations_start"],
             origins_start_A=truth["origins_start_A"], half=truth["half"], optics_group=truth["optics_group"],
             t=truth["t"], bin=truth["bin"], t_bins=t_bins, **domains, defocus_u=ctf.defocus_u,
             defocus_v=ctf.defocus_v, defocus_angle=ctf.defocus_angle)
    q_angle = np.rad2deg(Rotation.from_matrix(q).magnitude())
    info = {
        "params": params, "seconds": round(time.time() - t0, 1), "n_atoms": int(len(traj["xa"])),
        **({"closest_approach_between_copies_A": traj["min_gap_A"]} if "min_gap_A" in traj else {}),
        "noise_sigma": noise_sigma, "signal_variance": sig_var, "signal_disc_radius_px": r_px,
        "snr_definition": "mean over particles of the variance of the clean CTF-corrupted projection inside the "
                          "signal disc / noise variance",
        "t_ref": t_ref,
        "domain": ("ADK copies 0-1 of the assembly" + (", present where t = 1" if occupancy else "")
                   + (" (domain A; domain B: copies 2, 4, its own t)" if twobody else "")
                   if spec.get("assembly") else f"LID {LID[0]}-{LID[1]}"),
        **({"domain_present_fraction_drawn": float(truth["t"].mean())} if occupancy else {}),
        "domain_mass_fraction": float(traj["mass"][traj["lid"]].sum() / traj["mass"].sum()), "domain_angle_models_deg": traj["domain_angle_deg"],
        "domain_angle_from_ref_deg": {"mean": float(q_angle.mean()), "max": float(q_angle.max())},
        "start_error_deg": {"mean": float(np.rad2deg(Rotation.from_matrix(
            np.einsum("nba,nbc->nac", A, truth["rotations_start"])).magnitude()).mean())},
        "files": {"stack": STACK, "start_star": "particles.star", "true_star": "particles_true.star",
                  "truth": "truth.npz", "truth_map": "truth_map.mrc", "bin_maps": "maps/bin_NN.mrc",
                  "domain_mask": "domain_mask.mrc", "core_mask": "core_mask.mrc",
                  "particle_mask": "particle_mask.mrc", **({"domain2_mask": "domain2_mask.mrc"} if twobody else {})},
    }
    info_path.write_text(json.dumps(info, indent=1))
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", choices=["rigid", "flexible", "assembly", "occupancy", "twobody", "both"], default="both",
                   help="both = rigid and flexible (the assembly, occupancy and two-body sets are made only when named)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "realistic_cache"),
                   help="cache folder (one sub-folder per set; default benchmarks/realistic_cache)")
    p.add_argument("--n", type=int, default=None, help="particles (default 4000 rigid, 6000 flexible)")
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--box", type=int, default=None, help="default 64 (assembly 80)")
    p.add_argument("--apix", type=float, default=None, help="Å/px, default 1.5 (assembly 1.75)")
    p.add_argument("--snr", type=float, default=0.05)
    p.add_argument("--bins", type=int, default=None,
                   help="trajectory bins (default 20; two-body set: per domain, default 8, so 64 maps)")
    p.add_argument("--span", type=float, default=1.0,
                   help="flexible set: the part of the closed → open trajectory covered, centred on its middle "
                        "(default 1: all of it, the LID ±25°; 0.2: about ±5°)")
    p.add_argument("--force", action="store_true", help="regenerate even when the cache matches")
    a = p.parse_args(argv)
    for kind in (["rigid", "flexible"] if a.set == "both" else [a.set]):
        info = generate(Path(a.out) / kind, kind, a.n, a.seed, a.box, a.apix, a.snr, a.bins, a.force, span=a.span)
        print(json.dumps({"set": kind, "seconds": info["seconds"], "noise_sigma": info["noise_sigma"],
                          "start_error_deg": info["start_error_deg"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
