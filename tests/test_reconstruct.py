"""Direct Fourier inversion against a known map, with projections made independently here.

Projections are real-space line integrals I(p) = ∫ V(Aᵀp) dz (scipy map_coordinates), placed so
the particle centre sits at box centre − origin — RELION's conventions, so these tests also pin
the Euler and origin conventions of the reconstructor.
"""
import json

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from gmmcore.ctf import ctf_2d, phase_flip
from gmmcore.errors import InputError
from gmmcore.fourier import lowpass
from gmmcore.fsc import fsc, resolution_at
from gmmcore.geometry import perturb_rotations, random_rotations
from gmmcore.particles import CTFParams, ParticleTable
from gmmcore.reconstruct import Reconstructor, reconstruct_halves

N = 40


def blob_map(n, rng, centres=None, nblobs=6, sigma=(1.8, 3.0), amp=None):
    """Sum of isotropic Gaussians at (x, y, z) pixel offsets from the centre (asymmetric, off-centre)."""
    c = n // 2
    z, y, x = np.mgrid[:n, :n, :n] - c
    if centres is None:
        centres = rng.uniform(-n / 5, n / 5, (nblobs, 3)) + np.array([2.0, -1.0, 1.5])
    sig = rng.uniform(*sigma, len(centres))
    amp = rng.uniform(0.5, 1.5, len(centres)) if amp is None else amp
    vol = np.zeros((n, n, n))
    for (cx, cy, cz), s, a in zip(centres, sig, amp):
        vol += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s * s))
    return vol.astype(np.float32)


def project(vol, A, origin_px):
    """I(p) = ∫ V(Aᵀ(p_x + o_x, p_y + o_y, z)) dz: the particle centre lands at centre − origin."""
    n = vol.shape[0]
    c = n // 2
    y, x = (np.mgrid[:n, :n] - c).astype(float)
    z = (np.arange(n) - c).astype(float)[:, None, None]
    out = np.empty((len(A), n, n), np.float32)
    for i in range(len(A)):
        p = np.stack(np.broadcast_arrays(x[None] + origin_px[i, 0], y[None] + origin_px[i, 1], z))
        X = np.einsum("ji,j...->i...", A[i], p)  # Aᵀ p, components (x, y, z)
        out[i] = ndimage.map_coordinates(vol, [X[2] + c, X[1] + c, X[0] + c], order=1, mode="constant").sum(0)
    return out


def corr(a, b, res_px=2.5):
    a, b = lowpass(a, 1.0, res_px), lowpass(b, 1.0, res_px)
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def random_ctf(k, rng):
    du = rng.uniform(8000, 20000, k)
    return CTFParams(du, du - rng.uniform(-600, 600, k), rng.uniform(-90, 90, k), np.full(k, 300.0),
                     np.full(k, 2.7), np.full(k, 0.1), np.zeros(k), np.zeros(k))


def apply_ctf_here(images, ctf, apix):
    n = images.shape[-1]
    F = np.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1)))
    return np.fft.fftshift(np.fft.irfft2(F * ctf_2d(ctf, apix, n), s=(n, n)), axes=(-2, -1)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    vol = blob_map(N, rng)
    k = 300
    A = random_rotations(k, rng)
    origin_px = rng.uniform(-3, 3, (k, 2))
    return dict(vol=vol, A=A, origin_px=origin_px, images=project(vol, A, origin_px), rng=rng)


def _rec(images, A, origins_A, apix=1.0, ctf=None, flipped=False, sym="C1", box=N):
    r = Reconstructor(box, apix, pad=2, sym=sym)
    r.insert(images, A, origins_A, ctf, flipped)
    return r.finish()


def test_noiseless_reconstruction_matches_truth(data):
    apix = 1.7  # origins in Å, converted with apix
    v = _rec(data["images"], data["A"], data["origin_px"] * apix, apix=apix)
    assert v.shape == (N, N, N) and v.dtype == np.float32
    assert corr(v, data["vol"]) > 0.99
    assert v.sum() == pytest.approx(data["vol"].sum(), rel=0.03)  # absolute scale preserved
    # FSC with the truth ~1 wherever the map has power (shells 0-9; beyond, power < 1e-4 of shell 0).
    _, c = fsc(v, data["vol"], 1.0)
    assert c[:10].min() > 0.99


def test_conventions_are_pinned(data):
    good = corr(_rec(data["images"], data["A"], data["origin_px"]), data["vol"])
    wrong_origin = corr(_rec(data["images"], data["A"], -data["origin_px"]), data["vol"])
    transposed = corr(_rec(data["images"], np.swapaxes(data["A"], 1, 2), data["origin_px"]), data["vol"])
    assert good > 0.99
    assert wrong_origin < good - 0.05 and transposed < good - 0.05


def test_ctf_corrupted_phase_flipped_and_raw(data):
    rng = np.random.default_rng(5)
    apix = 2.0
    k = len(data["A"])
    ctf = random_ctf(k, rng)
    raw = apply_ctf_here(data["images"], ctf, apix)
    flipped = phase_flip(raw, ctf, apix)
    origins_A = data["origin_px"] * apix
    v_flip = _rec(flipped, data["A"], origins_A, apix, ctf, flipped=True)
    v_raw = _rec(raw, data["A"], origins_A, apix, ctf, flipped=False)
    assert corr(v_flip, data["vol"]) > 0.9
    assert corr(v_raw, data["vol"]) > 0.9
    # Ignoring the CTF entirely is clearly worse.
    assert corr(_rec(flipped, data["A"], origins_A, apix), data["vol"]) < corr(v_flip, data["vol"]) - 0.05


def test_wrong_poses_give_worse_map(data):
    rng = np.random.default_rng(3)
    right = _rec(data["images"], data["A"], data["origin_px"])
    wrong = _rec(data["images"], perturb_rotations(data["A"], 10.0, rng), data["origin_px"])
    f, c_right = fsc(right, data["vol"], 1.0)
    _, c_wrong = fsc(wrong, data["vol"], 1.0)
    # The smooth test map has little power beyond ~4 px, so judge at FSC 0.99 with the truth.
    assert resolution_at(f, c_wrong, 0.99) > 2.0 * resolution_at(f, c_right, 0.99)
    err_right = np.linalg.norm(right - data["vol"])
    assert np.linalg.norm(wrong - data["vol"]) > 2.5 * err_right


def test_c4_symmetry_from_a_quarter_of_the_views():
    rng = np.random.default_rng(9)
    base = rng.uniform(-7, 7, (3, 3)) + np.array([4.0, 0.0, 2.0])
    Rz = Rotation.from_euler("z", [0, 90, 180, 270], degrees=True).as_matrix()
    centres = np.concatenate([base @ R.T for R in Rz])  # C4 about z: V(Rz x) = V(x)
    vol = blob_map(N, rng, centres=centres, sigma=(1.6, 1.6), amp=np.tile([0.6, 1.0, 1.4], 4))
    k = 15  # a quarter of the 60 views that C1 would need for the same coverage
    A = random_rotations(k, rng)
    o = rng.uniform(-2, 2, (k, 2))
    imgs = project(vol, A, o)
    c = {s: corr(_rec(imgs, A, o, sym=s), vol) for s in ("C1", "C4", "D4", "C3")}
    assert c["C4"] > 0.98 and c["C4"] > c["C1"] + 0.03
    # Symmetries the map does not have (an extra 2-fold about x; a 3-fold) break it.
    assert c["D4"] < c["C4"] - 0.1 and c["C3"] < c["C4"] - 0.1


def test_odd_box_and_empty():
    rng = np.random.default_rng(2)
    n = 33
    vol = blob_map(n, rng, nblobs=4)
    A = random_rotations(200, rng)
    o = rng.uniform(-2, 2, (200, 2))
    v = _rec(project(vol, A, o), A, o, box=n)
    assert v.shape == (n, n, n) and corr(v, vol) > 0.98
    empty = Reconstructor(16, 1.0).finish()
    assert empty.shape == (16, 16, 16) and np.all(empty == 0)


def test_chunked_insertion_and_merge_equal_one_shot(data):
    a = Reconstructor(N, 1.0)
    a.insert(data["images"][:100], data["A"][:100], data["origin_px"][:100], None, False)
    b = Reconstructor(N, 1.0)
    b.insert(data["images"][100:], data["A"][100:], data["origin_px"][100:], None, False)
    a.merge(b)
    one = _rec(data["images"], data["A"], data["origin_px"])
    np.testing.assert_allclose(a.finish(), one, atol=1e-5 * np.abs(one).max())


def _table(k, rng, half):
    return ParticleTable(image_name=np.array([f"{i + 1}@fake.mrcs" for i in range(k)]),
                         rotation=random_rotations(k, rng), origin=rng.uniform(-2, 2, (k, 2)),
                         half=np.asarray(half, np.int8), optics_group=np.ones(k, np.int32), apix=np.full(k, 1.0),
                         image_size=np.full(k, N, np.int32), ctf=CTFParams.constant(k), phase_flipped=True)


def test_reconstruct_halves_streams_each_half(monkeypatch, data, tmp_path):
    """Each half's images are read on their own, in chunks of at most ``chunk`` images (never the
    whole set in memory), through the one reading loop (iter_stack_images) of every reconstruction."""
    from dataclasses import replace

    import gmmcore.io.stacks as stacks

    rng = np.random.default_rng(4)
    k = 120
    half = np.where(np.arange(k) % 2 == 0, 1, 2)
    table = _table(k, rng, half)
    ctf_imgs = phase_flip(apply_ctf_here(project(data["vol"], table.rotation, table.origin), table.ctf, 1.0),
                          table.ctf, 1.0)
    stack = tmp_path / "particles.mrcs"  # image j of the stack is row j's
    with stacks.StackWriter(stack, N, 1.0) as w:
        w.write(ctf_imgs)
    table = replace(table, image_name=np.array([f"{i + 1}@{stack}" for i in range(k)]))
    read = stacks.iter_stack_images
    seen, sizes = [], []

    def recording(refs, chunk):  # the real reader, recording which images each call reads, and how
        seen.append(np.asarray(refs.index0))
        for pos, images in read(refs, chunk):
            sizes.append(len(pos))
            yield pos, images

    monkeypatch.setattr(stacks, "iter_stack_images", recording)
    out = reconstruct_halves(table, chunk=25, workers=1)
    assert sorted(np.concatenate(seen).tolist()) == list(range(k))  # every image read once
    assert sum(sizes) == k and max(sizes) <= 25
    assert set(out) == {1, 2}
    assert [set(np.unique(half[s])) for s in seen] == [{1}, {2}]
    for h in (1, 2):
        assert corr(out[h], data["vol"], 3.0) > 0.9
    with pytest.raises(InputError) as e:
        reconstruct_halves(_table(10, rng, np.ones(10)), workers=1)
    assert e.value.field == "rlnRandomSubset"
    with pytest.raises(InputError) as e:
        reconstruct_halves(table, sym="Q2", workers=1)
    assert e.value.field == "--sym"


def test_reconstruct_verb_end_to_end(sim_small, tmp_path):
    from gmmcore.cli import main
    from gmmcore.io.maps import read_map

    out = tmp_path / "rec"
    # --workers 2: the halves in two spawned processes (the default for small sets is in-process).
    assert main(["reconstruct", "--particles", str(sim_small["true_star"]), "--out", str(out), "--workers", "2"]) == 0
    for f in ("half1.mrc", "half2.mrc", "map.mrc", "summary.json"):
        assert (out / f).exists()
    s = json.loads((out / "summary.json").read_text())
    assert set(s) >= {"resolution", "resolution_unmasked", "resolution_masked", "fsc", "n_particles", "apix", "box"}
    assert s["box"] == 48 and s["apix"] == pytest.approx(2.0)
    assert s["n_particles"]["1"] + s["n_particles"]["2"] == 400
    assert len(s["fsc"]["freq"]) == len(s["fsc"]["masked"]) == 25
    assert 4.0 <= s["resolution"] < 30.0
    m, apix = read_map(out / "map.mrc")
    truth, _ = read_map(sim_small["true_map"])
    assert m.shape == (48, 48, 48) and apix == pytest.approx(2.0)
    assert np.corrcoef(lowpass(m, 2.0, 12.0).ravel(), lowpass(truth, 2.0, 12.0).ravel())[0, 1] > 0.8

    # Bad inputs: one line, exit 2, nothing left behind.
    bad = tmp_path / "bad"
    assert main(["reconstruct", "--particles", str(sim_small["true_star"]), "--sym", "X9", "--out", str(bad)]) == 2
    assert not bad.exists()


def test_half_maps_from_stacks_true_vs_perturbed_poses(sim_small, tmp_path):
    from dataclasses import replace

    from gmmcore.cli import main
    from gmmcore.fsc import half_map_report
    from gmmcore.io.star import read_star, write_star

    res = {}
    for key in ("true_star", "perturbed_star"):
        table = read_star(sim_small[key])
        h = reconstruct_halves(table, workers=1)
        res[key] = half_map_report(h[1], h[2], sim_small["apix"])["resolution"]
    # 3° / 1 px pose errors cost resolution (here ~7.3 Å → ~9.7 Å masked).
    assert res["perturbed_star"] > res["true_star"] * 1.15

    # No half split → one-line error naming rlnRandomSubset, exit 2, no output folder.
    table = read_star(sim_small["true_star"])
    write_star(replace(table, half=np.zeros(len(table), np.int8), star_particles=None), tmp_path / "nosplit.star")
    out = tmp_path / "nosplit_out"
    assert main(["reconstruct", "--particles", str(tmp_path / "nosplit.star"), "--out", str(out)]) == 2
    assert not out.exists()


def test_worker_processes_give_the_in_process_maps_bit_for_bit(sim_small):
    """The halves reconstructed in two spawned processes, each sent its half compactly (stack codes,
    indices, poses, CTF), are the in-process maps bit for bit — also for a subset of rows."""
    from gmmcore.io.star import read_star

    table = read_star(sim_small["perturbed_star"])
    for indices in (None, np.arange(3, len(table), 2)):
        one = reconstruct_halves(table, workers=1, indices=indices, chunk=64)
        two = reconstruct_halves(table, workers=2, indices=indices, chunk=64)
        for h in (1, 2):
            assert one[h].dtype == two[h].dtype and np.array_equal(one[h], two[h])


def test_half_particles_send_one_value_columns_as_their_value(sim_small):
    """A worker's hand-off pickles a CTF column of one value as that value: smaller, and the same
    numbers after unpickling (read-only views); a table with shared one-value columns keeps its
    content hash."""
    import pickle

    from gmmcore.io.star import read_star
    from gmmcore.reconstruct import HalfParticles

    table = read_star(sim_small["perturbed_star"])
    rows = np.flatnonzero(table.half == 1)
    parts = HalfParticles.of(table, rows)
    got = pickle.loads(pickle.dumps(parts))
    for f in ("voltage", "cs", "amp_contrast", "defocus_u"):
        a, b = getattr(parts.ctf, f), getattr(got.ctf, f)
        assert a.shape == b.shape and np.array_equal(a, b)
    assert not got.ctf.voltage.flags.writeable and got.ctf.defocus_u.flags.writeable
    plain = dict(parts.__dict__)
    assert len(pickle.dumps(parts)) < len(pickle.dumps(plain)) - 4 * 8 * rows.size
    shared = table.with_shared_values()
    assert shared.content_hash() == table.content_hash()
    assert shared.ctf.voltage.strides == (0,) and np.array_equal(shared.apix, table.apix)
