"""The opt-in Hermitian GMM transform of the fit (TF backend, issue 20): the same transform and
loss as the full one up to float32 rounding, and a fit that lands on the same map agreement."""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from gmmcore.backend import get_backend  # noqa: E402
from gmmcore.backend.tf import volume_ft, volume_ft_hermitian  # noqa: E402
from gmmcore.gmm.build import fit_gmm  # noqa: E402
from gmmcore.gmm.model import GMM  # noqa: E402
from gmmcore.gmm.render import render_map  # noqa: E402


def test_hermitian_transform_equals_full():
    rng = np.random.default_rng(0)
    n, kmax, L = 50, 9, 60.0
    c = tf.constant(rng.uniform(-15, 15, (n, 3)).astype(np.float32))
    a = tf.constant(rng.uniform(0.5, 1.5, n).astype(np.float32))
    s = tf.constant(rng.uniform(1.0, 2.5, n).astype(np.float32))
    k = np.arange(-kmax, kmax + 1) / L
    sz, sy, sx = (tf.constant(x.astype(np.float32)) for x in (k, k, np.arange(kmax + 1) / L))
    full = volume_ft(c, a, s, sz, sy, sx).numpy()
    half = volume_ft_hermitian(c, a, s, sz, sy, sx).numpy()
    assert half.shape == full.shape
    np.testing.assert_allclose(half, full, atol=2e-6 * np.abs(full).max())


@pytest.mark.parametrize("backend", ["tf", "jax"])
def test_hermitian_fit_matches_default(backend):
    rng = np.random.default_rng(1)
    n, box, apix, res = 60, 32, 2.0, 6.0
    truth = GMM(rng.uniform(-12, 12, (n, 3)), rng.uniform(0.5, 1.5, n), rng.uniform(1.5, 2.5, n))
    m = render_map(truth, box, apix)
    c0 = truth.centers + rng.normal(0, 1.0, truth.centers.shape)
    if backend == "jax":
        pytest.importorskip("jax")
    be = get_backend(backend)
    _, rep = fit_gmm(m, apix, c0, res, iterations=40, backend=be)
    _, rep_h = fit_gmm(m, apix, c0, res, iterations=40, backend=be, hermitian=True)
    assert abs(rep_h["loss_start"] - rep["loss_start"]) < 1e-5
    assert abs(rep_h["fsc_mean"] - rep["fsc_mean"]) < 2e-3


def test_jax_hermitian_transform_equals_full():
    jnp = pytest.importorskip("jax.numpy")
    from gmmcore.backend.jax import volume_ft as jft, volume_ft_hermitian as jfth

    rng = np.random.default_rng(2)
    n, kmax, L = 40, 7, 50.0
    c = jnp.asarray(rng.uniform(-12, 12, (n, 3)).astype(np.float32))
    a = jnp.asarray(rng.uniform(0.5, 1.5, n).astype(np.float32))
    s = jnp.asarray(rng.uniform(1.0, 2.5, n).astype(np.float32))
    k = (np.arange(-kmax, kmax + 1) / L).astype(np.float32)
    sz, sy, sx = jnp.asarray(k), jnp.asarray(k), jnp.asarray((np.arange(kmax + 1) / L).astype(np.float32))
    re, im = (np.asarray(x) for x in jft(c, a, s, sz, sy, sx))
    re_h, im_h = (np.asarray(x) for x in jfth(c, a, s, sz, sy, sx))
    scale = np.abs(re + 1j * im).max()
    np.testing.assert_allclose(re_h, re, atol=2e-6 * scale)
    np.testing.assert_allclose(im_h, im, atol=2e-6 * scale)
    tf_full = volume_ft(*(tf.constant(np.asarray(x)) for x in (c, a, s, sz, sy, sx))).numpy()
    np.testing.assert_allclose(re_h + 1j * im_h, tf_full, atol=2e-6 * scale)
