"""Scipion SetOfParticles <-> RELION 3.1 star files, as gmmcore reads and writes them.

Conventions (docs/ARCHITECTURE.md, ../shared/DESIGN.md section 2):

* RELION's rotation matrix is A = Rz(psi)·Ry(tilt)·Rz(rot) in RELION's Euler_angles2matrix form;
  rlnOriginX/YAngst put the particle centre at box centre - origin.
* Scipion stores an ALIGN_PROJ particle transform T as the inverse of
  M = euler_matrix(-rot, -tilt, -psi, 'szyz') with M[:3, 3] = -origin_px.  The rotation block of M
  is RELION's A, so T = [[A^T, A^T·o], [0, 1]] (o = origin in pixels) and, back,
  A = T[:3,:3]^T, o = A·T[:3,3].
* Half sets live on every particle as ``_rlnRandomSubset`` (1 / 2), the attribute name the relion
  plugin uses, so star files written by either plugin keep the split.

Only numpy and the star/mrc libraries are used here: the engine (gmmcore) may live in another
environment, so this module does not import it.
"""
import math
import os
from collections import OrderedDict

import numpy as np

from pwem.constants import ALIGN_NONE, ALIGN_PROJ
from pwem.objects import Acquisition, Coordinate, CTFModel, Particle, Transform
from pyworkflow.object import Integer

from .constants import HALF_SET_ATTR, OPTICS_GROUP_ATTR

_EPS = 16 * np.finfo(np.float32).eps

# Extensions gmmcore (mrcfile) reads directly; anything else is converted to .mrcs first.
MRC_EXTENSIONS = (".mrc", ".mrcs", ".st", ".map")


# ------------------------------------------------------------------------------------------------
# Euler angles (RELION) <-> matrices
# ------------------------------------------------------------------------------------------------
def euler_to_matrix(rot, tilt, psi):
    """RELION's A for angles in degrees (Euler_angles2matrix)."""
    a, b, g = (math.radians(v) for v in (rot, tilt, psi))
    ca, sa, cb, sb, cg, sg = math.cos(a), math.sin(a), math.cos(b), math.sin(b), math.cos(g), math.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array([[cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
                     [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
                     [sc, ss, cb]])


def matrix_to_euler(A):
    """(rot, tilt, psi) in degrees from RELION's A (Euler_matrix2angles; tilt in [0, 180])."""
    A = np.asarray(A, dtype=float)
    abs_sb = math.hypot(A[0, 2], A[1, 2])
    if abs_sb > _EPS:
        psi = math.atan2(A[1, 2], -A[0, 2])
        rot = math.atan2(A[2, 1], A[2, 0])
        if abs(math.sin(psi)) < _EPS:
            sign_sb = np.sign(-A[0, 2] / math.cos(psi))
        else:
            sign_sb = np.sign(A[1, 2]) if math.sin(psi) > 0 else -np.sign(A[1, 2])
        tilt = math.atan2(sign_sb * abs_sb, A[2, 2])
    elif A[2, 2] > 0:
        rot, tilt, psi = 0.0, 0.0, math.atan2(-A[1, 0], A[0, 0])
    else:
        rot, tilt, psi = 0.0, math.pi, math.atan2(A[1, 0], -A[0, 0])
    return math.degrees(rot), math.degrees(tilt), math.degrees(psi)


def relion_to_scipion_matrix(rot, tilt, psi, origin_px):
    """Scipion ALIGN_PROJ 4x4 matrix from RELION angles (deg) and origin (pixels, x y [z])."""
    A = euler_to_matrix(rot, tilt, psi)
    o = np.zeros(3)
    o[:len(origin_px)] = origin_px
    T = np.eye(4)
    T[:3, :3] = A.T
    T[:3, 3] = A.T @ o
    return T


def scipion_matrix_to_relion(T):
    """(rot, tilt, psi) degrees and origin (pixels, 3 values) from a Scipion ALIGN_PROJ matrix."""
    T = np.asarray(T, dtype=float)
    A = T[:3, :3].T
    origin = A @ T[:3, 3]
    return matrix_to_euler(A), origin


# ------------------------------------------------------------------------------------------------
# Locations
# ------------------------------------------------------------------------------------------------
def location_to_relion(index, filename):
    """Scipion (index, file) -> RELION 'index@file' (Scipion index 0 = single image -> 1)."""
    filename = strip_format_suffix(filename)
    return "%06d@%s" % (max(int(index or 0), 1), filename)


def relion_to_location(name):
    """RELION 'index@file' -> (index, file); a bare file name is image 1."""
    if "@" in name:
        idx, fn = name.split("@", 1)
        return int(idx), fn
    return 1, name


def strip_format_suffix(filename):
    """Scipion may append ':mrc' / ':mrcs' to force a reader; files on disk do not have it."""
    base, sep, suffix = filename.rpartition(":")
    if sep and suffix in ("mrc", "mrcs", "spi", "stk", "img", "hed", "tif", "tiff") and base:
        return base
    return filename


def resolve_path(path, *roots):
    """First existing path among ``path`` (if absolute) or ``root/path``; else ``roots[0]/path``."""
    if os.path.isabs(path):
        return path
    for root in roots:
        candidate = os.path.join(root, path)
        if os.path.exists(candidate):
            return os.path.normpath(candidate)
    return os.path.normpath(os.path.join(roots[0], path)) if roots else path


def project_relative(path, cwd=None):
    """Path relative to ``cwd`` (Scipion's project folder when a protocol runs) when inside it."""
    cwd = os.path.abspath(cwd or os.getcwd())
    apath = os.path.abspath(path)
    if apath == cwd or apath.startswith(cwd + os.sep):
        return os.path.relpath(apath, cwd)
    return apath


# ------------------------------------------------------------------------------------------------
# Star file text (small, dependency-free writer; starfile reads)
# ------------------------------------------------------------------------------------------------
def _fmt(value):
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "%.6f" % value
    text = str(value)
    if text == "" or any(c.isspace() for c in text):
        return '"%s"' % text
    return text


def write_star_blocks(path, blocks, version="30001"):
    """Write ``{block_name: list-of-OrderedDict rows}`` as loop_ blocks (RELION 3.1 layout)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("# Star file written by the gmmrefine Scipion plugin\n")
        for name, rows in blocks.items():
            if not rows:
                continue
            labels = list(rows[0].keys())
            f.write("\n# version %s\n\ndata_%s\n\nloop_\n" % (version, name))
            for i, label in enumerate(labels, 1):
                f.write("_%s #%d\n" % (label, i))
            for row in rows:
                f.write(" ".join(_fmt(row[label]) for label in labels))
                f.write("\n")
            f.write("\n")
    os.replace(tmp, path)


def read_star_tables(path):
    """Read a star file into ``{block: pandas.DataFrame}`` (block names without 'data_')."""
    import starfile
    data = starfile.read(path, always_dict=True)
    return {str(k): v for k, v in data.items()}


# ------------------------------------------------------------------------------------------------
# Scipion -> star
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


def count_half_sets(particles):
    """{1: n1, 2: n2, None: n_without} over a set (iterates once)."""
    counts = {1: 0, 2: 0, None: 0}
    for p in particles.iterItems():
        counts[get_half_set(p)] += 1
    return counts


def write_particles_star(partSet, starFile, stackDir=None, writeAlignment=True,
                         requireHalfSets=False, writeHalfSets=True, phaseFlipped=None):
    """Write a SetOfParticles as a RELION 3.1 star file for gmmcore.

    Image paths are written absolute (Scipion's are relative to the project folder).  Images in a
    format other than MRC are converted into ``stackDir`` (required then) first.
    Returns the number of particles written.
    """
    apix = float(partSet.getSamplingRate())
    box = int(partSet.getXDim() or partSet.getFirstItem().getXDim())
    acq = partSet.getAcquisition()
    flipped = partSet.isPhaseFlipped() if phaseFlipped is None else phaseFlipped
    alignment = partSet.getAlignment() if writeAlignment else ALIGN_NONE
    if alignment not in (ALIGN_PROJ, ALIGN_NONE):
        raise ValueError("Particles have alignment %s; gmmcore needs projection alignment "
                         "(3D angles) or none." % alignment)

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

    rows, groups = [], OrderedDict()
    for part in partSet.iterItems(orderBy="id"):
        index, fn = part.getLocation()
        og = _optics_group_of(part)
        groups.setdefault(og, None)
        row = OrderedDict()
        row["rlnImageName"] = location_to_relion(index, image_file(fn))
        row["rlnImageId"] = part.getObjId()
        row["rlnOpticsGroup"] = og
        coord = part.getCoordinate()
        if coord is not None and coord.getX() is not None:
            row["rlnCoordinateX"] = float(coord.getX())
            row["rlnCoordinateY"] = float(coord.getY())
            row["rlnMicrographName"] = str(coord.getMicName() or coord.getMicId() or "mic")
        if part.hasCTF():
            ctf = part.getCTF()
            row["rlnDefocusU"] = float(ctf.getDefocusU())
            row["rlnDefocusV"] = float(ctf.getDefocusV())
            row["rlnDefocusAngle"] = float(ctf.getDefocusAngle())
            row["rlnPhaseShift"] = float(ctf.getPhaseShift() or 0.0)
        if alignment == ALIGN_PROJ:
            (rot, tilt, psi), origin = scipion_matrix_to_relion(part.getTransform().getMatrix())
            row["rlnAngleRot"], row["rlnAngleTilt"], row["rlnAnglePsi"] = rot, tilt, psi
            row["rlnOriginXAngst"] = origin[0] * apix
            row["rlnOriginYAngst"] = origin[1] * apix
        half = get_half_set(part) if writeHalfSets else None
        if half is None and requireHalfSets:
            raise ValueError("Particle %s has no half set (%s)." % (part.getObjId(), HALF_SET_ATTR))
        if half is not None:
            row["rlnRandomSubset"] = half
        rows.append(row)
    if not rows:
        raise ValueError("The input set has no particles.")
    # every row must have the same labels (a half set on only some particles is an error upstream)
    labels = list(rows[0].keys())
    for row in rows:
        if list(row.keys()) != labels:
            missing = set(labels) ^ set(row.keys())
            raise ValueError("Particle %s differs from the first in labels %s."
                             % (row["rlnImageId"], sorted(missing)))

    optics = []
    for og in groups:
        optics.append(OrderedDict([
            ("rlnOpticsGroupName", "opticsGroup%d" % og),
            ("rlnOpticsGroup", og),
            ("rlnMicrographOriginalPixelSize", apix),
            ("rlnVoltage", float(acq.getVoltage() or 300.0)),
            ("rlnSphericalAberration", float(acq.getSphericalAberration() or 2.7)),
            ("rlnAmplitudeContrast", float(acq.getAmplitudeContrast() or 0.1)),
            ("rlnImagePixelSize", apix),
            ("rlnImageSize", box),
            ("rlnImageDimensionality", 2),
            ("rlnCtfDataArePhaseFlipped", 1 if flipped else 0),
        ]))
    write_star_blocks(starFile, OrderedDict([("optics", optics), ("particles", rows)]))
    return len(rows)


# ------------------------------------------------------------------------------------------------
# star -> Scipion
# ------------------------------------------------------------------------------------------------
class StarParticles:
    """A RELION star file read into per-particle values Scipion needs (3.0 and 3.1+)."""

    def __init__(self, starFile):
        self.path = starFile
        tables = read_star_tables(starFile)
        if "particles" in tables:
            self.parts = tables["particles"]
            self.optics = tables.get("optics")
        else:  # RELION 3.0: one unnamed block (starfile names it '' or 'images')
            key = next(k for k, v in tables.items() if "rlnImageName" in getattr(v, "columns", []))
            self.parts, self.optics = tables[key], None
        if "rlnImageName" not in self.parts.columns:
            raise ValueError("%s: no rlnImageName column." % starFile)
        self.n = len(self.parts)

    def column(self, label, default=None):
        if label in self.parts.columns:
            return self.parts[label].to_numpy()
        return None if default is None else np.full(self.n, default)

    def optics_rows(self):
        """{group number: row(Series)}, empty for RELION 3.0."""
        if self.optics is None:
            return {}
        return {int(r["rlnOpticsGroup"]): r for _, r in self.optics.iterrows()}

    def pixel_size(self):
        ogs = self.optics_rows()
        if ogs:
            sizes = {float(r.get("rlnImagePixelSize", float("nan"))) for r in ogs.values()}
            sizes = {s for s in sizes if not math.isnan(s)}
            if len(sizes) > 1:
                raise ValueError("%s: optics groups have different pixel sizes %s; "
                                 "import them separately." % (self.path, sorted(sizes)))
            if sizes:
                return sizes.pop()
        for label in ("rlnImagePixelSize",):
            col = self.column(label)
            if col is not None:
                return float(col[0])
        det, mag = self.column("rlnDetectorPixelSize"), self.column("rlnMagnification")
        if det is not None and mag is not None:
            return float(det[0]) * 1e4 / float(mag[0])
        return None

    def origins_px(self, apix):
        """(n, 2) origins in pixels (RELION sign)."""
        x, y = self.column("rlnOriginXAngst"), self.column("rlnOriginYAngst")
        if x is not None and y is not None:
            return np.stack([x, y], 1).astype(float) / apix
        x, y = self.column("rlnOriginX", 0.0), self.column("rlnOriginY", 0.0)
        return np.stack([x, y], 1).astype(float)

    def has_angles(self):
        return self.column("rlnAngleRot") is not None or self.column("rlnAngleTilt") is not None

    def phase_flipped(self):
        ogs = self.optics_rows()
        return any(int(r.get("rlnCtfDataArePhaseFlipped", 0) or 0) for r in ogs.values())


def _fill_acquisition(acq, optics_row, defaults=None):
    defaults = defaults or {}

    def get(label, key, fallback):
        if optics_row is not None and label in optics_row and optics_row[label] == optics_row[label]:
            return float(optics_row[label])
        return float(defaults.get(key, fallback))

    acq.setVoltage(get("rlnVoltage", "voltage", 300.0))
    acq.setSphericalAberration(get("rlnSphericalAberration", "cs", 2.7))
    acq.setAmplitudeContrast(get("rlnAmplitudeContrast", "q0", 0.1))
    acq.setMagnification(float(defaults.get("magnification", 10000)))


def read_particles_star(starFile, partSet, alignType=ALIGN_PROJ, imageRoot=None,
                        phaseFlipped=None, acquisitionDefaults=None, pixelSize=None):
    """Fill an empty SetOfParticles from a star file (gmmcore import output or any RELION star).

    Image paths are resolved against ``imageRoot`` then the star file's folder, and stored
    relative to the current folder (the project) when inside it.  Sets sampling rate,
    acquisition (+ the optics table text, as the relion plugin keeps it), CTF, ALIGN_PROJ
    transforms, ``_rlnRandomSubset`` and ``_rlnOpticsGroup`` on every particle.
    """
    sp = StarParticles(starFile)
    apix = float(pixelSize or sp.pixel_size() or 0) or None
    if apix is None:
        raise ValueError("%s: no pixel size in the star file; give one." % starFile)
    starDir = os.path.dirname(os.path.abspath(starFile))
    roots = [r for r in (imageRoot, starDir, os.getcwd()) if r]

    ogs = sp.optics_rows()
    first_og = next(iter(ogs.values())) if ogs else None
    acq = Acquisition()
    _fill_acquisition(acq, first_og, acquisitionDefaults)
    partSet.setAcquisition(acq)
    if sp.optics is not None:
        partSet.getAcquisition().opticsGroupInfo.set(_optics_text(sp.optics))
    partSet.setSamplingRate(apix)
    partSet.setIsPhaseFlipped(sp.phase_flipped() if phaseFlipped is None else phaseFlipped)

    names = sp.column("rlnImageName")
    ids = sp.column("rlnImageId")
    ogcol = sp.column("rlnOpticsGroup", 1)
    halves = sp.column("rlnRandomSubset")
    du, dv, da = sp.column("rlnDefocusU"), sp.column("rlnDefocusV"), sp.column("rlnDefocusAngle")
    phase = sp.column("rlnPhaseShift")
    hasCtf = du is not None
    if hasCtf and dv is None:
        dv = du
    if hasCtf and da is None:
        da = np.zeros(sp.n)
    setAlign = alignType == ALIGN_PROJ and sp.has_angles()
    if setAlign:
        rot, tilt, psi = (sp.column(l, 0.0).astype(float) for l in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
        origins = sp.origins_px(apix)
    cx, cy, mic = sp.column("rlnCoordinateX"), sp.column("rlnCoordinateY"), sp.column("rlnMicrographName")

    resolved = {}
    part = Particle()
    for i in range(sp.n):
        part.cleanObjId()
        if ids is not None:
            part.setObjId(int(ids[i]))
        index, fn = relion_to_location(str(names[i]))
        if fn not in resolved:
            resolved[fn] = project_relative(resolve_path(fn, *roots))
        part.setLocation(index, resolved[fn])
        part.setSamplingRate(apix)
        setattr(part, OPTICS_GROUP_ATTR, Integer(int(ogcol[i])))
        if halves is not None:
            setattr(part, HALF_SET_ATTR, Integer(int(halves[i])))
        if hasCtf:
            ctf = CTFModel()
            ctf.setStandardDefocus(float(du[i]), float(dv[i]), float(da[i]))
            if phase is not None:
                ctf.setPhaseShift(float(phase[i]))
            part.setCTF(ctf)
        if setAlign:
            part.setTransform(Transform(relion_to_scipion_matrix(rot[i], tilt[i], psi[i], origins[i])))
        else:
            part.setTransform(None)
        if cx is not None and cy is not None:
            coord = Coordinate()
            coord.setPosition(int(round(float(cx[i]))), int(round(float(cy[i]))))
            if mic is not None:
                coord.setMicName(os.path.basename(str(mic[i])))
            part.setCoordinate(coord)
        partSet.append(part)

    partSet.setHasCTF(hasCtf)
    partSet.setAlignment(ALIGN_PROJ if setAlign else ALIGN_NONE)
    return sp.n


def _optics_text(optics_df):
    """Optics table as star text (stored in Acquisition.opticsGroupInfo like the relion plugin)."""
    rows = [OrderedDict((k, v.item() if hasattr(v, "item") else v) for k, v in r.items())
            for _, r in optics_df.iterrows()]
    import io
    import tempfile
    with tempfile.NamedTemporaryFile("r", suffix=".star", delete=False) as tmp:
        path = tmp.name
    try:
        write_star_blocks(path, OrderedDict([("optics", rows)]))
        with io.open(path) as f:
            return f.read()
    finally:
        os.remove(path)


def read_refined_alignment(starFile, apix=None):
    """{key: (4x4 Scipion matrix, half)} from a refined star file.

    Keys are rlnImageId when the file has it, else the row order (1-based) — gmmcore keeps the
    input order.  ``apix`` defaults to the file's pixel size.
    """
    sp = StarParticles(starFile)
    apix = float(apix or sp.pixel_size())
    rot, tilt, psi = (sp.column(l, 0.0).astype(float) for l in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
    origins = sp.origins_px(apix)
    ids = sp.column("rlnImageId")
    halves = sp.column("rlnRandomSubset")
    names = sp.column("rlnImageName")
    result = OrderedDict()
    for i in range(sp.n):
        key = int(ids[i]) if ids is not None else i + 1
        half = int(halves[i]) if halves is not None else None
        result[key] = (relion_to_scipion_matrix(rot[i], tilt[i], psi[i], origins[i]), half, str(names[i]))
    return result, ids is not None


def set_half(particle, half):
    setattr(particle, HALF_SET_ATTR, Integer(int(half)))


__all__ = [
    "euler_to_matrix", "matrix_to_euler", "relion_to_scipion_matrix", "scipion_matrix_to_relion",
    "location_to_relion", "relion_to_location", "write_particles_star", "read_particles_star",
    "read_refined_alignment", "count_half_sets", "get_half_set", "set_half", "StarParticles",
]
