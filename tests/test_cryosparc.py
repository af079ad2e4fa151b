"""cryoSPARC .cs reading/writing, and agreement with the same particles written as a RELION star."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gmmcore.geometry import euler_to_matrix
from gmmcore.io.cryosparc import load_cs, read_cs, write_cs
from gmmcore.io.star import read_star, write_star
from tests.helpers import assert_same_rotations, cs_records, random_particles, save_cs, star31_text


def test_read_cs_matches_independent_construction(tmp_path):
    P = random_particles(n=20, seed=11, n_stack=3)
    f = save_cs(tmp_path / "P1_particles.cs", cs_records(P))
    t = read_cs(f)
    A = euler_to_matrix(P["rot"], P["tilt"], P["psi"])
    assert_same_rotations(t.rotation, A, tol=2e-6)  # float32 storage
    np.testing.assert_allclose(t.origin, P["origin_A"], atol=5e-6)
    np.testing.assert_array_equal(t.half, P["half"])
    np.testing.assert_allclose(t.ctf.defocus_u, P["du"], rtol=1e-6)
    np.testing.assert_allclose(t.ctf.defocus_angle, P["dang"], atol=1e-4)
    np.testing.assert_allclose(t.apix, P["apix"])
    np.testing.assert_array_equal(t.image_size, P["box"])
    # '>' is stripped, blob/idx (0-based) becomes a 1-based RELION index
    assert t.image_name[0] == "000001@J12/extract/stack0.mrcs"
    assert t.image_name[4] == "000002@J12/extract/stack1.mrcs"
    assert t.meta["format"] == "cryosparc" and not t.phase_flipped


def test_long_rotation_vector_same_matrix(tmp_path):
    P = random_particles(n=10, seed=12)
    short = read_cs(save_cs(tmp_path / "a.cs", cs_records(P)))
    rec_long = cs_records(P, long_rotvec=True)
    assert (np.linalg.norm(rec_long["alignments3D/pose"], axis=1) > np.pi).all()
    long = read_cs(save_cs(tmp_path / "b.cs", rec_long))
    assert_same_rotations(long.rotation, short.rotation, tol=2e-6)


def test_same_particles_as_star_and_cs_agree(tmp_path):
    P = random_particles(n=25, seed=13)
    star = tmp_path / "p.star"
    star.write_text(star31_text(P))
    ts = read_star(star)
    tc = read_cs(save_cs(tmp_path / "p.cs", cs_records(P)))
    assert_same_rotations(ts.rotation, tc.rotation, tol=2e-6)
    np.testing.assert_allclose(ts.origin, tc.origin, atol=5e-6)
    np.testing.assert_array_equal(ts.half, tc.half)
    for f in ("defocus_u", "defocus_v", "voltage", "cs", "amp_contrast"):
        np.testing.assert_allclose(getattr(ts.ctf, f), getattr(tc.ctf, f), rtol=1e-6, err_msg=f)
    np.testing.assert_allclose(ts.ctf.defocus_angle, tc.ctf.defocus_angle, atol=1e-4)
    np.testing.assert_allclose(ts.apix, tc.apix, rtol=1e-6)


def test_cs_round_trip_keeps_every_field(tmp_path):
    P = random_particles(n=14, seed=14, n_stack=2)
    rec = cs_records(P, long_rotvec=True)
    f = save_cs(tmp_path / "in.cs", rec)
    t = read_cs(f)
    out = tmp_path / "out.cs"
    write_cs(t, out)
    assert out.exists() and not (tmp_path / "out.cs.npy").exists()
    back = load_cs(out)
    assert back.dtype == rec.dtype
    for name in rec.dtype.names:
        if name in ("alignments3D/pose",):
            continue
        np.testing.assert_array_equal(back[name], rec[name], err_msg=name)
    t2 = read_cs(out)
    assert_same_rotations(t2.rotation, t.rotation, tol=1e-6)
    np.testing.assert_allclose(t2.origin, t.origin, atol=1e-6)


def test_cs_written_with_new_poses_and_reference(tmp_path):
    P = random_particles(n=12, seed=15, n_stack=2)
    rec = cs_records(P)
    ref = save_cs(tmp_path / "orig.cs", rec)
    t = read_cs(ref)
    rng = np.random.default_rng(1)
    R = Rotation.random(12, random_state=2).as_matrix()
    o = rng.uniform(-5, 5, (12, 2))
    t2 = t.with_poses(R, o)
    t2.half = 3 - t.half
    t2.cs_records = None
    # rows shuffled: matched back to the reference by image index + path
    perm = rng.permutation(12)
    t3 = t2.subset(perm)
    out = tmp_path / "new.cs"
    write_cs(t3, out, reference=ref)
    back = load_cs(out)
    np.testing.assert_array_equal(back["uid"], rec["uid"][perm])
    np.testing.assert_array_equal(back["alignments3D/error"], rec["alignments3D/error"][perm])
    np.testing.assert_array_equal(back["alignments3D/split"], (3 - P["half"][perm]) - 1)
    t4 = read_cs(out)
    assert_same_rotations(t4.rotation, R[perm], tol=2e-6)
    np.testing.assert_allclose(t4.origin, o[perm], atol=5e-6)


def test_cs_from_star_without_reference(tmp_path):
    P = random_particles(n=8, seed=16)
    star = tmp_path / "p.star"
    star.write_text(star31_text(P))
    ts = read_star(star)
    out = tmp_path / "p.cs"
    write_cs(ts, out)
    tc = read_cs(out)
    assert_same_rotations(tc.rotation, ts.rotation, tol=2e-6)
    np.testing.assert_allclose(tc.origin, ts.origin, atol=5e-6)
    np.testing.assert_array_equal(tc.half, ts.half)
    np.testing.assert_allclose(tc.ctf.defocus_angle, ts.ctf.defocus_angle, atol=1e-4)
    assert list(tc.image_name) == list(ts.image_name)
    # and back to a star: same again
    write_star(tc, tmp_path / "back.star")
    tb = read_star(tmp_path / "back.star")
    assert_same_rotations(tb.rotation, ts.rotation, tol=2e-6)
    np.testing.assert_allclose(tb.ctf.defocus_u, ts.ctf.defocus_u, rtol=1e-6)


def test_apix_fills_missing_psize(tmp_path):
    P = random_particles(n=5, seed=17, apix=1.1)
    f = save_cs(tmp_path / "a.cs", cs_records(P, psize=False))
    t = read_cs(f, apix=1.1)
    np.testing.assert_allclose(t.apix, 1.1)
    np.testing.assert_allclose(t.origin, P["origin_A"], atol=5e-6)
    # within 1 % of the file's pixel size is accepted
    g = save_cs(tmp_path / "b.cs", cs_records(P))
    assert read_cs(g, apix=1.105).apix[0] == pytest.approx(1.105)
