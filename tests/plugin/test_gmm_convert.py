"""Scipion <-> star conversion, checked against the relion plugin's convert31 for the same
particles (the reference for Scipion's ALIGN_PROJ convention)."""
import os

import numpy as np
import pytest

from pwem.constants import ALIGN_PROJ
from pwem.objects import SetOfParticles

import gmm_fakes
from gmmcore.io.star import read_star_blocks
from gmmrefine_scipion import convert as gconv
from gmmrefine_scipion.constants import HALF_SET_ATTR


def _new_set(path):
    if os.path.exists(path):
        os.remove(path)
    return SetOfParticles(filename=path)


def _particles_block(star):
    """The data_particles loop of a star file as a DataFrame."""
    return read_star_blocks(star)[0]["particles"]


def _matrices(partSet):
    return {p.getObjId(): p.getTransform().getMatrix().copy() for p in partSet.iterItems(orderBy="id")}


def test_euler_roundtrip():
    rng = np.random.default_rng(3)
    for _ in range(200):
        rot, tilt, psi = rng.uniform(-180, 180), rng.uniform(0.5, 179.5), rng.uniform(-180, 180)
        A = gconv.euler_to_matrix(rot, tilt, psi)
        assert np.allclose(A @ A.T, np.eye(3), atol=1e-12)
        r2, t2, p2 = gconv.matrix_to_euler(A)
        assert np.allclose([r2, t2, p2], [rot, tilt, psi], atol=1e-7)
    # degenerate tilts keep the matrix
    for tilt in (0.0, 180.0):
        A = gconv.euler_to_matrix(30.0, tilt, 50.0)
        assert np.allclose(gconv.euler_to_matrix(*gconv.matrix_to_euler(A)), A, atol=1e-9)


def test_matrix_matches_pwem_transformations():
    """Our Scipion matrix is inv(euler_matrix(-rot,-tilt,-psi,'szyz') with M[:3,3] = -origin)."""
    import pwem.convert.transformations as tfs
    rng = np.random.default_rng(4)
    for _ in range(50):
        ang = rng.uniform([-180, 0, -180], [180, 180, 180])
        origin = rng.uniform(-5, 5, 3)
        M = tfs.euler_matrix(*(-np.deg2rad(ang)), axes="szyz")
        M[:3, 3] = -origin
        assert np.allclose(gconv.relion_to_scipion_matrix(*ang, origin), np.linalg.inv(M), atol=1e-10)


@pytest.mark.parametrize("version", ["31", "30"])
def test_read_star_matches_relion_reader(tmp_path, version):
    from relion.convert import readSetOfParticles as relionRead
    star, truth = gmm_fakes.write_star_stack(str(tmp_path / "data"), version=version)
    ours = _new_set(str(tmp_path / "ours.sqlite"))
    gconv.read_particles_star(star, ours, alignType=ALIGN_PROJ)
    theirs = _new_set(str(tmp_path / "relion.sqlite"))
    kwargs = {"format": "30", "pixelSize": 2.0} if version == "30" else {}
    if version == "30":
        from pwem.objects import Acquisition
        theirs.setAcquisition(Acquisition(voltage=300, sphericalAberration=2.7, amplitudeContrast=0.1))
        kwargs["readAcquisition"] = False
    relionRead(star, theirs, alignType=ALIGN_PROJ, **kwargs)

    assert ours.getSize() == theirs.getSize() == len(truth["rot"])
    assert ours.getSamplingRate() == pytest.approx(2.0)
    assert ours.getAlignment() == ALIGN_PROJ and ours.hasCTF()
    assert [p.getObjId() for p in ours.iterItems(orderBy="id")] == list(range(1, ours.getSize() + 1))
    for a, b in zip(ours.iterItems(orderBy="id"), theirs.iterItems(orderBy="id")):
        assert np.allclose(a.getTransform().getMatrix(), b.getTransform().getMatrix(), atol=1e-5)
        assert a.getCTF().getDefocusU() == pytest.approx(b.getCTF().getDefocusU())
        assert a.getCTF().getDefocusV() == pytest.approx(b.getCTF().getDefocusV())
        assert a.getCTF().getDefocusAngle() == pytest.approx(b.getCTF().getDefocusAngle(), abs=1e-3)
        assert a.getIndex() == b.getIndex()
        # (relion's 3.0 reader drops rlnRandomSubset; compare with the truth)
        assert int(a.getAttributeValue(HALF_SET_ATTR)) == truth["half"][a.getObjId() - 1]
    acq = ours.getAcquisition()
    assert (acq.getVoltage(), acq.getSphericalAberration(), acq.getAmplitudeContrast()) == (300.0, 2.7, 0.1)


def test_write_star_matches_relion_writer(tmp_path, monkeypatch):
    """Read with relion's reader, write with both writers: same angles (as matrices), origins,
    CTF, half sets; and our file round-trips through relion's reader."""
    from relion.convert import readSetOfParticles as relionRead
    from relion.convert import writeSetOfParticles as relionWrite
    star, truth = gmm_fakes.write_star_stack(str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path / "data")  # relion keeps image paths as written: relative to cwd
    parts = _new_set(str(tmp_path / "in.sqlite"))
    relionRead(star, parts, alignType=ALIGN_PROJ)

    ours_star = str(tmp_path / "ours.star")
    relion_star = str(tmp_path / "relion.star")
    n = gconv.write_particles_star(parts, ours_star, requireHalfSets=True)
    relionWrite(parts, relion_star)
    assert n == parts.getSize()
    a = _particles_block(ours_star)
    b = _particles_block(relion_star)
    for i in range(n):
        Aa = gconv.euler_to_matrix(*(a.loc[i, k] for k in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))
        Ab = gconv.euler_to_matrix(*(b.loc[i, k] for k in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))
        assert np.allclose(Aa, Ab, atol=1e-5)
        assert np.allclose(Aa, gconv.euler_to_matrix(truth["rot"][i], truth["tilt"][i], truth["psi"][i]), atol=1e-5)
    for label in ("rlnOriginXAngst", "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnRandomSubset"):
        assert np.allclose(a[label].to_numpy(float), b[label].to_numpy(float), atol=1e-4), label
    assert np.allclose(a["rlnOriginXAngst"].to_numpy(float), truth["ox_A"], atol=1e-4)
    # our star back through relion's reader: same matrices as the input set
    back = _new_set(str(tmp_path / "back.sqlite"))
    relionRead(ours_star, back, alignType=ALIGN_PROJ)
    m0, m1 = _matrices(parts), _matrices(back)
    assert m0.keys() == m1.keys()
    for k in m0:
        assert np.allclose(m0[k], m1[k], atol=1e-5)
    # image paths are absolute and exist
    idx, fn = gconv.relion_to_location(a.loc[0, "rlnImageName"])
    assert os.path.isabs(fn) and os.path.exists(fn) and idx == 1


def test_half_set_required(tmp_path):
    star, _ = gmm_fakes.write_star_stack(str(tmp_path / "data"), halves=False)
    parts = _new_set(str(tmp_path / "in.sqlite"))
    gconv.read_particles_star(star, parts)
    assert gconv.count_half_sets(parts) == {1: 0, 2: 0, None: parts.getSize()}
    with pytest.raises(ValueError):
        gconv.write_particles_star(parts, str(tmp_path / "x.star"), requireHalfSets=True)
    gconv.write_particles_star(parts, str(tmp_path / "x.star"))
    assert "rlnRandomSubset" not in _particles_block(str(tmp_path / "x.star")).columns


def test_refined_alignment_by_id(tmp_path):
    star, truth = gmm_fakes.write_star_stack(str(tmp_path / "data"))
    parts = _new_set(str(tmp_path / "in.sqlite"))
    gconv.read_particles_star(star, parts)
    out = str(tmp_path / "w.star")
    gconv.write_particles_star(parts, out)
    table, by_id = gconv.read_refined_alignment(out)
    assert by_id and len(table) == parts.getSize()
    for p in parts.iterItems():
        M, half, _ = table[p.getObjId()]
        assert np.allclose(M, p.getTransform().getMatrix(), atol=1e-5)
        assert half == int(p.getAttributeValue(HALF_SET_ATTR))


def test_pose_errors_per_particle(tmp_path):
    """convert.pose_errors (set or star vs a truth star, by image index) = the angle between the
    two files' rotations and the distance between their origins, particle by particle."""
    from gmmcore.geometry import angular_distance, euler_to_matrix
    star, truth = gmm_fakes.write_star_stack(str(tmp_path / "a"), seed=0)
    other, truth2 = gmm_fakes.write_star_stack(str(tmp_path / "b"), seed=1)
    parts = _new_set(str(tmp_path / "in.sqlite"))
    gconv.read_particles_star(star, parts)
    A = euler_to_matrix(truth["rot"], truth["tilt"], truth["psi"])
    B = euler_to_matrix(truth2["rot"], truth2["tilt"], truth2["psi"])
    expected_ang = angular_distance(A, B)
    expected_sh = np.hypot(truth["ox_A"] - truth2["ox_A"], truth["oy_A"] - truth2["oy_A"]) / 2.0
    for source in (parts, star):
        ang, sh = gconv.pose_errors(source, other)
        assert np.allclose(ang, expected_ang, atol=1e-3) and np.allclose(sh, expected_sh, atol=1e-4)
        ang, sh = gconv.pose_errors(source, star)
        assert ang.max() < 1e-3 and sh.max() < 1e-4
