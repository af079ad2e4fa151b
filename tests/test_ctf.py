"""CTF against independent expectations: wavelengths, analytic zeros, astigmatism axis, phase flip."""
import numpy as np
import pytest

from gmmcore.ctf import ctf_2d, phase_flip, wavelength_A
from gmmcore.particles import CTFParams


def _params(du, dv=None, ang=0.0, kv=300.0, cs=2.7, q=0.1, phase=0.0, b=0.0):
    dv = du if dv is None else dv
    a = lambda v: np.array([float(v)])  # noqa: E731
    return CTFParams(a(du), a(dv), a(ang), a(kv), a(cs), a(q), a(phase), a(b))


def test_wavelengths_match_tabulated_values():
    # Standard relativistic electron wavelengths (Å).
    np.testing.assert_allclose(wavelength_A([100, 200, 300]), [0.037014, 0.025079, 0.019687], rtol=2e-4)


def test_shape_and_value_at_origin():
    c = ctf_2d(CTFParams.constant(3), 1.2, 64)
    assert c.shape == (3, 64, 33) and c.dtype == np.float32
    # At k = 0 the CTF is sin(atan(Q/sqrt(1-Q^2))) = Q (amplitude contrast only).
    np.testing.assert_allclose(c[:, 0, 0], 0.1, rtol=1e-5)
    full = ctf_2d(CTFParams.constant(1), 1.2, 64, rfft=False)
    assert full.shape == (1, 64, 64)
    np.testing.assert_allclose(full[0, :, :33], c[0], atol=1e-6)


def test_pure_defocus_ctf_is_sin_pi_lambda_df_k2():
    # Cs = 0, Q = 0: CTF = sin(pi * lambda * df * k^2), zeros at k^2 = m / (lambda * df).
    df, apix, box = 12000.0, 1.0, 256
    c = ctf_2d(_params(df, cs=0.0, q=0.0), apix, box)[0]
    lam = wavelength_A(300.0)
    k = np.arange(box // 2 + 1) / (box * apix)
    np.testing.assert_allclose(c[0, :], np.sin(np.pi * lam * df * k ** 2), atol=1e-5)
    # Zero crossings along kx fall where predicted.
    zeros_pred = np.sqrt(np.arange(1, 6) / (lam * df))
    sign_change = np.flatnonzero(np.diff(np.sign(c[0, 1:])) != 0) + 1  # between index i and i+1
    found = (sign_change + 0.5) / (box * apix)
    np.testing.assert_allclose(found[:5], zeros_pred, atol=0.6 / (box * apix))


def test_first_zero_with_cs_and_amplitude_contrast():
    df, cs, q, apix, box = 8000.0, 2.7, 0.1, 0.5, 512
    lam = wavelength_A(300.0)
    c = ctf_2d(_params(df, cs=cs, q=q), apix, box)[0, 0, :]
    # chi(u) = pi*lam*df*u^2 - pi/2*Cs*lam^3*u^4 + atan(q/sqrt(1-q^2)); first zero where chi = pi.
    a, b = 0.5 * np.pi * cs * 1e7 * lam ** 3, np.pi * lam * df
    k3 = np.arctan(q / np.sqrt(1 - q * q))
    u2 = (b - np.sqrt(b * b - 4 * a * (np.pi - k3))) / (2 * a)
    first = (np.flatnonzero(np.diff(np.sign(c)) != 0)[0] + 0.5) / (box * apix)
    assert abs(first - np.sqrt(u2)) < 0.6 / (box * apix)
    assert c[1] > 0  # positive contrast at low frequency for underfocus (RELION sign)


def _zero_count(line):
    return int(np.sum(np.diff(np.sign(line)) != 0))


@pytest.mark.parametrize("angle", [0.0, 90.0, 45.0, -45.0])
def test_astigmatism_axis_direction(angle):
    # dU > dV: the CTF oscillates fastest along the azimuth `angle` (from +x toward +y = row).
    box, apix = 256, 1.0  # defoci small enough that the CTF is not aliased on this grid
    full = ctf_2d(_params(6000.0, 3000.0, angle, cs=0.0, q=0.0), apix, box, rfft=False)[0]
    k = np.arange(0, box // 2 - 10)
    lines = {0.0: full[0, k], 90.0: full[k, 0],  # along +x (columns) / +y (rows)
             45.0: full[k, k], -45.0: full[(-k) % box, k]}
    counts = {a: _zero_count(v) for a, v in lines.items()}
    perpendicular = {0.0: 90.0, 90.0: 0.0, 45.0: -45.0, -45.0: 45.0}[angle]
    assert counts[angle] > 1.6 * counts[perpendicular]  # dU/dV = 2 → ~2x the zeros


def test_astigmatism_matches_cos_squared_form():
    box, apix, du, dv, ang = 64, 1.5, 21000.0, 14000.0, 33.0
    c = ctf_2d(_params(du, dv, ang, cs=0.0, q=0.0), apix, box, rfft=False)[0]
    ky = np.fft.fftfreq(box, apix)[:, None]
    kx = np.fft.fftfreq(box, apix)[None, :]
    phi = np.arctan2(ky, kx) - np.deg2rad(ang)
    df = du * np.cos(phi) ** 2 + dv * np.sin(phi) ** 2
    lam = wavelength_A(300.0)
    np.testing.assert_allclose(c, np.sin(np.pi * lam * df * (kx ** 2 + ky ** 2)), atol=1e-5)


def test_swapping_u_and_v_is_a_90_degree_rotation():
    c1 = ctf_2d(_params(20000.0, 15000.0, 10.0), 1.0, 64, rfft=False)[0]
    c2 = ctf_2d(_params(15000.0, 20000.0, 100.0), 1.0, 64, rfft=False)[0]
    np.testing.assert_allclose(c1, c2, atol=1e-5)


def test_bfactor_and_phase_shift():
    base = ctf_2d(_params(15000.0), 1.0, 64)[0]
    env = ctf_2d(_params(15000.0, b=100.0), 1.0, 64)[0]
    ky = np.fft.fftfreq(64)[:, None]
    kx = np.arange(33)[None, :] / 64
    np.testing.assert_allclose(env, base * np.exp(-100.0 / 4 * (kx ** 2 + ky ** 2)), atol=1e-5)
    # A 90° phase plate with Q = 0 turns -sin(chi) into cos(...): value 1 at the origin.
    pp = ctf_2d(_params(15000.0, q=0.0, phase=90.0), 1.0, 64)[0]
    assert pp[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_phase_flip_multiplies_ft_by_sign_of_ctf():
    rng = np.random.default_rng(0)
    k, n, apix = 3, 48, 1.3
    ctf = CTFParams(rng.uniform(8000, 25000, k), rng.uniform(8000, 25000, k), rng.uniform(-90, 90, k),
                    np.full(k, 300.0), np.full(k, 2.7), np.full(k, 0.07), np.zeros(k), np.zeros(k))
    imgs = rng.normal(size=(k, n, n)).astype(np.float32)
    out = phase_flip(imgs, ctf, apix)
    assert out.shape == imgs.shape and out.dtype == np.float32
    F = np.fft.rfft2(np.fft.ifftshift(imgs, axes=(-2, -1)))
    c = ctf_2d(ctf, apix, n)
    expect = np.fft.fftshift(np.fft.irfft2(F * np.sign(c), s=(n, n)), axes=(-2, -1))
    np.testing.assert_allclose(out, expect, atol=1e-4)
    # Flipping twice is the identity (for content below Nyquist, where sign(CTF) is Hermitian).
    F[..., n // 2] = 0
    F[..., n // 2, :] = 0
    band = np.fft.fftshift(np.fft.irfft2(F, s=(n, n)), axes=(-2, -1)).astype(np.float32)
    np.testing.assert_allclose(phase_flip(phase_flip(band, ctf, apix), ctf, apix), band, atol=1e-4)


def test_compiled_contrast_is_the_numpy_formula():
    """gmmcore.insertion_compiled evaluates ctf_contrast one sample at a time (numba, libm cos/sin):
    the vectorised NumPy formula's values to a few float64 ulps (bit for bit on the machine this was
    written on; NumPy's own SIMD cos/sin may differ from libm's in the last bit elsewhere — the kernel
    rounds |CTF| to float32, so the maps do not see it)."""
    pytest.importorskip("numba")
    from gmmcore.ctf import ctf_contrast, ctf_image_terms
    from gmmcore.insertion_compiled import contrast

    rng = np.random.default_rng(3)
    k = 6
    terms = ctf_image_terms(*(c[:, None] for c in (rng.uniform(5000, 30000, k), rng.uniform(5000, 30000, k),
                                                   rng.uniform(-90, 90, k), np.full(k, 300.0), np.full(k, 2.7),
                                                   np.full(k, 0.07), rng.uniform(0, 90, k))))
    fx, fy = rng.uniform(-0.5, 0.5, 500), rng.uniform(-0.5, 0.5, 500)
    u2, azim = fx ** 2 + fy ** 2, np.arctan2(fy, fx)
    vec = ctf_contrast(np)(*terms, u2, azim)
    one = np.array([[contrast(*(t[i, 0] for t in terms), u2[s], azim[s]) for s in range(u2.size)] for i in range(k)])
    np.testing.assert_allclose(one, vec, rtol=0, atol=1e-15)
