"""Particle simulator: an atomic model → raw-like particles with known poses (library of ``gmmcore simulate``).

What it does
------------
1. Read the model's heavy atoms (:func:`gmmcore.io.pdb.read_atoms`) and **centre it at its centre of
   mass** (atomic masses), so the model's centre of mass sits at the box centre (index box//2).
   The offset removed is recorded as ``center_of_mass_A`` in ``simulation.json``.  With a second
   model (``model_b``, same atom order) it is centred at its own centre of mass and superposed onto
   the first (mass-weighted Kabsch fit), so the morph below is a pure conformational change.
2. Make a GMM with one Gaussian per atom: amplitude = atomic number, width
   σ = sqrt(atom_sigma_A² + b_factor / 8π²) Å (b_factor blurs the map like a temperature factor).
3. ``true_map.mrc``: the GMM rendered with the engine's projector (:func:`gmmcore.gmm.render.render_map`).
4. Particles: uniformly random rotations (RELION A), true origins uniform in a disc of radius
   ``max_origin_px`` (stored in Å, RELION sign), projected with
   :func:`gmmcore.gmm.render.project_images`, multiplied by the CTF (:func:`gmmcore.ctf.apply_ctf`,
   RELION's sign, **not** phase flipped — like raw data), plus white Gaussian noise.
   Defocus: mean uniform in ``defocus_range``, astigmatism |dU − dV| uniform in [0, astigmatism],
   angle uniform in [0, 180).  Optics groups g = 1..G differ slightly in Cs (+0.1 mm per group) and
   amplitude contrast (+0.01 per group).  Half sets 1/2 are balanced and assigned at random.
5. Noise: one standard deviation for the whole dataset, σ_noise² = mean signal variance / snr, the
   signal variance being measured inside the particle (a disc of radius ``mask_radius_px`` about
   the box centre: the model's largest projected radius plus 2σ) on a calibration set of
   CTF-corrupted projections at random poses (not written).  ``snr=None`` → no noise.
6. Heterogeneity (``model_b``): each particle has a conformation t ∈ [0, 1] (uniform, or fixed
   when ``conformation`` is a number); its atoms are A + t(B − A).  ``true_map.mrc`` is then
   state A (t = 0) and ``true_map_b.mrc`` state B (t = 1) — or, for a fixed t, ``true_map.mrc`` is
   that state.

7. Assemblies (``copies``, a point group such as "C3" or "D2"): K copies of the model in one
   particle, copy k's atoms at S_k·(x + d) with S_k the group's k-th operator
   (:func:`gmmcore.symmetry.symmetry_matrices`, identity first) and d an offset of ``copy_offset_A``
   (default: the smallest at which the copies' closest atoms stay 4 Å apart — copies that
   touch) along x for Cn, along (1, 0.6, 0.35)/|·| for
   the other groups (off every symmetry axis).  The assembly has the group's symmetry; its centre
   is the box centre.
8. A moving domain (``domain``: residue ranges such as "122-159", or "lid" (122–159) / "nmp"
   (30–59) of adenylate kinase — in every copy; or "copy:k", the whole k-th copy of an assembly,
   hinged at its interface with the other copies (the centre of mass of its atoms within 6 Å of
   another copy), axis from its and the other copies' centres of mass): in every particle and every
   moving copy the domain's atoms turn rigidly
   about a hinge by their own angle θ, uniform in [−``domain_angle_deg``, +``domain_angle_deg``]
   (drawn from a separate random stream, so the rest of the truth is unchanged).  Hinge point p =
   mean position of the atoms of the domain's first and last residue (where it joins the rest);
   axis = unit((c_dom − p) × (c_rest − p)), c = centres of mass of the domain and of the rest (model
   A) — the domain swings towards / away from the rest.  In the model's frame a domain atom x moves
   to p + R(θ)(x − p).  ``true_map.mrc`` is the unmoved assembly (θ = 0), ``domain_mask.mrc`` a
   soft mask over copy 0's domain through its range of motion (voxels within 4 Å of its atoms and
   no nearer to any other atom, then a 3-pixel raised-cosine edge), ``unit_mask.mrc`` (with
   copies) the same around all of copy 0.

Outputs in ``out_dir``: ``particles.mrcs``, ``particles_true.star`` (true poses),
``particles_perturbed.star`` (each rotation turned by exactly ``perturb_angle_deg`` about a random
axis, each origin moved by exactly ``perturb_shift_px`` pixels in a random direction),
``true_map.mrc`` (+ ``true_map_b.mrc``), ``truth.npz`` (per-particle truth: ``rotations`` (n,3,3),
``origins_A`` (n,2), ``conformation`` (n,), ``rotations_perturbed``, ``origins_perturbed_A``,
``half``, ``optics_group``, ``defocus_u``, ``defocus_v``, ``defocus_angle``; with copies ``copy_rotations``
(K,3,3) and ``copy_offset_A`` (3,); with a domain, per particle i and copy k: ``domain_angle_deg``
(n,K), ``domain_rotation`` (n,K,3,3) = Q_ik, the domain's rigid motion in the particle frame,
about the hinge ``domain_hinge_A`` (K,3) h_k (a moved domain atom y = Q z + (I − Q)h for its
unmoved position z), and the domain's own pose — the pose at which the *unmoved* map explains the
moved domain — ``domain_pose_rotations`` (n,K,3,3) = A_i·Q_ik and ``domain_pose_origins_A`` (n,K,2)
= o_i − (A_i(I − Q_ik)h_k)_xy) and ``simulation.json`` (parameters, seed, noise level, file names).

Images are made and written in chunks, so memory does not grow with the number of particles.
Everything is reproducible from the seed.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from . import __version__
from .safewrite import atomic_path, write_json
from .errors import InputError
from .geometry import perturb_rotations, random_rotations
from .particles import CTFParams, ParticleTable
from .io.pdb import atomic_masses, atomic_numbers, read_atoms, read_atoms_with_residues, resolve_model
from .progress import progress

STACK_NAME = "particles.mrcs"
TRUE_STAR = "particles_true.star"
PERTURBED_STAR = "particles_perturbed.star"
TRUE_MAP = "true_map.mrc"
TRUE_MAP_B = "true_map_b.mrc"
TRUTH = "truth.npz"
JSON = "simulation.json"
DOMAIN_MASK = "domain_mask.mrc"
UNIT_MASK = "unit_mask.mrc"

# Named domains of the bundled adenylate kinase (1AKE numbering).
DOMAINS = {"lid": ((122, 159),), "nmp": ((30, 59),)}

N_CALIBRATION = 128  # projections used to measure the signal variance for the noise level


# --------------------------------------------------------------------------------------------
# model


def _kabsch(mobile: np.ndarray, target: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Rotation R (3×3) minimising Σ w |R·mobile − target|² (both already centred)."""
    H = (mobile * w[:, None]).T @ target
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(Vt.T @ U.T))
    return Vt.T @ np.diag([1.0, 1.0, d]) @ U.T


def parse_domain(spec: str) -> Tuple[Tuple[int, int], ...]:
    """"lid" / "nmp" (adenylate kinase) or residue ranges "122-159[,30-59]" → ((first, last), ...)."""
    key = str(spec).strip().lower()
    if key in DOMAINS:
        return DOMAINS[key]
    ranges = []
    for part in key.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            lo_i, hi_i = int(lo), int(hi if sep else lo)
        except ValueError:
            raise InputError(f"not a domain: {spec!r} (use lid, nmp or residue ranges such as 122-159)",
                             field="domain") from None
        if hi_i < lo_i:
            raise InputError(f"empty residue range {part!r} in the domain {spec!r}", field="domain")
        ranges.append((lo_i, hi_i))
    return tuple(ranges)


def _domain_geometry(coords: np.ndarray, mass: np.ndarray, resseq: np.ndarray, ranges) -> dict:
    """The moving domain's atoms, hinge point and axis (see the module notes)."""
    atoms = np.zeros(len(coords), bool)
    for lo, hi in ranges:
        atoms |= (resseq >= lo) & (resseq <= hi)
    if not atoms.any() or atoms.all():
        raise InputError(f"the domain (residues {ranges}) selects {int(atoms.sum())} of {len(atoms)} atoms: it "
                         "must select some, not all", field="domain")
    ends = np.isin(resseq, [min(r[0] for r in ranges), max(r[1] for r in ranges)]) & atoms
    hinge = coords[ends].mean(0)
    c_dom = (coords[atoms] * mass[atoms, None]).sum(0) / mass[atoms].sum()
    c_rest = (coords[~atoms] * mass[~atoms, None]).sum(0) / mass[~atoms].sum()
    return {"atoms": atoms, "hinge": hinge, "axis": _axis(c_dom, hinge, c_rest), "ranges": [list(r) for r in ranges]}


def _axis(c_dom: np.ndarray, hinge: np.ndarray, c_rest: np.ndarray) -> np.ndarray:
    """Unit hinge axis normal to (domain − hinge) and (rest − hinge); any normal of (domain −
    hinge) when the three points are in a line."""
    axis = np.cross(c_dom - hinge, c_rest - hinge)
    if np.linalg.norm(axis) < 1e-6 * max(1.0, np.linalg.norm(c_dom - hinge) ** 2):
        v = c_dom - hinge
        axis = np.cross(v, [0.0, 0.0, 1.0] if abs(v[2]) < 0.9 * np.linalg.norm(v) else [1.0, 0.0, 0.0])
    return axis / np.linalg.norm(axis)


def _copy_domain(spec: str, coords: np.ndarray, mass: np.ndarray, ops: np.ndarray, d: np.ndarray) -> dict:
    """A whole copy of an assembly as the moving domain ("copy:k", 1-based).  Hinge: centre of
    mass of its atoms within 6 Å of another copy (the interface; midway to the assembly centre
    if none); axis from the copy's and the other copies' centres of mass (see :func:`_axis`).
    Hinge and axis are returned in the copy's own (model) frame."""
    from scipy.spatial import cKDTree

    try:
        k = int(spec.split(":", 1)[1]) - 1
    except ValueError:
        raise InputError(f"not a domain: {spec!r} (copy:K with K = 1..copies)", field="domain") from None
    K = len(ops)
    if K < 2 or not 0 <= k < K:
        raise InputError(f"domain {spec!r}: needs --copies with at least {k + 1} copies (have {K})", field="domain")
    placed = [(coords + d) @ S.T for S in ops]
    mine = placed[k]
    others = np.concatenate([p for j, p in enumerate(placed) if j != k])
    dist, _ = cKDTree(others).query(mine)
    near = dist < 6.0
    c_mine = (mine * mass[:, None]).sum(0) / mass.sum()
    hinge = (mine[near] * mass[near, None]).sum(0) / mass[near].sum() if near.any() else 0.5 * c_mine
    c_rest = others.mean(0)
    axis = _axis(c_mine, hinge, c_rest)
    S = ops[k]
    return {"atoms": np.ones(len(coords), bool), "hinge": S.T @ hinge - d, "axis": S.T @ axis, "ranges": [],
            "copies": [k], "name": spec}


def _copies(sym: Optional[str], coords: np.ndarray, mass: np.ndarray, offset_A: Optional[float]):
    """(operators (K,3,3), offset d (3,) Å) of an assembly (identity and 0 without one)."""
    from .symmetry import parse_symmetry, symmetry_matrices

    if sym is None:
        return np.eye(3)[None], np.zeros(3)
    ops = symmetry_matrices(sym)
    direction = np.array([1.0, 0.0, 0.0]) if parse_symmetry(sym)[0] == "C" else np.array([1.0, 0.6, 0.35])
    direction = direction / np.linalg.norm(direction)
    if offset_A is None:
        offset_A = _touching_offset(coords, ops, direction)
    if offset_A < 0:
        raise InputError(f"the copy offset must be ≥ 0 (got {offset_A})", field="copy_offset")
    return ops, float(offset_A) * direction


def _touching_offset(coords: np.ndarray, ops: np.ndarray, direction: np.ndarray, contact_A: float = 4.0) -> float:
    """The smallest offset (0.5 Å steps, from far to near) at which the copies' closest atoms are
    still ``contact_A`` apart: copies that touch without overlapping."""
    from scipy.spatial import cKDTree

    if len(ops) < 2:
        return 0.0
    tree = cKDTree(coords)
    s = 2.0 * float(np.linalg.norm(coords, axis=1).max()) + contact_A
    while s > 0:
        nxt = s - 0.5
        d = nxt * direction
        others = np.concatenate([(coords + d) @ S.T for S in ops[1:]]) - d  # in copy 0's frame
        if tree.query(others)[0].min() < contact_A:
            break
        s = nxt
    return s


def load_model(model: Union[str, Path] = "builtin:adk-closed", model_b: Union[str, Path, None] = None,
               atom_sigma_A: float = 1.2, b_factor: float = 30.0, copies: Optional[str] = None,
               copy_offset_A: Optional[float] = None, domain: Optional[str] = None) -> dict:
    """Atoms → GMM parameters, centred at the centre of mass.

    Returns ``{"coords_a": (n,3) Å, "coords_b": (n,3) Å or None, "amplitudes": (n,),
    "sigmas": (n,) Å, "elements": (n,), "resseq": (n,), "center_of_mass_A": (3,),
    "center_of_mass_b_A": (3,) or None, "copy_ops": (K,3,3), "copy_offset": (3,) Å,
    "domain": None or {"atoms": (n,) bool, "hinge": (3,) Å, "axis": (3,), "ranges", "copies": the
    copies whose domain moves, "name"}}`` (coordinates, hinge and axis of one copy in its own frame;
    see the module notes for copies and the domain).
    """
    path_a = resolve_model(model)
    xyz_a, el, resseq = read_atoms_with_residues(path_a)
    mass = atomic_masses(el)
    com_a = (xyz_a * mass[:, None]).sum(0) / mass.sum()
    coords_a = xyz_a - com_a
    coords_b = com_b = None
    if model_b is not None:
        path_b = resolve_model(model_b)
        xyz_b, el_b = read_atoms(path_b)
        if len(xyz_b) != len(xyz_a):
            raise InputError(f"model B has {len(xyz_b)} atoms, model A has {len(xyz_a)}: they must match "
                             "atom for atom", path=path_b)
        if np.any(el_b != el):
            raise InputError("model B's elements differ from model A's (atom order must be identical)",
                             path=path_b)
        com_b = (xyz_b * mass[:, None]).sum(0) / mass.sum()
        R = _kabsch(xyz_b - com_b, coords_a, mass)
        coords_b = (xyz_b - com_b) @ R.T
    sigma = math.sqrt(atom_sigma_A ** 2 + max(b_factor, 0.0) / (8.0 * math.pi ** 2))
    ops, offset = _copies(copies, coords_a, mass, copy_offset_A)
    dom = None
    if domain is not None and str(domain).strip().lower().startswith("copy:"):
        dom = _copy_domain(str(domain).strip().lower(), coords_a, mass, ops, offset)
    elif domain is not None:
        dom = _domain_geometry(coords_a, mass, resseq, parse_domain(domain))
        dom.update(copies=list(range(len(ops))), name=str(domain))
    return {"coords_a": coords_a, "coords_b": coords_b, "amplitudes": atomic_numbers(el),
            "sigmas": np.full(len(el), sigma), "elements": el, "resseq": resseq, "center_of_mass_A": com_a,
            "center_of_mass_b_A": com_b, "copy_ops": ops, "copy_offset": offset, "domain": dom}


def morph(coords_a: np.ndarray, coords_b: Optional[np.ndarray], t: float) -> np.ndarray:
    """Linear morph A + t(B − A) (A itself when there is no B)."""
    if coords_b is None:
        return coords_a
    return coords_a + float(t) * (coords_b - coords_a)


def _n_copies(model: dict) -> int:
    return int(len(model.get("copy_ops", np.eye(3)[None])))


def assembly_coords(model: dict, t: float = 0.0, domain_rotations: Optional[np.ndarray] = None) -> np.ndarray:
    """All atoms of the particle (K copies) at conformation t, (K·n, 3) Å, copy after copy;
    ``domain_rotations`` (K, 3, 3) turns each copy's domain about its hinge (None: unmoved)."""
    x = morph(model["coords_a"], model["coords_b"], t)
    ops = model.get("copy_ops", np.eye(3)[None])
    d = model.get("copy_offset", np.zeros(3))
    dom = model.get("domain")
    out = []
    for k, S in enumerate(ops):
        xk = x
        if dom is not None and domain_rotations is not None and k in dom["copies"]:
            xk = x.copy()
            p = dom["hinge"]
            xk[dom["atoms"]] = p + (x[dom["atoms"]] - p) @ np.asarray(domain_rotations[k]).T
        out.append((xk + d) @ S.T)
    return np.concatenate(out)


def model_gmm(model: dict, t: float = 0.0, domain_rotations: Optional[np.ndarray] = None):
    """The GMM of a model (from :func:`load_model`) at conformation t: every copy, the domains
    unmoved (or turned by ``domain_rotations`` (K,3,3))."""
    from .gmm.model import GMM

    K = _n_copies(model)
    return GMM(assembly_coords(model, t, domain_rotations), np.tile(model["amplitudes"], K),
               np.tile(model["sigmas"], K))


def domain_truth(model: dict, rotations: np.ndarray, origins_A: np.ndarray, local_rotations: np.ndarray) -> dict:
    """Per particle i and copy k, from the domain's rotation R_ik in its copy's own frame (n,K,3,3):
    ``domain_rotation`` Q_ik = S_k R_ik S_kᵀ, ``domain_hinge_A`` h_k = S_k(p + d),
    ``domain_pose_rotations`` A_i Q_ik and ``domain_pose_origins_A`` o_i − (A_i(I − Q_ik)h_k)_xy."""
    ops, d, p = model["copy_ops"], model["copy_offset"], model["domain"]["hinge"]
    Q = np.einsum("kab,nkbc,kdc->nkad", ops, local_rotations, ops)
    h = np.einsum("kab,b->ka", ops, p + d)
    u = h[None] - np.einsum("nkab,kb->nka", Q, h)
    A = np.asarray(rotations, np.float64)
    pose_R = np.einsum("nab,nkbc->nkac", A, Q)
    pose_o = np.asarray(origins_A, np.float64)[:, None, :] - np.einsum("nab,nkb->nka", A, u)[..., :2]
    return {"domain_rotation": Q, "domain_hinge_A": h, "domain_pose_rotations": pose_R,
            "domain_pose_origins_A": pose_o}


# --------------------------------------------------------------------------------------------
# images


def _project_moving(model: dict, t: float, rotations, origins_A, local_rotations, apix: float, box: int):
    """Projections of particles whose copies' domains turn by ``local_rotations`` (k,K,3,3): the
    static atoms at the particle pose, plus each copy's domain as a rigid body at its own pose
    (A·S_k·R, origin − (A·S_k(p + d − R p))_xy) — projection is linear, so the particles stay batched."""
    from .gmm.model import GMM
    from .gmm.render import project_images

    dom = model["domain"]
    x = morph(model["coords_a"], model["coords_b"], t)
    ops, d, p = model["copy_ops"], model["copy_offset"], dom["hinge"]
    amps, sig = model["amplitudes"], model["sigmas"]
    keep = [np.ones(len(x), bool) if k not in dom["copies"] else ~dom["atoms"] for k in range(len(ops))]
    static = GMM(np.concatenate([(x[kp] + d) @ S.T for kp, S in zip(keep, ops)]),
                 np.concatenate([amps[kp] for kp in keep]), np.concatenate([sig[kp] for kp in keep]))
    imgs = project_images(static, rotations, origins_A, apix, box) if len(static) else \
        np.zeros((len(rotations), box, box), np.float32)
    piece = GMM(x[dom["atoms"]], amps[dom["atoms"]], sig[dom["atoms"]])
    for k in dom["copies"]:
        S = ops[k]
        R = local_rotations[:, k]
        rot = np.einsum("nab,bc,ncd->nad", rotations, S, R)
        t_k = (p + d)[None] - np.einsum("nab,b->na", R, p)  # R x + t_k = p + R(x − p) + d
        shift = np.einsum("nab,bc,nc->na", rotations, S, t_k)[:, :2]
        imgs += project_images(piece, rot, origins_A - shift, apix, box)
    return imgs


def clean_particles(model: dict, rotations: np.ndarray, origins_A: np.ndarray, ctf: Optional[CTFParams],
                    apix: float, box: int, conformation: Optional[np.ndarray] = None,
                    domain_rotations: Optional[np.ndarray] = None) -> np.ndarray:
    """Noise-free particle images (k, box, box) float32: projection at pose, times the CTF (if given).

    ``conformation`` (k,) morph parameter per particle (ignored without a model B);
    ``domain_rotations`` (k, K, 3, 3) each copy's domain rotation in its own frame (model with a
    domain; None: unmoved).
    """
    from .ctf import apply_ctf
    from .gmm.render import project_images

    rotations = np.asarray(rotations, np.float64).reshape(-1, 3, 3)
    origins_A = np.asarray(origins_A, np.float64).reshape(-1, 2)
    k = len(rotations)
    if model.get("domain") is not None and domain_rotations is not None:
        local = np.asarray(domain_rotations, np.float64).reshape(k, _n_copies(model), 3, 3)
        if model["coords_b"] is None or conformation is None:
            t0 = 0.0 if conformation is None or model["coords_b"] is None else float(np.ravel(conformation)[0])
            imgs = _project_moving(model, t0, rotations, origins_A, local, apix, box)
        else:
            conf = np.broadcast_to(np.asarray(conformation, np.float64), (k,))
            imgs = np.empty((k, box, box), np.float32)
            for t in np.unique(conf):
                idx = np.flatnonzero(conf == t)
                imgs[idx] = _project_moving(model, t, rotations[idx], origins_A[idx], local[idx], apix, box)
    elif model["coords_b"] is None or conformation is None:
        t0 = 0.0 if conformation is None or model["coords_b"] is None else float(np.ravel(conformation)[0])
        imgs = project_images(model_gmm(model, t0), rotations, origins_A, apix, box)
    else:
        conf = np.broadcast_to(np.asarray(conformation, np.float64), (k,))
        imgs = np.empty((k, box, box), np.float32)
        # Particles sharing a conformation are projected together; otherwise one at a time.
        for t in np.unique(conf):
            idx = np.flatnonzero(conf == t)
            imgs[idx] = project_images(model_gmm(model, t), rotations[idx], origins_A[idx], apix, box)
    if ctf is not None:
        imgs = apply_ctf(imgs, ctf, apix)
    return np.asarray(imgs, np.float32)


def particle_mask(box: int, radius_px: float) -> np.ndarray:
    """Disc (box, box) bool of radius ``radius_px`` about the box centre (index box//2)."""
    y, x = np.mgrid[:box, :box] - box // 2
    return (x * x + y * y) <= radius_px * radius_px


def signal_variance(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-image variance of the pixels inside ``mask``."""
    return np.asarray(images)[:, mask].var(axis=1)


# --------------------------------------------------------------------------------------------
# truth


def _draw_truth(n: int, box: int, apix: float, rng: np.random.Generator, *, defocus_range, astigmatism,
                voltage, cs, amp_contrast, max_origin_px, perturb_angle_deg, perturb_shift_px,
                optics_groups, has_b, conformation) -> dict:
    rotations = random_rotations(n, rng)
    r = max_origin_px * np.sqrt(rng.uniform(size=n))
    phi = rng.uniform(0, 2 * np.pi, size=n)
    origins_A = np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1) * apix
    half = np.where(np.arange(n) < (n + 1) // 2, 1, 2).astype(np.int8)
    rng.shuffle(half)
    dmean = rng.uniform(defocus_range[0], defocus_range[1], size=n)
    astig = rng.uniform(0.0, astigmatism, size=n)
    dang = rng.uniform(0.0, 180.0, size=n)
    group = (rng.permutation(n) % optics_groups + 1).astype(np.int32)
    g0 = group - 1
    ctf = CTFParams(defocus_u=dmean + astig / 2, defocus_v=dmean - astig / 2, defocus_angle=dang,
                    voltage=np.full(n, float(voltage)), cs=cs + 0.1 * g0,
                    amp_contrast=np.clip(amp_contrast + 0.01 * g0, 0.0, 0.5), phase_shift=np.zeros(n),
                    bfactor=np.zeros(n))
    if has_b:
        conf = rng.uniform(0.0, 1.0, size=n) if conformation is None else np.full(n, float(conformation))
    else:
        conf = np.zeros(n)
    rot_p = perturb_rotations(rotations, perturb_angle_deg, rng)
    psi = rng.uniform(0, 2 * np.pi, size=n)
    origins_p = origins_A + perturb_shift_px * apix * np.stack([np.cos(psi), np.sin(psi)], axis=1)
    return {"rotations": rotations, "origins_A": origins_A, "half": half, "optics_group": group, "ctf": ctf,
            "conformation": conf, "rotations_perturbed": rot_p, "origins_perturbed_A": origins_p}


def _table(truth: dict, rotations, origins, apix: float, box: int, stack_name: str, out_dir: Path):
    n = len(rotations)
    names = np.array([f"{i + 1:06d}@{stack_name}" for i in range(n)])
    return ParticleTable(image_name=names, rotation=np.asarray(rotations, np.float64),
                         origin=np.asarray(origins, np.float64), half=truth["half"].copy(),
                         optics_group=truth["optics_group"].copy(), apix=np.full(n, float(apix)),
                         image_size=np.full(n, int(box), np.int32), ctf=truth["ctf"], phase_flipped=False,
                         image_root=str(out_dir), source="gmmcore simulate",
                         meta={"format": "relion", "simulated": True})


# --------------------------------------------------------------------------------------------
# the dataset


def simulate_dataset(out_dir, model: Union[str, Path] = "builtin:adk-closed", n_particles: int = 1000,
                     box: int = 64, apix: float = 1.5, snr: Optional[float] = 0.05,
                     defocus_range: Tuple[float, float] = (10000.0, 25000.0), astigmatism: float = 500.0,
                     voltage: float = 300.0, cs: float = 2.7, amp_contrast: float = 0.1,
                     b_factor: float = 30.0, atom_sigma_A: float = 1.2, perturb_angle_deg: float = 3.0,
                     perturb_shift_px: float = 1.0, max_origin_px: float = 2.0, seed: int = 0,
                     model_b: Union[str, Path, None] = None, conformation: Optional[float] = None,
                     optics_groups: int = 1, chunk: Optional[int] = None, show_progress: bool = True,
                     copies: Optional[str] = None, copy_offset_A: Optional[float] = None,
                     domain: Optional[str] = None, domain_angle_deg: float = 10.0) -> dict:
    """Simulate a dataset in ``out_dir`` (see the module docstring). Returns paths and truth arrays:

    ``{"out_dir", "stack", "true_star", "perturbed_star", "true_map", "true_map_b" (or None),
    "truth", "json"`` (paths) ``, "n_particles", "box", "apix", "snr", "noise_sigma",
    "signal_variance", "mask_radius_px", "rotations", "origins_A", "rotations_perturbed",
    "origins_perturbed_A", "conformation", "half", "optics_group", "ctf" (CTFParams), "seed"}``,
    and with a domain the arrays of ``truth.npz`` named ``domain_*`` and ``"domain_mask"`` (path);
    with copies ``"unit_mask"`` (path).
    """
    from .gmm.render import render_map
    from .io.maps import write_map
    from .io.stacks import StackWriter
    from .io.star import write_star

    t_start = time.time()
    n = int(n_particles)
    box = int(box)
    apix = float(apix)
    _validate(n, box, apix, snr, defocus_range, astigmatism, optics_groups, conformation, model_b,
              perturb_angle_deg, perturb_shift_px, max_origin_px)
    if domain is not None and not 0 <= domain_angle_deg <= 90:
        raise InputError(f"the domain angle must be in [0, 90] degrees (got {domain_angle_deg})", field="domain_angle")
    mdl = load_model(model, model_b, atom_sigma_A, b_factor, copies=copies, copy_offset_A=copy_offset_A,
                     domain=domain)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    has_b = mdl["coords_b"] is not None
    K = _n_copies(mdl)

    # Model extent → particle disc (for the SNR) and a warning when it does not fit in the box.
    radii = np.linalg.norm(assembly_coords(mdl), axis=1)
    if has_b:
        radii = np.maximum(radii, np.linalg.norm(assembly_coords(mdl, 1.0), axis=1))
    sigma_A = float(mdl["sigmas"][0])
    mask_radius_px = min((radii.max() + 2 * sigma_A) / apix, box / 2.0 - 1)
    warnings = []
    if radii.max() + max_origin_px * apix > box * apix / 2:
        warnings.append(f"the model (radius {radii.max():.1f} Å) does not fit in the box "
                        f"({box * apix / 2:.1f} Å half-width): projections are cut at the edges")
    for w in warnings:
        print(f"gmmcore simulate: warning: {w}", file=sys.stderr)

    rng = np.random.default_rng(seed)
    truth = _draw_truth(n, box, apix, rng, defocus_range=defocus_range, astigmatism=astigmatism, voltage=voltage,
                        cs=cs, amp_contrast=amp_contrast, max_origin_px=max_origin_px,
                        perturb_angle_deg=perturb_angle_deg, perturb_shift_px=perturb_shift_px,
                        optics_groups=optics_groups, has_b=has_b, conformation=conformation)

    # The moving domain: each copy of each particle turns by its own angle (own random stream).
    local_rot = None
    dom_truth = {}
    if mdl["domain"] is not None:
        from scipy.spatial.transform import Rotation

        theta = np.random.default_rng([int(seed), 3]).uniform(-domain_angle_deg, domain_angle_deg, size=(n, K))
        theta[:, [k for k in range(K) if k not in mdl["domain"]["copies"]]] = 0.0  # copies that do not move
        local_rot = Rotation.from_rotvec((np.deg2rad(theta)[..., None] * mdl["domain"]["axis"]).reshape(-1, 3)) \
            .as_matrix().reshape(n, K, 3, 3)
        dom_truth = {"domain_angle_deg": theta, "domain_rotation_local": local_rot,
                     **domain_truth(mdl, truth["rotations"], truth["origins_A"], local_rot)}

    # Noise level from a calibration set (its own random stream; same distributions as the data).
    mask = particle_mask(box, mask_radius_px)
    cal_rng = np.random.default_rng([int(seed), 1])
    cal = _draw_truth(N_CALIBRATION, box, apix, cal_rng, defocus_range=defocus_range, astigmatism=astigmatism,
                      voltage=voltage, cs=cs, amp_contrast=amp_contrast, max_origin_px=max_origin_px,
                      perturb_angle_deg=0.0, perturb_shift_px=0.0, optics_groups=optics_groups, has_b=has_b,
                      conformation=conformation)
    cal_imgs = clean_particles(mdl, cal["rotations"], cal["origins_A"], cal["ctf"], apix, box,
                               cal["conformation"] if has_b else None)
    sig_var = float(signal_variance(cal_imgs, mask).mean())
    del cal_imgs
    noise_sigma = 0.0 if snr is None else math.sqrt(sig_var / float(snr))

    # Particles, streamed.
    if chunk is None:
        chunk = int(np.clip(2 ** 22 // (box * box), 16, 1024))  # ≈ 16 MB of float32 per chunk
    noise_rng = np.random.default_rng([int(seed), 2])
    stack_path = out_dir / STACK_NAME
    bar = progress(total=n, desc="simulate", unit="particle") if show_progress else None
    with StackWriter(stack_path, box=box, apix=apix) as writer:  # append mode: no memory map
        for i0 in range(0, n, chunk):
            sl = slice(i0, min(n, i0 + chunk))
            imgs = clean_particles(mdl, truth["rotations"][sl], truth["origins_A"][sl], truth["ctf"].subset(sl),
                                   apix, box, truth["conformation"][sl] if has_b else None,
                                   None if local_rot is None else local_rot[sl])
            if noise_sigma > 0:
                imgs += (noise_sigma * noise_rng.standard_normal(imgs.shape)).astype(np.float32)
            writer.append(imgs)
            if bar is not None:
                bar.update(len(imgs))
    if bar is not None:
        bar.close()

    # Maps.
    map_t = 0.0 if (not has_b or conformation is None) else float(conformation)
    write_map(out_dir / TRUE_MAP, render_map(model_gmm(mdl, map_t), box, apix), apix)
    map_b = None
    if has_b and conformation is None:
        map_b = out_dir / TRUE_MAP_B
        write_map(map_b, render_map(model_gmm(mdl, 1.0), box, apix), apix)

    masks = _write_masks(mdl, out_dir, box, apix, domain_angle_deg, map_t)

    # Star files.
    true_tab = _table(truth, truth["rotations"], truth["origins_A"], apix, box, STACK_NAME, out_dir)
    pert_tab = _table(truth, truth["rotations_perturbed"], truth["origins_perturbed_A"], apix, box, STACK_NAME,
                      out_dir)
    write_star(true_tab, out_dir / TRUE_STAR)
    write_star(pert_tab, out_dir / PERTURBED_STAR)

    # Truth and parameters.
    ctf = truth["ctf"]
    with atomic_path(out_dir / TRUTH) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, rotations=truth["rotations"], origins_A=truth["origins_A"],
                     conformation=truth["conformation"], rotations_perturbed=truth["rotations_perturbed"],
                     origins_perturbed_A=truth["origins_perturbed_A"], half=truth["half"],
                     optics_group=truth["optics_group"], defocus_u=ctf.defocus_u, defocus_v=ctf.defocus_v,
                     defocus_angle=ctf.defocus_angle, cs=ctf.cs, amp_contrast=ctf.amp_contrast,
                     **({"copy_rotations": mdl["copy_ops"], "copy_offset_A": mdl["copy_offset"]} if K > 1 else {}),
                     **dom_truth)
    params = {
        "model": str(model), "model_b": None if model_b is None else str(model_b),
        "conformation": conformation, "n_particles": n, "box": box, "apix": apix, "snr": snr,
        "defocus_range": [float(defocus_range[0]), float(defocus_range[1])], "astigmatism": float(astigmatism),
        "voltage": float(voltage), "cs": float(cs), "amp_contrast": float(amp_contrast),
        "b_factor": float(b_factor), "atom_sigma_A": float(atom_sigma_A), "perturb_angle_deg": float(perturb_angle_deg),
        "perturb_shift_px": float(perturb_shift_px), "max_origin_px": float(max_origin_px), "seed": int(seed),
        "optics_groups": int(optics_groups), "copies": copies, "copy_offset_A": copy_offset_A,
        "domain": domain, "domain_angle_deg": float(domain_angle_deg) if domain is not None else None,
    }
    summary = {
        "gmmcore_version": __version__, "params": params,
        "n_atoms": int(len(mdl["amplitudes"])), "gaussian_sigma_A": sigma_A,
        "center_of_mass_A": mdl["center_of_mass_A"],
        "center_of_mass_b_A": mdl["center_of_mass_b_A"],
        "noise_sigma": noise_sigma, "signal_variance": sig_var, "mask_radius_px": float(mask_radius_px),
        "snr_definition": "variance of the CTF-corrupted signal inside a disc of mask_radius_px about the box "
                          "centre / noise variance",
        "per_half": {"1": int((truth["half"] == 1).sum()), "2": int((truth["half"] == 2).sum())},
        "per_optics_group": {str(g): int((truth["optics_group"] == g).sum()) for g in range(1, optics_groups + 1)},
        "phase_flipped": False, "warnings": warnings,
        "n_copies": K, "copy_offset_used_A": [float(v) for v in mdl["copy_offset"]],
        "domain": None if mdl["domain"] is None else {
            "name": mdl["domain"]["name"], "residues": mdl["domain"]["ranges"],
            "moving_copies": [k + 1 for k in mdl["domain"]["copies"]], "n_atoms": int(mdl["domain"]["atoms"].sum()),
            "hinge_A": [float(v) for v in mdl["domain"]["hinge"]], "axis": [float(v) for v in mdl["domain"]["axis"]],
            "angle_distribution": f"uniform in [-{float(domain_angle_deg)}, {float(domain_angle_deg)}] degrees, "
                                  "per particle and copy"},
        "files": {"stack": STACK_NAME, "true_star": TRUE_STAR, "perturbed_star": PERTURBED_STAR,
                  "true_map": TRUE_MAP, "true_map_b": None if map_b is None else TRUE_MAP_B, "truth": TRUTH,
                  **{k: v.name for k, v in masks.items()}},
        "seconds": round(time.time() - t_start, 3),
    }
    write_json(out_dir / JSON, summary)

    return {
        "out_dir": out_dir, "stack": stack_path, "true_star": out_dir / TRUE_STAR,
        "perturbed_star": out_dir / PERTURBED_STAR, "true_map": out_dir / TRUE_MAP, "true_map_b": map_b,
        "truth": out_dir / TRUTH, "json": out_dir / JSON, "n_particles": n, "box": box, "apix": apix,
        "snr": snr, "noise_sigma": noise_sigma, "signal_variance": sig_var, "mask_radius_px": float(mask_radius_px),
        "rotations": truth["rotations"], "origins_A": truth["origins_A"],
        "rotations_perturbed": truth["rotations_perturbed"], "origins_perturbed_A": truth["origins_perturbed_A"],
        "conformation": truth["conformation"], "half": truth["half"], "optics_group": truth["optics_group"],
        "ctf": truth["ctf"], "seed": int(seed), "model": mdl, **dom_truth, **masks,
    }


def _write_masks(mdl: dict, out_dir: Path, box: int, apix: float, angle_deg: float, t: float) -> dict:
    """``domain_mask.mrc`` (copy 0's domain over its range of motion) and, with copies,
    ``unit_mask.mrc`` (all of copy 0): voxels within 4 Å of those atoms and no nearer to any other
    atom of the (unmoved) particle, then a 3-pixel raised-cosine edge."""
    from scipy.spatial.transform import Rotation

    from .io.maps import write_map
    from .masks import points_mask

    out = {}
    x = morph(mdl["coords_a"], mdl["coords_b"], t) + mdl["copy_offset"]
    ops = mdl["copy_ops"]
    dom = mdl["domain"]
    moved = []
    if dom is not None:
        k0 = dom["copies"][0]
        p = dom["hinge"] + mdl["copy_offset"]
        for a in np.linspace(-angle_deg, angle_deg, 5):
            R = Rotation.from_rotvec(np.deg2rad(a) * dom["axis"]).as_matrix()
            moved.append((p + (x[dom["atoms"]] - p) @ R.T) @ ops[k0].T)
        out["domain_mask"] = out_dir / DOMAIN_MASK
        rest = np.concatenate([x[~dom["atoms"]] @ S.T for S in ops] +
                              [x[dom["atoms"]] @ S.T for k, S in enumerate(ops) if k != k0])
        write_map(out["domain_mask"], points_mask(np.concatenate(moved), box, apix, 4.0, 3.0,
                                                  exclude_A=rest if len(rest) else None), apix)
        moved = moved if k0 == 0 else []
    if _n_copies(mdl) > 1:
        out["unit_mask"] = out_dir / UNIT_MASK
        others = np.concatenate([x @ S.T for S in mdl["copy_ops"][1:]])
        write_map(out["unit_mask"], points_mask(np.concatenate([x] + moved), box, apix, 4.0, 3.0, exclude_A=others),
                  apix)
    return out


def _validate(n, box, apix, snr, defocus_range, astigmatism, optics_groups, conformation, model_b,
              perturb_angle_deg, perturb_shift_px, max_origin_px) -> None:
    if n < 1:
        raise InputError(f"the number of particles must be ≥ 1 (got {n})", field="n")
    if box < 16:
        raise InputError(f"the box must be at least 16 pixels (got {box})", field="box")
    if not apix > 0:
        raise InputError(f"the pixel size must be > 0 (got {apix})", field="apix")
    if snr is not None and not snr > 0:
        raise InputError(f"the SNR must be > 0 (got {snr})", field="snr")
    lo, hi = defocus_range
    if not (0 <= lo <= hi):
        raise InputError(f"bad defocus range {lo}..{hi} Å (need 0 ≤ min ≤ max)", field="defocus")
    if not 0 <= astigmatism <= 2 * lo:
        raise InputError(f"astigmatism must be in [0, 2·defocus_min] (got {astigmatism} Å)", field="astigmatism")
    if optics_groups < 1:
        raise InputError(f"optics groups must be ≥ 1 (got {optics_groups})", field="optics_groups")
    if conformation is not None and not 0.0 <= float(conformation) <= 1.0:
        raise InputError(f"the conformation must be in [0, 1] (got {conformation})", field="conformation")
    for name, v in (("perturb_angle", perturb_angle_deg), ("perturb_shift", perturb_shift_px),
                    ("max_origin", max_origin_px)):
        if v < 0:
            raise InputError(f"{name} must be ≥ 0 (got {v})", field=name)


# --------------------------------------------------------------------------------------------
# command line
