"""The simulator (gmmcore simulate) and PDB reading/writing."""
import json

import mrcfile
import numpy as np
import pytest

from gmmcore.ctf import ctf_2d
from gmmcore.errors import InputError
from gmmcore.geometry import angular_distance, random_rotations
from gmmcore.gmm.render import project_images
from gmmcore.io.star import read_star
from gmmcore.io.pdb import builtin_model_path, read_atoms, write_pseudo_atoms
from gmmcore.simulate import (_draw_truth, clean_particles, load_model, model_gmm, particle_mask,
                              signal_variance, simulate_dataset)


def _ft(x):
    return np.fft.rfft2(np.fft.ifftshift(x, axes=(-2, -1)))


def _freq_radius(box, apix):
    ky = np.fft.fftfreq(box)[:, None]
    kx = np.fft.rfftfreq(box)[None, :]
    return np.sqrt(kx ** 2 + ky ** 2) / apix  # 1/Å


# ------------------------------------------------------------------------------------------------
# PDB


def test_read_builtin_models():
    a, ea = read_atoms(builtin_model_path("builtin:adk-closed"))
    b, eb = read_atoms(builtin_model_path("adk-open"))
    assert a.shape == b.shape == (1656, 3)
    assert (ea == eb).all() and set(ea) == {"C", "N", "O", "S"}
    with pytest.raises(InputError):
        builtin_model_path("builtin:nope")


def test_read_atoms_rules(tmp_path):
    p = tmp_path / "m.pdb"
    p.write_text("\n".join([
        "HEADER    TEST",
        "MODEL        1",
        "ATOM      1  N   ALA A   1       1.000   2.000   3.000  1.00 10.00           N",
        "ATOM      2  CA AALA A   1       2.000   2.000   3.000  0.50 10.00           C",
        "ATOM      3  CA BALA A   1       9.000   9.000   9.000  0.50 10.00           C",
        "ATOM      4  H   ALA A   1       1.500   2.000   3.000  1.00 10.00           H",
        "ATOM      5 HG11 VAL A   2       1.500   2.000   3.000  1.00 10.00",
        "ATOM      6  CB  VAL A   2       4.000   5.000   6.000  1.00 10.00",
        "HETATM    7  O   HOH A 101       7.000   7.000   7.000  1.00 10.00           O",
        "HETATM    8 ZN    ZN A 201      -1.000  -2.000  -3.000  1.00 10.00",
        "ENDMDL",
        "MODEL        2",
        "ATOM      1  N   ALA A   1      11.000  12.000  13.000  1.00 10.00           N",
        "ENDMDL",
        "END",
    ]) + "\n")
    xyz, el = read_atoms(p)
    assert list(el) == ["N", "C", "C", "ZN"]
    assert np.allclose(xyz, [[1, 2, 3], [2, 2, 3], [4, 5, 6], [-1, -2, -3]])

    with pytest.raises(InputError):
        read_atoms(tmp_path / "missing.pdb")
    (tmp_path / "empty.pdb").write_text("REMARK nothing\nEND\n")
    with pytest.raises(InputError):
        read_atoms(tmp_path / "empty.pdb")


def test_pseudo_atom_pdb_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    c = rng.normal(scale=20, size=(12, 3))
    amp = rng.uniform(0.5, 3.0, size=12)
    w = rng.uniform(1.0, 4.0, size=12)
    path = tmp_path / "g.pdb"
    write_pseudo_atoms(path, c, amp, w)
    xyz, el = read_atoms(path)
    assert np.allclose(xyz, c, atol=1e-3) and set(el) == {"C"}
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("ATOM")]
    occ = np.array([float(ln[54:60]) for ln in lines])
    bf = np.array([float(ln[60:66]) for ln in lines])
    assert all(ln[12:16] == " CA " and ln[17:20] == "GMM" for ln in lines)
    assert occ.max() == pytest.approx(1.0) and np.allclose(occ, amp / amp.max(), atol=0.006)
    assert np.allclose(bf, w, atol=0.006)


# ------------------------------------------------------------------------------------------------
# model


def test_model_centred_and_superposed():
    m = load_model("builtin:adk-closed", "builtin:adk-open")
    z = m["amplitudes"]  # atomic numbers; masses ∝ roughly 2Z, so check the mass-weighted centre directly
    from gmmcore.io.pdb import atomic_masses
    mass = atomic_masses(m["elements"])
    assert np.allclose((m["coords_a"] * mass[:, None]).sum(0) / mass.sum(), 0, atol=1e-9)
    assert np.allclose((m["coords_b"] * mass[:, None]).sum(0) / mass.sum(), 0, atol=1e-9)
    assert set(np.unique(z)) == {6, 7, 8, 16}
    rmsd = np.sqrt(((m["coords_a"] - m["coords_b"]) ** 2).sum(1).mean())
    assert rmsd < 7.5  # superposed (≈ 9 Å without the fit)


# ------------------------------------------------------------------------------------------------
# the shared dataset


def test_outputs_consistent(sim_small):
    r = sim_small
    n, box, apix = r["n_particles"], r["box"], r["apix"]
    for k in ("stack", "true_star", "perturbed_star", "true_map", "truth", "json"):
        assert r[k].exists(), k
    with mrcfile.open(r["stack"], permissive=True) as m:
        assert m.data.shape == (n, box, box)
        assert m.voxel_size.x == pytest.approx(apix)
    vol, = [mrcfile.read(r["true_map"])]
    assert vol.shape == (box, box, box)
    info = json.loads(r["json"].read_text())
    assert info["params"]["n_particles"] == n and info["params"]["seed"] == r["seed"]
    assert info["per_half"] == {"1": n // 2, "2": n // 2}
    assert info["phase_flipped"] is False
    z = np.load(r["truth"])
    assert z["rotations"].shape == (n, 3, 3) and z["origins_A"].shape == (n, 2)
    assert np.allclose(z["rotations"], r["rotations"]) and np.allclose(z["conformation"], 0)

    true, pert = read_star(r["true_star"]), read_star(r["perturbed_star"])
    assert len(true) == len(pert) == n
    assert not true.phase_flipped and not pert.phase_flipped
    assert np.allclose(true.apix, apix) and (true.image_size == box).all()
    assert (true.image_name == pert.image_name).all()
    assert true.image_name[0].startswith("000001@") and true.image_name[-1].startswith(f"{n:06d}@")
    # halves balanced, random, and the same in both files
    assert (true.half == z["half"]).all() and (pert.half == true.half).all()
    assert (true.half == 1).sum() == (true.half == 2).sum() == n // 2
    assert 0 < np.mean(true.half[: n // 2] == 1) < 1
    # true poses as recorded; origins within the disc
    assert angular_distance(true.rotation, z["rotations"]).max() < 1e-4
    assert np.allclose(true.origin, z["origins_A"], atol=1e-6)
    assert np.linalg.norm(true.origin, axis=1).max() <= 2.0 * apix + 1e-9
    # perturbed: exactly the requested angle and shift
    ang = angular_distance(pert.rotation, true.rotation)
    assert np.allclose(ang, 3.0, atol=1e-4)
    shift_px = np.linalg.norm(pert.origin - true.origin, axis=1) / apix
    assert np.allclose(shift_px, 1.0, atol=1e-6)
    # random axes / directions, not one fixed perturbation
    d = pert.origin - true.origin
    assert np.std(np.arctan2(d[:, 1], d[:, 0])) > 1.0
    # CTF values survive; astigmatism within the requested bound
    assert np.allclose(true.ctf.defocus_u, r["ctf"].defocus_u, rtol=1e-6)
    dm = 0.5 * (true.ctf.defocus_u + true.ctf.defocus_v)
    assert dm.min() >= 10000 - 1e-3 and dm.max() <= 25000 + 1e-3
    assert np.all(np.abs(true.ctf.defocus_u - true.ctf.defocus_v) <= 500 + 1e-3)


def test_noise_and_snr(sim_small):
    r = sim_small
    box, apix, k = r["box"], r["apix"], 100
    stack = mrcfile.read(r["stack"])[:k]
    clean = clean_particles(r["model"], r["rotations"][:k], r["origins_A"][:k], r["ctf"].subset(slice(0, k)),
                            apix, box)
    noise = stack - clean
    assert abs(noise.mean()) < 0.02 * r["noise_sigma"]
    assert noise.std() == pytest.approx(r["noise_sigma"], rel=0.02)
    # white: flat power spectrum (low vs high frequencies)
    pw = (np.abs(_ft(noise)) ** 2).mean(0)
    rad = _freq_radius(box, apix)
    lo, hi = pw[(rad > 0.02) & (rad < 0.1)].mean(), pw[(rad > 0.15) & (rad < 0.25)].mean()
    assert lo == pytest.approx(hi, rel=0.05)
    # SNR = variance of the signal inside the particle / noise variance
    mask = particle_mask(box, r["mask_radius_px"])
    snr = signal_variance(clean, mask).mean() / noise.var()
    assert snr == pytest.approx(r["snr"], rel=0.2)


def test_stack_is_ctf_corrupted_and_not_phase_flipped(sim_small):
    r = sim_small
    box, apix, k = r["box"], r["apix"], 200
    stack = mrcfile.read(r["stack"])[:k]
    ctf = ctf_2d(r["ctf"].subset(slice(0, k)), apix, box)
    proj = project_images(model_gmm(r["model"]), r["rotations"][:k], r["origins_A"][:k], apix, box)
    FS, FP = _ft(stack), _ft(proj)
    band = ((_freq_radius(box, apix) > 1 / 30) & (_freq_radius(box, apix) < 1 / 5))[None]
    # Power spectrum: at the CTF zeros only noise is left; at its extrema the signal adds to it.
    pw = np.abs(FS) ** 2
    noise_power = box * box * r["noise_sigma"] ** 2
    at_zero = pw[(np.abs(ctf) < 0.15) & band].mean()
    at_peak = pw[(np.abs(ctf) > 0.85) & band].mean()
    assert at_zero == pytest.approx(noise_power, rel=0.03)
    assert at_peak > 1.02 * at_zero
    # Cross-spectrum with the CTF-free projection = CTF·|P|² (+ noise): negative where the CTF is
    # negative.  A phase-flipped stack would give |CTF|·|P|² ≥ 0 there.
    X = (FS * np.conj(FP)).real
    expected = ctf * np.abs(FP) ** 2
    for sel in ((ctf < -0.3) & band, (ctf > 0.3) & band):
        assert X[sel].sum() == pytest.approx(expected[sel].sum(), rel=0.15)
    assert X[(ctf < -0.3) & band].sum() < 0


# ------------------------------------------------------------------------------------------------
# options


def test_heterogeneity_morph(tmp_path):
    r = simulate_dataset(tmp_path / "het", model_b="builtin:adk-open", n_particles=24, box=48, apix=2.0, snr=None,
                         seed=3, show_progress=False)
    z = np.load(r["truth"])
    t = z["conformation"]
    assert t.shape == (24,) and t.min() >= 0 and t.max() <= 1 and np.ptp(t) > 0.3
    assert r["true_map_b"] is not None and r["true_map_b"].exists()
    info = json.loads(r["json"].read_text())
    assert info["params"]["model_b"] == "builtin:adk-open" and info["files"]["true_map_b"] == "true_map_b.mrc"
    # noise-free images are the projections of the morph at the recorded t (and not at 1 − t)
    stack = mrcfile.read(r["stack"])
    i = int(np.argmax(np.abs(t - 0.5)))  # a clearly asymmetric t
    ctf = r["ctf"].subset([i])
    good = clean_particles(r["model"], z["rotations"][[i]], z["origins_A"][[i]], ctf, 2.0, 48, t[[i]])
    wrong = clean_particles(r["model"], z["rotations"][[i]], z["origins_A"][[i]], ctf, 2.0, 48, 1 - t[[i]])
    assert np.abs(stack[i] - good[0]).max() < 1e-3 * np.abs(good).max()
    assert np.abs(stack[i] - wrong[0]).max() > 0.05 * np.abs(good).max()
    # the two end maps differ
    assert not np.allclose(mrcfile.read(r["true_map"]), mrcfile.read(r["true_map_b"]))

    r2 = simulate_dataset(tmp_path / "fixed", model_b="builtin:adk-open", conformation=0.25, n_particles=6, box=48,
                          apix=2.0, snr=0.5, seed=3, show_progress=False)
    assert np.allclose(np.load(r2["truth"])["conformation"], 0.25) and r2["true_map_b"] is None


def test_optics_groups(tmp_path):
    r = simulate_dataset(tmp_path / "og", optics_groups=3, n_particles=30, box=48, apix=2.0, show_progress=False)
    tab = read_star(r["true_star"])
    assert sorted(set(tab.optics_group)) == [1, 2, 3]
    cs = {g: set(np.round(tab.ctf.cs[tab.optics_group == g], 6)) for g in (1, 2, 3)}
    assert all(len(v) == 1 for v in cs.values()) and len(set.union(*cs.values())) == 3
    info = json.loads(r["json"].read_text())
    assert sum(info["per_optics_group"].values()) == 30


def test_chunking_does_not_change_the_data(tmp_path):
    kw = dict(n_particles=20, box=32, apix=2.0, snr=0.2, seed=11, show_progress=False)
    a = simulate_dataset(tmp_path / "a", chunk=7, **kw)
    b = simulate_dataset(tmp_path / "b", **kw)
    assert np.allclose(mrcfile.read(a["stack"]), mrcfile.read(b["stack"]), atol=1e-4)
    assert np.allclose(a["rotations_perturbed"], b["rotations_perturbed"])


def test_truth_is_reproducible_and_uniform():
    kw = dict(defocus_range=(1e4, 2e4), astigmatism=300, voltage=300, cs=2.7, amp_contrast=0.1, max_origin_px=2,
              perturb_angle_deg=3, perturb_shift_px=1, optics_groups=1, has_b=False, conformation=None)
    a = _draw_truth(2000, 64, 1.5, np.random.default_rng(5), **kw)
    b = _draw_truth(2000, 64, 1.5, np.random.default_rng(5), **kw)
    assert np.array_equal(a["rotations"], b["rotations"]) and np.array_equal(a["half"], b["half"])
    # uniform rotations: viewing directions (third row of A) average to ~0, |cos tilt| uniform
    v = a["rotations"][:, 2, :]
    assert np.abs(v.mean(0)).max() < 0.06
    assert np.histogram(v[:, 2], bins=4, range=(-1, 1))[0].min() > 400


def test_bad_input_and_cli(tmp_path, monkeypatch):
    from gmmcore.cli import main

    monkeypatch.setattr("sys.argv", ["gmmcore"])

    with pytest.raises(InputError):
        simulate_dataset(tmp_path / "x", model=tmp_path / "missing.pdb", n_particles=2, show_progress=False)
    with pytest.raises(InputError):
        simulate_dataset(tmp_path / "x", n_particles=0, show_progress=False)
    with pytest.raises(InputError):
        simulate_dataset(tmp_path / "x", model_b="builtin:adk-open", conformation=2.0, show_progress=False)
    # the CLI: bad model → exit 2 and nothing left behind; a good run writes the files
    out = tmp_path / "cli_bad"
    assert main(["simulate", "--model", str(tmp_path / "missing.pdb"), "--out", str(out)]) == 2
    assert not out.exists()
    out = tmp_path / "cli"
    assert main(["simulate", "--n", "5", "--box", "32", "--apix", "2", "--perturb-angle", "5", "--seed", "2",
                 "--out", str(out)]) == 0
    pert, true = read_star(out / "particles_perturbed.star"), read_star(out / "particles_true.star")
    assert len(true) == 5 and np.allclose(angular_distance(pert.rotation, true.rotation), 5.0, atol=1e-4)


def test_clean_particles_batch_equals_single():
    m = load_model()
    R = random_rotations(3, np.random.default_rng(0))
    o = np.array([[1.0, 2.0], [0.0, 0.0], [-3.0, 1.0]])
    all3 = clean_particles(m, R, o, None, 2.0, 32)
    one = clean_particles(m, R[1:2], o[1:2], None, 2.0, 32)
    assert np.allclose(all3[1], one[0], atol=1e-4 * np.abs(one).max())
