"""Scipion SetOfParticles <-> RELION 3.1 star files, as gmmcore reads and writes them.

Conventions (docs/ARCHITECTURE.md, ../shared/DESIGN.md section 2):

* RELION's rotation matrix is A = Rz(psi)·Ry(tilt)·Rz(rot) in RELION's Euler_angles2matrix form;
  rlnOriginX/YAngst put the particle centre at box centre - origin.
* Scipion stores an ALIGN_PROJ particle transform T as the inverse of
  M = euler_matrix(-rot, -tilt, -psi, 'szyz') with M[:3, 3] = -origin_px.  The rotation block of M
  is RELION's A, so T = [[A^T, A^T·o], [0, 1]] (o = origin in pixels) and, back,
  A = T[:3,:3]^T, o = A·T[:3,3]  (relion plugin, convert31).
* Half sets live on every particle as ``_rlnRandomSubset`` (1 / 2), the attribute name the relion
  plugin uses, so star files written by either plugin keep the split.

The star files themselves, image names and Euler angles are gmmcore's (``gmmcore.io.star``,
``gmmcore.io.stacks``, ``gmmcore.geometry``): those modules need only numpy/scipy/pandas/
starfile/mrcfile, never TensorFlow, so they are safe in Scipion's process.  This module holds only
the Scipion side: transform matrices, locations, CTFModel, acquisition, half-set attribute.
"""
import os
from collections import OrderedDict

import numpy as np
import pandas as pd

from pwem.constants import ALIGN_NONE, ALIGN_PROJ
from pwem.objects import Acquisition, Coordinate, CTFModel, Particle, Transform
from pyworkflow.object import Integer, String

from gmmcore.errors import InputError
from gmmcore.geometry import angular_distance, euler_to_matrix, matrix_to_euler  # noqa: F401 (re-exported)
from gmmcore.io.stacks import format_image_name, parse_image_name, resolve_stack_path
from gmmcore.io.star import read_star, write_star
from gmmcore.particles import CTFParams, ParticleTable

from .constants import (HALF_SET_ATTR, LATENT_ATTR, LATENT_PC1_ATTR, LATENT_PC2_ATTR, MICROGRAPH_ATTR,
                        OPTICS_GROUP_ATTR, ORIGINAL_IMAGE_ATTR)

# Extensions gmmcore (mrcfile) reads directly; anything else is converted to .mrcs first.
MRC_EXTENSIONS = (".mrc", ".mrcs", ".st", ".map")


# ------------------------------------------------------------------------------------------------
# RELION A + origin <-> Scipion ALIGN_PROJ matrices (vectorised over a leading axis)
# ------------------------------------------------------------------------------------------------
def scipion_matrices(A, origin_px):
    """Scipion ALIGN_PROJ 4x4 matrices T = [[Aᵀ, Aᵀ·o], [0, 1]] from RELION A (..., 3, 3) and
    origins o in pixels (..., 2 or 3)."""
    At = np.swapaxes(np.asarray(A, dtype=float), -1, -2)
    origin_px = np.asarray(origin_px, dtype=float)
    o = np.zeros(At.shape[:-2] + (3,))
    o[..., :origin_px.shape[-1]] = origin_px
    T = np.zeros(At.shape[:-2] + (4, 4))
    T[..., :3, :3] = At
    T[..., :3, 3] = np.einsum("...ij,...j->...i", At, o)
    T[..., 3, 3] = 1.0
    return T


def scipion_poses(T):
    """(A (..., 3, 3), origin in pixels (..., 3)) from Scipion ALIGN_PROJ matrices (..., 4, 4)."""
    T = np.asarray(T, dtype=float)
    A = np.swapaxes(T[..., :3, :3], -1, -2)
    return A, np.einsum("...ij,...j->...i", A, T[..., :3, 3])


def relion_to_scipion_matrix(rot, tilt, psi, origin_px):
    """Scipion ALIGN_PROJ 4x4 matrix from RELION angles (deg) and origin (pixels, x y [z])."""
    return scipion_matrices(euler_to_matrix(rot, tilt, psi), origin_px)


# ------------------------------------------------------------------------------------------------
# Locations: Scipion (index, file) with 1-based index, 0 = single image <-> RELION 'index@file'
# ------------------------------------------------------------------------------------------------
def location_to_relion(index, filename):
    """Scipion (index, file) -> RELION 'index@file' (Scipion index 0 = single image -> 1)."""
    return format_image_name(max(int(index or 0), 1) - 1, strip_format_suffix(filename))


def relion_to_location(name):
    """RELION 'index@file' -> Scipion (index, file); a bare file name is image 1."""
    index0, filename = parse_image_name(name)
    return index0 + 1, filename


def strip_format_suffix(filename):
    """Scipion may append ':mrc' / ':mrcs' to force a reader; files on disk do not have it."""
    base, sep, suffix = filename.rpartition(":")
    if sep and suffix in ("mrc", "mrcs", "spi", "stk", "img", "hed", "tif", "tiff") and base:
        return base
    return filename


def project_relative(path, cwd=None):
    """Path relative to ``cwd`` (Scipion's project folder when a protocol runs) when inside it."""
    cwd = os.path.abspath(cwd or os.getcwd())
    apath = os.path.abspath(path)
    if apath == cwd or apath.startswith(cwd + os.sep):
        return os.path.relpath(apath, cwd)
    return apath


# ------------------------------------------------------------------------------------------------
# Half sets and optics groups on particles
# ------------------------------------------------------------------------------------------------
def _optics_group_of(particle):
    value = particle.getAttributeValue(OPTICS_GROUP_ATTR, None)
    return int(value) if value else 1


def get_half_set(particle):
    """1 / 2 or None when the particle carries no split."""
    value = particle.getAttributeValue(HALF_SET_ATTR, None)
    if value in (None, ""):
        return None
    value = int(value)
    return value if value in (1, 2) else None


def set_half(particle, half):
    setattr(particle, HALF_SET_ATTR, Integer(int(half)))


def count_half_sets(particles):
    """{1: n1, 2: n2, None: n_without} over a set (iterates once)."""
    counts = {1: 0, 2: 0, None: 0}
    for p in particles.iterItems():
        counts[get_half_set(p)] += 1
    return counts


# ------------------------------------------------------------------------------------------------
# Latent coordinates (GmmProtHeterogeneity)
# ------------------------------------------------------------------------------------------------
def set_latent(particle, latent, pc1, pc2):
    """Store a particle's latent vector (``_gmmLatent``, CsvList of floats) and PC1/PC2."""
    from pyworkflow.object import CsvList, Float
    values = CsvList(pType=float)
    values.set([float(v) for v in latent])
    setattr(particle, LATENT_ATTR, values)
    setattr(particle, LATENT_PC1_ATTR, Float(float(pc1)))
    setattr(particle, LATENT_PC2_ATTR, Float(float(pc2)))


def get_latent(particle):
    """(latent vector as a list of floats, pc1, pc2) of a particle, or None."""
    values = getattr(particle, LATENT_ATTR, None)
    if values is None:
        return None
    pc1, pc2 = getattr(particle, LATENT_PC1_ATTR, None), getattr(particle, LATENT_PC2_ATTR, None)
    return ([float(v) for v in values], float(pc1.get()) if pc1 is not None else None,
            float(pc2.get()) if pc2 is not None else None)


def read_latents(latentsCsv, starFile):
    """{particle id: (latent vector, pc1, pc2)} from a heterogeneity run's latents.csv and the
    particle star it was made from (rows in the same order; ids from rlnImageId, else 1-based rows)."""
    from gmmcore.heter.latent import read_latents_csv
    lat = read_latents_csv(latentsCsv)
    table = read_star(starFile)
    if list(lat["rlnImageName"]) != [str(n) for n in table.image_name]:
        raise RuntimeError("%s does not list the particles of %s in order" % (latentsCsv, starFile))
    ids = _column(table, "rlnImageId")
    keys = [int(i) for i in ids] if ids is not None else list(range(1, len(table) + 1))
    return {k: (lat["latent"][i], lat["pc1"][i], lat["pc2"][i]) for i, k in enumerate(keys)}


# ------------------------------------------------------------------------------------------------
# Scipion -> star
# ------------------------------------------------------------------------------------------------
def write_particles_star(partSet, starFile, stackDir=None, requireHalfSets=False,
                         writeHalfSets=True, phaseFlipped=None):
    """Write a SetOfParticles (ALIGN_PROJ, with CTF) as a RELION 3.1 star file for gmmcore.

    Image paths are written absolute (Scipion's are relative to the project folder).  Images in a
    format other than MRC are converted into ``stackDir`` (required then) first.  The file is
    written by :func:`gmmcore.io.star.write_star`; besides gmmcore's columns it keeps
    rlnImageId (the particle id, to match the refined rows back), coordinates, micrograph names
    and each optics group's rlnMicrographOriginalPixelSize.  Returns the number of particles.
    """
    apix = float(partSet.getSamplingRate())
    box = int(partSet.getXDim() or partSet.getFirstItem().getXDim())
    acq = partSet.getAcquisition()
    flipped = partSet.isPhaseFlipped() if phaseFlipped is None else phaseFlipped
    # gmmcore's star always has poses and CTF (its reader requires them): refuse a set without.
    if partSet.getAlignment() != ALIGN_PROJ:
        raise ValueError("Particles have alignment %s; gmmcore needs projection alignment "
                         "(3D angles)." % partSet.getAlignment())

    converted = {}

    def image_file(fn):
        fn = strip_format_suffix(fn)
        if fn.lower().endswith(MRC_EXTENSIONS):
            return os.path.abspath(fn)
        if fn not in converted:
            if stackDir is None:
                raise ValueError("Image file %s is not MRC; give stackDir to convert it." % fn)
            from pwem.emlib.image import ImageHandler
            os.makedirs(stackDir, exist_ok=True)
            out = os.path.join(stackDir, "%s.mrcs" % os.path.splitext(os.path.basename(fn))[0])
            ImageHandler().convertStack(fn, out)
            converted[fn] = os.path.abspath(out)
        return converted[fn]

    rows, matrices = [], []
    for part in partSet.iterItems(orderBy="id"):
        index, fn = part.getLocation()
        row = OrderedDict([("rlnImageName", location_to_relion(index, image_file(fn))),
                           ("rlnImageId", part.getObjId()),
                           ("rlnOpticsGroup", _optics_group_of(part))])
        coord = part.getCoordinate()
        if coord is not None and coord.getX() is not None:
            row["rlnCoordinateX"] = float(coord.getX())
            row["rlnCoordinateY"] = float(coord.getY())
            row["rlnMicrographName"] = str(part.getAttributeValue(MICROGRAPH_ATTR, None)
                                           or coord.getMicName() or coord.getMicId() or "mic")
        original = part.getAttributeValue(ORIGINAL_IMAGE_ATTR, None)
        if original:
            row["rlnImageOriginalName"] = str(original)
        if not part.hasCTF():
            raise ValueError("Particle %s has no CTF; gmmcore needs one." % part.getObjId())
        ctf = part.getCTF()
        row["rlnDefocusU"] = float(ctf.getDefocusU())
        row["rlnDefocusV"] = float(ctf.getDefocusV())
        row["rlnDefocusAngle"] = float(ctf.getDefocusAngle())
        row["rlnPhaseShift"] = float(ctf.getPhaseShift() or 0.0)
        half = get_half_set(part) if writeHalfSets else None
        if half is None and requireHalfSets:
            raise ValueError("Particle %s has no half set (%s)." % (part.getObjId(), HALF_SET_ATTR))
        if half is not None:
            row["rlnRandomSubset"] = half
        rows.append(row)
        matrices.append(np.array(part.getTransform().getMatrix(), dtype=float))  # copy: the item is reused
    if not rows:
        raise ValueError("The input set has no particles.")
    # every row must have the same labels (a half set on only some particles is an error upstream)
    labels = list(rows[0].keys())
    for row in rows:
        if list(row.keys()) != labels:
            missing = set(labels) ^ set(row.keys())
            raise ValueError("Particle %s differs from the first in labels %s."
                             % (row["rlnImageId"], sorted(missing)))

    df = pd.DataFrame(rows, columns=labels)
    n = len(df)
    full = lambda v: np.full(n, float(v))  # noqa: E731
    A, origin_px = scipion_poses(np.asarray(matrices))
    groups = df["rlnOpticsGroup"].to_numpy(np.int32)
    ctf = CTFParams(defocus_u=df["rlnDefocusU"].to_numpy(float), defocus_v=df["rlnDefocusV"].to_numpy(float),
                    defocus_angle=df["rlnDefocusAngle"].to_numpy(float),
                    voltage=full(acq.getVoltage() or 300.0),
                    cs=full(acq.getSphericalAberration() or 2.7),
                    amp_contrast=full(acq.getAmplitudeContrast() or 0.1),
                    phase_shift=df["rlnPhaseShift"].to_numpy(float), bfactor=full(0.0))
    half = df["rlnRandomSubset"].to_numpy(np.int8) if "rlnRandomSubset" in df else np.zeros(n, np.int8)
    # optics extras gmmcore's writer passes through (it fills pixel size, size, voltage, ...)
    ogs = sorted(set(groups.tolist()))
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup%d" % g for g in ogs],
                           "rlnOpticsGroup": np.asarray(ogs, np.int64),
                           "rlnMicrographOriginalPixelSize": np.full(len(ogs), apix)})
    table = ParticleTable(
        image_name=df["rlnImageName"].to_numpy(object), rotation=A, origin=origin_px[:, :2] * apix,
        half=half, optics_group=groups, apix=full(apix), image_size=np.full(n, box, np.int32),
        ctf=ctf, phase_flipped=bool(flipped),
        star_particles=df,  # gmmcore's writer replaces its own columns in place, keeps the others
        star_optics=optics, source=starFile)
    write_star(table, starFile)
    return n


# ------------------------------------------------------------------------------------------------
# star -> Scipion
# ------------------------------------------------------------------------------------------------
def _column(table, label):
    """A pass-through particle column of a gmmcore ParticleTable read from a star, or None."""
    df = table.star_particles
    return df[label].to_numpy() if df is not None and label in df.columns else None


def _stack_path(path, table, imageRoot):
    """Absolute path of a stack named in the star (gmmcore's search), stored relative to the
    project when inside it.  A stack that is not found is kept under the image root / star folder
    as before (Scipion reports missing files itself when the set is used)."""
    star_dir = table.meta.get("star_dir")
    try:
        found = resolve_stack_path(path, star_dir, imageRoot, source=table.source)
    except InputError:
        found = path if os.path.isabs(path) else os.path.join(imageRoot or star_dir, path)
    return project_relative(found)


def _optics_text(optics_df):
    """Optics table as star text (kept in Acquisition.opticsGroupInfo like the relion plugin).

    gmmcore.io.star writes whole particle files only; one optics block as text is starfile's
    to_string, which the relion plugin's OpticsGroups.fromString reads."""
    import starfile
    return starfile.to_string({"optics": optics_df}, float_format="%.10g")


def read_particles_star(starFile, partSet, alignType=ALIGN_PROJ, imageRoot=None,
                        phaseFlipped=None, pixelSize=None, originalRoot=None, originalStackRoot=None):
    """Fill an empty SetOfParticles from a particle star file (RELION 3.0 / 3.1+; e.g. gmmcore
    import's output), read by :func:`gmmcore.io.star.read_star` (which needs angles and CTF).

    Image paths are resolved against ``imageRoot``, the star file's folder, the current folder
    (gmmcore's search) and stored relative to the current folder (the project) when inside it.
    ``pixelSize`` fills a missing pixel size.  Sets sampling rate, acquisition (+ the optics
    table text, as the relion plugin keeps it), CTF, ALIGN_PROJ transforms (unless ``alignType``
    is another), ``_rlnRandomSubset`` and ``_rlnOpticsGroup`` on every particle.  When the star
    has rlnImageOriginalName (gmmcore import's phase-flipped copy), each particle keeps its
    original image as ``_rlnImageOriginalName``, resolved against ``originalRoot`` (the folder of the
    file that was imported) where the stack exists; the full rlnMicrographName is kept too.
    """
    table = read_star(starFile, image_root=imageRoot, apix=pixelSize)
    n = len(table)
    sizes = sorted(set(np.round(table.apix, 6).tolist()))
    if len(sizes) > 1:
        raise ValueError("%s: optics groups have different pixel sizes %s; "
                         "import them separately." % (starFile, sizes))
    apix = float(table.apix[0]) if n else float(pixelSize or 0)

    acq = Acquisition()
    if n:
        acq.setVoltage(float(table.ctf.voltage[0]))
        acq.setSphericalAberration(float(table.ctf.cs[0]))
        acq.setAmplitudeContrast(float(table.ctf.amp_contrast[0]))
    acq.setMagnification(10000.0)
    partSet.setAcquisition(acq)
    if table.star_optics is not None:
        partSet.getAcquisition().opticsGroupInfo.set(_optics_text(table.star_optics))
    partSet.setSamplingRate(apix)
    partSet.setIsPhaseFlipped(table.phase_flipped if phaseFlipped is None else phaseFlipped)

    ids = _column(table, "rlnImageId")
    hasHalves = _column(table, "rlnRandomSubset") is not None
    cx, cy, mic = (_column(table, k) for k in ("rlnCoordinateX", "rlnCoordinateY", "rlnMicrographName"))
    originals = _original_images(table, originalRoot, originalStackRoot)
    setAlign = alignType == ALIGN_PROJ
    matrices = scipion_matrices(table.rotation, table.origin_px()) if setAlign else None

    resolved = {}
    part = Particle()
    for i in range(n):
        part.cleanObjId()
        if ids is not None:
            part.setObjId(int(ids[i]))
        index, fn = relion_to_location(table.image_name[i])
        if fn not in resolved:
            resolved[fn] = _stack_path(fn, table, imageRoot)
        part.setLocation(index, resolved[fn])
        part.setSamplingRate(apix)
        setattr(part, OPTICS_GROUP_ATTR, Integer(int(table.optics_group[i])))
        if hasHalves:
            set_half(part, table.half[i])
        ctf = CTFModel()
        ctf.setStandardDefocus(float(table.ctf.defocus_u[i]), float(table.ctf.defocus_v[i]),
                               float(table.ctf.defocus_angle[i]))
        ctf.setPhaseShift(float(table.ctf.phase_shift[i]))
        part.setCTF(ctf)
        part.setTransform(Transform(matrices[i]) if setAlign else None)
        if cx is not None and cy is not None:
            coord = Coordinate()
            coord.setPosition(int(round(float(cx[i]))), int(round(float(cy[i]))))
            if mic is not None:
                coord.setMicName(os.path.basename(str(mic[i])))
            part.setCoordinate(coord)
        if mic is not None:
            setattr(part, MICROGRAPH_ATTR, String(str(mic[i])))
        if originals is not None:
            setattr(part, ORIGINAL_IMAGE_ATTR, String(originals[i]))
        partSet.append(part)

    partSet.setHasCTF(True)
    partSet.setAlignment(ALIGN_PROJ if setAlign else ALIGN_NONE)
    return n


def _original_images(table, root, stackRoot=None):
    """rlnImageOriginalName of each row with its stack path made absolute (found from ``root``, the
    imported file's folder, where it exists), or None without that column."""
    names = _column(table, "rlnImageOriginalName")
    if names is None:
        return None
    out, found = [], {}
    for name in names:
        index, path = relion_to_location(str(name))
        if path not in found:
            try:
                found[path] = resolve_stack_path(path, star_dir=root, image_root=stackRoot)
            except InputError:
                found[path] = path  # not on this machine: kept as it was
        out.append(location_to_relion(index, found[path]))
    return out


def read_refined_alignment(starFile, apix=None):
    """({key: (4x4 Scipion matrix, half, image name)}, keyed_by_id) from a refined star file.

    Keys are rlnImageId when the file has it, else the row order (1-based) — gmmcore keeps the
    input order.  ``apix`` (the particles' pixel size) converts origins to pixels; default: the
    file's pixel size.
    """
    table = read_star(starFile)
    ids = _column(table, "rlnImageId")
    hasHalves = _column(table, "rlnRandomSubset") is not None
    origin_px = table.origin / (float(apix) if apix else table.apix[:, None])
    matrices = scipion_matrices(table.rotation, origin_px)
    result = OrderedDict()
    for i in range(len(table)):
        key = int(ids[i]) if ids is not None else i + 1
        half = int(table.half[i]) if hasHalves else None
        result[key] = (matrices[i], half, str(table.image_name[i]))
    return result, ids is not None


# ------------------------------------------------------------------------------------------------
# Poses against a simulation's truth (demo, tests)
# ------------------------------------------------------------------------------------------------
def pose_errors(poses, true_star):
    """Per-particle (angle error in degrees, shift error in pixels) of ``poses`` against the
    truth star of ``gmmcore simulate``, matched by image index (imports keep the simulated stack's
    order).  ``poses``: an ALIGN_PROJ SetOfParticles or a particle star file."""
    truth = read_star(true_star)
    if isinstance(poses, str):
        table = read_star(poses)
        index = np.array([parse_image_name(nm)[0] for nm in table.image_name], dtype=int)
        A, origin = table.rotation, table.origin / truth.apix[index, None]
    else:
        index, matrices = [], []
        for p in poses.iterItems():  # (iterItems reuses one Particle object: copy as we go)
            index.append(p.getIndex() - 1)
            matrices.append(np.array(p.getTransform().getMatrix(), dtype=float))
        index = np.asarray(index, dtype=int)
        A, origin = scipion_poses(np.asarray(matrices))
    angles = angular_distance(A, truth.rotation[index])
    shifts = np.hypot(*(origin[:, :2] - truth.origin_px()[index]).T)
    return angles, shifts


__all__ = [
    "euler_to_matrix", "matrix_to_euler", "scipion_matrices", "scipion_poses", "relion_to_scipion_matrix",
    "location_to_relion", "relion_to_location", "write_particles_star", "read_particles_star",
    "read_refined_alignment", "count_half_sets", "get_half_set", "set_half", "pose_errors",
]
