"""Fourier conventions, filters, FSC, resolution, masks."""
import numpy as np
import pytest

from gmmcore.fourier import (ft, ift, lowpass, radial_index, rfft_crop, rfft_weights, shell_frequencies,
                             shift_images)
from gmmcore.fsc import fsc, fsc_masked, half_map_report, resolution_at
from gmmcore.masks import auto_mask, soft_sphere_mask


def test_centre_convention_delta_at_n_over_2_has_flat_real_ft():
    for shape in [(16, 16), (15, 15), (8, 8, 8)]:
        x = np.zeros(shape)
        x[tuple(s // 2 for s in shape)] = 1.0
        F = ft(x)
        np.testing.assert_allclose(F, 1.0, atol=1e-12)
        np.testing.assert_allclose(ift(F, shape), x, atol=1e-12)


def test_radial_index_2d_3d():
    r2 = radial_index((16, 16))
    assert r2.shape == (16, 9)
    assert r2[0, 3] == 3 and r2[16 - 4, 0] == 4 and r2[3, 4] == 5 and r2[16 - 3, 4] == 5
    r3 = radial_index((8, 8, 8))
    assert r3.shape == (8, 8, 5) and r3[0, 0, 0] == 0 and r3[1, 1, 1] == 2 and r3[7, 0, 4] == 4
    full = radial_index((16, 16), rfft=False)
    assert full.shape == (16, 16) and full[0, 16 - 5] == 5
    np.testing.assert_array_equal(rfft_weights((6, 6))[[0, 1, 3]], [1, 2, 1])


@pytest.mark.parametrize("shape", [(7,), (9, 10), (5, 6, 7), (40, 40, 40)])
def test_radial_index_is_the_rounded_radius_grid(shape):
    from gmmcore.fourier import radius_grid

    for rfft in (True, False):
        np.testing.assert_array_equal(radial_index(shape, rfft), np.rint(radius_grid(shape, rfft)).astype(np.int64))


def test_shell_frequencies():
    np.testing.assert_allclose(shell_frequencies(10, 2.0), np.arange(6) / 20.0)


def test_shift_images_moves_content_by_plus_shift():
    n = 32
    img = np.zeros((1, n, n), np.float32)
    img[0, n // 2, n // 2] = 1.0
    out = shift_images(img, np.array([[3.0, -5.0]]))  # (dx, dy)
    r, c = np.unravel_index(np.argmax(out[0]), out[0].shape)
    assert (r, c) == (n // 2 - 5, n // 2 + 3)
    assert out[0, r, c] == pytest.approx(1.0, abs=1e-5)


def test_lowpass_removes_high_frequencies_keeps_low():
    rng = np.random.default_rng(0)
    n, apix = 32, 2.0
    x = rng.normal(size=(n, n, n))
    y = lowpass(x, apix, 8.0, falloff_px=2.0)  # cut-off at k = n*apix/res = 8
    r = radial_index(x.shape)
    Fx, Fy = ft(x), ft(y)
    np.testing.assert_allclose(Fy[r <= 6], Fx[r <= 6], atol=1e-9)
    assert np.abs(Fy[r >= 10]).max() < 1e-9
    assert y.dtype == x.dtype


def test_rfft_crop_matches_coarser_sampling_of_a_bandlimited_image():
    # f(x,y) = sum of low-frequency cosines; sample it on 64 px of 1 Å and 32 px of 2 Å.
    def sample(n, apix):
        c = (np.arange(n) - n // 2) * apix
        y, x = np.meshgrid(c, c, indexing="ij")
        return (np.cos(2 * np.pi * (3 * x + 2 * y) / 64.0 + 0.3) + 0.5 * np.cos(2 * np.pi * (-5 * x + 7 * y) / 64.0))

    f64, f32 = sample(64, 1.0), sample(32, 2.0)
    cropped = rfft_crop(ft(f64), 64, 32)
    assert cropped.shape == (32, 17)
    np.testing.assert_allclose(cropped / 4.0, ft(f32), atol=1e-9)


def test_fsc_of_map_with_itself_is_one():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(24, 24, 24))
    freq, c = fsc(m, m, 1.5)
    assert freq.shape == (13,) and freq[-1] == pytest.approx(1 / 3.0)
    np.testing.assert_allclose(c, 1.0, atol=1e-12)
    assert resolution_at(freq, c) == pytest.approx(3.0)  # never crosses: Nyquist


def test_fsc_follows_snr_relation():
    # Same white signal (variance s2) plus independent white noise (variance n2) in each map:
    # expected FSC = s2 / (s2 + n2) in every shell.
    rng = np.random.default_rng(2)
    n = 48
    s = rng.normal(size=(n, n, n))
    for snr in (0.25, 1.0, 4.0):
        a = np.sqrt(snr) * s + rng.normal(size=s.shape)
        b = np.sqrt(snr) * s + rng.normal(size=s.shape)
        _, c = fsc(a, b, 1.0)
        expect = snr / (1 + snr)
        assert np.abs(c[10:] - expect).max() < 0.06  # shell 10 has ~1200 voxels: sd ~0.03
        assert abs(np.mean(c[6:]) - expect) < 0.01


@pytest.mark.parametrize("res", [6.0, 9.0])  # 1-voxel shells: truth is known to ±half a shell
def test_resolution_of_lowpassed_noisy_maps(res):
    rng = np.random.default_rng(3)
    n, apix = 64, 2.0
    sig = lowpass(rng.normal(size=(n, n, n)), apix, res, falloff_px=0.5)
    noise = 0.05 * sig.std()
    a = sig + noise * rng.normal(size=sig.shape)
    b = sig + noise * rng.normal(size=sig.shape)
    freq, c = fsc(a, b, apix)
    assert resolution_at(freq, c) == pytest.approx(res, rel=0.05)


def test_resolution_at_interpolates_first_crossing():
    freq = np.arange(11) / 20.0
    curve = np.array([1, 1, 0.9, 0.5, 0.2, 0.1, 0.3, 0.05, 0.0, 0.0, 0.0])
    f = 0.2 + (0.2 - 0.143) / (0.2 - 0.1) * 0.05  # between shells 4 and 5
    assert resolution_at(freq, curve) == pytest.approx(1 / f)
    assert resolution_at(freq, curve, 0.5) == pytest.approx(1 / 0.15)


def test_soft_sphere_mask():
    m = soft_sphere_mask(32, 8, edge_px=4)
    assert m.shape == (32, 32, 32) and m.dtype == np.float32
    assert m[16, 16, 16] == 1 and m[16, 16, 16 + 8] == 1 and m[16, 16, 16 + 12] == 0
    assert m[16, 16 + 10, 16] == pytest.approx(0.5, abs=1e-6)
    off = soft_sphere_mask(32, 4, 2, center=(10, 12, 20))
    assert off[10, 12, 20] == 1 and off[16, 16, 16] == 0


def _blobs(n, centres, sigma=2.5):
    z, y, x = np.mgrid[:n, :n, :n]
    v = np.zeros((n, n, n), np.float32)
    for c in centres:
        v += np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * sigma ** 2))
    return v


def test_auto_mask_covers_density_not_corners():
    n = 48
    centres = [(20, 24, 24), (28, 22, 30), (24, 30, 18)]
    v = _blobs(n, centres) + 0.01 * np.random.default_rng(4).normal(size=(n, n, n)).astype(np.float32)
    m = auto_mask(v, apix=2.0, lowpass_A=10.0)
    for c in centres:
        assert m[c] == pytest.approx(1.0)
    assert m[:5, :5, :5].max() == 0.0
    assert 0.0 < m.mean() < 0.3
    assert ((m > 0) & (m < 1)).any()  # soft edge


def test_masked_fsc_and_half_map_report():
    rng = np.random.default_rng(5)
    n, apix, res = 48, 2.0, 8.0
    sig = lowpass(_blobs(n, [(20, 24, 24), (28, 22, 30), (24, 30, 18), (22, 18, 26)], 1.2), apix, res, 0.5)
    noise = 2.0 * sig.std()  # unmasked FSC decays gradually to the cut-off at 8 Å
    a = sig + noise * rng.normal(size=sig.shape).astype(np.float32)
    b = sig + noise * rng.normal(size=sig.shape).astype(np.float32)
    mask = auto_mask(0.5 * (a + b), apix)
    freq, fm = fsc_masked(a, b, apix, mask)
    _, fu = fsc(a, b, apix)
    # Masking removes solvent noise: masked FSC ≥ unmasked where there is signal.
    assert np.all(fm[2:12] >= fu[2:12] - 0.02)
    rep = half_map_report(a, b, apix)
    assert set(rep) >= {"resolution", "resolution_unmasked", "resolution_masked", "fsc"}
    assert rep["resolution"] == rep["resolution_masked"]
    assert len(rep["fsc"]["freq"]) == len(rep["fsc"]["unmasked"]) == len(rep["fsc"]["masked"]) == n // 2 + 1
    assert rep["resolution_masked"] <= rep["resolution_unmasked"] + 1e-6
    assert 0.9 * res < rep["resolution_masked"] < 1.02 * res
    # Phase-randomisation correction: beyond the true cut-off the corrected masked FSC is ~0.
    k_cut = int(n * apix / res)
    assert np.abs(fm[k_cut + 3:]).max() < 0.1


def test_phase_randomisation_removes_mask_induced_correlation():
    rng = np.random.default_rng(5)
    n, apix = 48, 2.0
    sig = lowpass(_blobs(n, [(20, 24, 24), (28, 22, 30), (24, 30, 18), (22, 18, 26)], 1.2), apix, 8.0, 0.5)
    a = sig + 0.3 * sig.std() * rng.normal(size=sig.shape).astype(np.float32)
    b = sig + 0.3 * sig.std() * rng.normal(size=sig.shape).astype(np.float32)
    mask = auto_mask(0.5 * (a + b), apix)
    _, raw = fsc_masked(a, b, apix, mask, correct=False)
    _, cor = fsc_masked(a, b, apix, mask)
    # No signal beyond shell 12; the tight mask spreads correlation there, the correction removes it.
    assert raw[15] > 0.15 and abs(cor[15]) < 0.1
    np.testing.assert_allclose(cor[:13], raw[:13])
