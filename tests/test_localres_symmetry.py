"""Local resolution, composite maps, symmetry expansion and reimposition.

* ``test_local_resolution_two_regions``: a map pair whose shared signal is resolved to 5 Å in one
  region and to 10 Å in another (independent noise of the signal's power in each half): the
  local-resolution map reports each region's median within 15 % (window 16 voxels, FSC 0.5).
* ``test_composite_rule``: Σ M·Map / Σ M where the masks sum to ≥ 1, the fill map where they sum
  to 0, the stated blend between; the same weights for both halves.
* ``test_rotate_map``: rotating a map by S moves a point c to S·c.
* ``test_expand_symmetry_and_reconstruct``: a C3 assembly expanded gives 3× rows with rotations
  A·S_k, halves and images kept, source columns; the C1 reconstruction of the expanded set equals
  the C3 reconstruction of the original.
* ``test_reimpose_after_focused``: a focused run on the expanded set with a mask on one subunit,
  reimposed in C3, returns a map with the C3 symmetry (the unsymmetrised focused map has less).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from gmmcore.cli import main
from gmmcore.composite import composite, rotate_map
from gmmcore.fourier import lowpass
from gmmcore.localres import local_resolution, region_summary
from gmmcore.masks import soft_sphere_mask
from gmmcore.symmetry import symmetry_matrices


def test_local_resolution_two_regions(tmp_path):
    box, apix = 64, 2.0
    rng = np.random.default_rng(0)
    sig = rng.normal(size=(box,) * 3)
    left = soft_sphere_mask(box, 12, 3, center=(32, 32, 17))
    right = soft_sphere_mask(box, 12, 3, center=(32, 32, 47))
    s = lowpass(sig, apix, 5.0) * left + lowpass(sig, apix, 10.0) * right
    sd = s[left > 0.5].std()  # noise as strong as the signal: FSC ≈ 0.5·2/(1+1)… well above 0.5 below the cut
    h1 = s + np.random.default_rng(1).normal(0, sd, s.shape)
    h2 = s + np.random.default_rng(2).normal(0, sd, s.shape)
    mask = np.maximum(left, right)
    lr = local_resolution(h1, h2, apix, mask=mask, window_px=16)
    a = region_summary(lr, soft_sphere_mask(box, 8, 0, center=(32, 32, 17)))
    b = region_summary(lr, soft_sphere_mask(box, 8, 0, center=(32, 32, 47)))
    print(f"\nlocal resolution: {a['median']:.2f} Å (true 5), {b['median']:.2f} Å (true 10)")
    assert abs(a["median"] - 5.0) < 0.15 * 5.0, a
    assert abs(b["median"] - 10.0) < 0.15 * 10.0, b
    assert (lr[mask < 0.5] == 0).all()
    # the verb: writes the map and a summary naming window and threshold
    from gmmcore.io.maps import write_map

    write_map(tmp_path / "h1.mrc", h1, apix)
    write_map(tmp_path / "h2.mrc", h2, apix)
    write_map(tmp_path / "m.mrc", mask, apix)
    assert main(["local-resolution", "--half1", str(tmp_path / "h1.mrc"), "--half2", str(tmp_path / "h2.mrc"),
                 "--mask", str(tmp_path / "m.mrc"), "--step", "4", "--out", str(tmp_path / "lr")]) == 0
    info = json.loads((tmp_path / "lr" / "summary.json").read_text())
    assert info["window_px"] == 16 and info["threshold"] == 0.5 and info["within_mask"]["voxels"] > 1000


def test_composite_rule():
    box = 16
    rng = np.random.default_rng(3)
    v1, v2, fill = (rng.normal(size=(box,) * 3) for _ in range(3))
    m1 = np.zeros((box,) * 3)
    m2 = np.zeros((box,) * 3)
    m1[:, :, :8] = 1.0
    m2[:, :, 6:12] = 1.0
    m1[:, :, 12] = 0.25
    out, W = composite([(m1, v1), (m2, v2)], fill)
    np.testing.assert_allclose(out[:, :, :6], v1[:, :, :6], atol=1e-6)  # one mask: its map
    np.testing.assert_allclose(out[:, :, 6:8], 0.5 * (v1 + v2)[:, :, 6:8], atol=1e-6)  # two: the average
    np.testing.assert_allclose(out[:, :, 13:], fill[:, :, 13:], atol=1e-6)  # none: the fill
    np.testing.assert_allclose(out[:, :, 12], 0.25 * v1[:, :, 12] + 0.75 * fill[:, :, 12], atol=1e-6)  # blend
    assert W.max() == 2.0


def test_rotate_map():
    box, apix = 32, 1.0
    S = symmetry_matrices("C4")[1]
    c = np.array([6.0, 2.0, -3.0])  # x, y, z Å
    blob = soft_sphere_mask(box, 2, 2, center=(c[::-1] + 16))
    rot = rotate_map(blob, S)
    com = lambda v: (np.indices(v.shape).reshape(3, -1) * v.ravel()).sum(1)[::-1] / v.sum() - 16  # noqa: E731
    np.testing.assert_allclose(com(rot), S @ c, atol=0.05)


@pytest.fixture(scope="module")
def c3(tmp_path_factory):
    """A C3 assembly of three adenylate kinases (the LID of each moving ±10°), 120 particles."""
    from gmmcore.simulate import simulate_dataset

    d = tmp_path_factory.mktemp("c3")
    sim = simulate_dataset(d / "sim", n_particles=120, box=40, apix=3.0, snr=2.0, copies="C3", domain="lid",
                           domain_angle_deg=10, perturb_angle_deg=1.0, perturb_shift_px=0.3, seed=5,
                           show_progress=False)
    assert main(["expand-symmetry", "--particles", str(sim["perturbed_star"]), "--sym", "C3",
                 "--out", str(d / "exp")]) == 0
    return sim, d


def test_expand_symmetry_and_reconstruct(c3):
    from gmmcore.expansion import OPERATOR_COLUMN, SOURCE_COLUMN, source_rows
    from gmmcore.io.star import read_star
    from gmmcore.reconstruct import reconstruct_halves

    sim, d = c3
    src = read_star(sim["perturbed_star"])
    exp = read_star(d / "exp" / "particles.star")
    n = len(src)
    assert len(exp) == 3 * n
    ops = symmetry_matrices("C3")
    rows = source_rows(exp)
    k = exp.star_particles[OPERATOR_COLUMN].to_numpy() - 1
    assert np.array_equal(rows, np.repeat(np.arange(n), 3)) and np.array_equal(k, np.tile([0, 1, 2], n))
    np.testing.assert_allclose(exp.rotation, np.einsum("nij,njl->nil", src.rotation[rows], ops[k]), atol=2e-5)
    from gmmcore.io.stacks import resolved_image_names

    assert np.array_equal(exp.half, src.half[rows])
    assert np.array_equal(exp.image_name, resolved_image_names(src)[rows])  # the same images (absolute paths)
    np.testing.assert_allclose(exp.origin, src.origin[rows], atol=1e-5)
    assert SOURCE_COLUMN in exp.star_particles.columns
    info = json.loads((d / "exp" / "summary.json").read_text())
    assert info["n_particles"] == 3 * n and info["per_half"]["1"] == 3 * int((src.half == 1).sum())
    # C1 reconstruction of the expanded set == C3 reconstruction of the original set
    a = reconstruct_halves(exp, sym="C1", workers=1)
    b = reconstruct_halves(src, sym="C3", workers=1)
    for h in (1, 2):
        rel = np.abs(a[h] - b[h]).max() / np.abs(b[h]).max()
        assert rel < 1e-3, (h, rel)


def test_reimpose_after_focused(c3, tmp_path):
    from gmmcore.io.maps import read_map, write_map

    sim, d = c3
    out = tmp_path / "foc"
    assert main(["refine-focused", "--particles", str(d / "exp" / "particles.star"), "--half1",
                 str(_halves(d) / "half1.mrc"), "--half2", str(_halves(d) / "half2.mrc"), "--mask",
                 str(sim["unit_mask"]), "--iter", "1", "--maxres", "12", "--steps", "4", "--ngauss", "150",
                 "--reimpose", "C3", "--cpu", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["final"]["reimposed"]["sym"] == "C3"
    sym, apix = read_map(out / "final" / "reimposed_half1.mrc")
    plain, _ = read_map(out / "final" / "half1.mrc")
    S = symmetry_matrices("C3")[1]

    def asym(v):  # relative difference from its own C3 rotation, within the particle
        m = soft_sphere_mask(40, 16, 2)
        r = rotate_map(v, S)
        return float(np.linalg.norm((r - v) * m) / np.linalg.norm(v * m))

    # the floor: the start map (C1 reconstruction of the expanded set, symmetric by construction)
    # measured the same way — what resampling a rotated grid costs
    floor = asym(read_map(out / "iter000" / "half1.mrc")[0])
    a_sym, a_plain = asym(sym), asym(plain)
    print(f"\nasymmetry (|R·V − V| / |V|): reimposed {a_sym:.3f}, focused C1 map {a_plain:.3f}, "
          f"symmetric start map {floor:.3f}")
    assert a_sym < 1.5 * floor + 0.01, (a_sym, floor)
    assert a_plain > 3 * a_sym, (a_sym, a_plain)


def _halves(d):
    """Half maps of the expanded set (C1), written once."""
    from gmmcore.io.maps import write_map
    from gmmcore.io.star import read_star
    from gmmcore.reconstruct import reconstruct_halves

    folder = d / "exp_halves"
    if not (folder / "half2.mrc").exists():
        folder.mkdir(exist_ok=True)
        maps = reconstruct_halves(read_star(d / "exp" / "particles.star"), workers=1)
        for h, m in maps.items():
            write_map(folder / f"half{h}.mrc", m, 3.0)
    return folder
