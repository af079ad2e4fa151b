"""Heterogeneity analysis per half set and conformation-to-pose, against the simulator's truth.

One simulated dataset with a continuous motion of one domain: adenylate kinase whose LID domain
turns rigidly about its hinge by a per-particle angle, uniform in ±15° (``gmmcore simulate
--domain lid``; the truth records each particle's angle and the domain's own pose), 400
particles, box 48, 2 Å/px, SNR 2 (±25°: the same dataset as ``make demo-heterogeneity``).  The consensus is a run at the particles' (core) poses
(``gmmcore refine --iter 0``); its half maps smear the LID.  The chain runs once per module:

* ``test_latent_pc1_follows_the_domain_angle``: in each half on its own, PC1 of the latents
  correlates with the true angle, |Spearman ρ| ≥ 0.75 (0.83–0.95 over 5 seeds); every particle
  has a row in latents.csv with its own half's PCA; the decoded GMMs fit the particles better
  than the neutral GMM.
* ``test_decoder_at_latent_zero_is_the_neutral_gmm``: map-vs-GMM FSC of the decoder at 0 ≥ that
  of the neutral GMM − 0.02 (recomputed from the reloaded network), centres within 1e-4 Å.
* ``test_saved_network_gives_the_same_latents``: a network loaded from its file encodes every
  particle of its half to bit-identical latents.
* ``test_gold_standard_and_resume``: half 2's images replaced by noise and the training killed
  after 3 epochs of half 1 and resumed: half 1's network, latents, PCA and converted poses are
  bit-identical to the clean uninterrupted run's, half 2's are not.
* ``test_conformation_to_pose``: the converted poses are closer to the domain's true poses than
  the consensus poses (also after one focused iteration, and closer than one focused iteration
  from the consensus alone), and the domain's map (FSC against the true map within its mask)
  after conversion (+ one focused iteration) beats the consensus and one focused iteration from
  the consensus alone.  Margins from the spread over 5 seeds (``benchmarks/seed_spread.py``).
* ``test_cli_errors``: one-line errors naming the input.

The module takes ≈ 5 min on 2 CPU cores (each pose optimiser compiles for 15–40 s).
"""
from __future__ import annotations

import json
import shutil

import mrcfile
import numpy as np
import pytest
from scipy.stats import spearmanr

from gmmcore.cli import main
from gmmcore.geometry import angular_distance
from gmmcore.io.star import read_star

SIM = dict(n_particles=400, box=48, apix=2.0, snr=2.0, seed=3, domain="lid", domain_angle_deg=25.0,
           perturb_angle_deg=0.0, perturb_shift_px=0.0)
HET_ARGS = ["--res", "6", "--epochs", "20", "--full-epochs", "10", "--bins", "3", "--chunk", "64", "--cpu"]
# 20 steps of 2.5° (decaying to 10 %) reach ≈ 27°; the default 30 × 2° costs 50 % more compile time
C2P_BASE = ["--steps", "20", "--lr-angle", "2.5", "--maxres", "6", "--batch", "64", "--cpu"]
C2P_ARGS = C2P_BASE + ["--focus-iter", "1"]
FOCUS_ARGS = ["--iter", "1", "--maxres", "6", "--batch", "64", "--cpu"]


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    from gmmcore.simulate import simulate_dataset

    d = tmp_path_factory.mktemp("heter")
    sim = simulate_dataset(d / "sim", show_progress=False, **SIM)
    assert cli("refine", "--particles", sim["true_star"], "--iter", 0, "--cpu", "--out", d / "cons") == 0
    assert cli("heterogeneity", "--from", d / "cons", "--out", d / "het", *HET_ARGS) == 0
    with np.load(sim["truth"]) as z:
        truth = {k: z[k] for k in z.files}
    return {"dir": d, "sim": sim, "truth": truth, "cons": d / "cons", "het": d / "het",
            "mask": sim["domain_mask"]}


def _latents(het):
    with np.load(het / "final" / "latents.npz") as z:
        return {k: z[k] for k in z.files}


# =============================================================================================


def test_latent_pc1_follows_the_domain_angle(chain):
    from gmmcore.heter.latent import read_latents_csv
    from gmmcore.summary import HeterogeneitySummary

    angle = chain["truth"]["domain_angle_deg"][:, 0]
    lat = _latents(chain["het"])
    csv = read_latents_csv(chain["het"] / "final" / "latents.csv")
    table = read_star(chain["cons"] / "final" / "particles.star")
    assert list(csv["rlnImageName"]) == list(table.image_name) and np.array_equal(csv["half"], table.half)
    assert csv["latent"].shape == (400, 4)
    np.testing.assert_allclose(csv["pc1"], lat["pcs"][:, 0], rtol=1e-5, atol=1e-5)
    summary = HeterogeneitySummary.load(chain["het"])
    rho = {}
    for h in (1, 2):
        m = lat["half"] == h
        rho[h] = spearmanr(lat["pcs"][m, 0], angle[m]).correlation
        assert abs(lat["pcs"][m, 0].mean()) < 1e-4  # the half's own PCA (centred on its own particles)
        rep = summary.halves[str(h)]
        assert rep.frc_decoded > rep.frc_neutral + 0.01, rep  # the decoded conformations fit better
        assert len(rep.bins) == 3 and sum(b["n"] for b in rep.bins) == m.sum()
        assert [r["round"] for r in rep.history] == ["anchors"] * 20 + ["full"] * 10
    print("Spearman rho(PC1, true angle):", {h: round(r, 3) for h, r in rho.items()})
    assert abs(rho[1]) >= 0.75 and abs(rho[2]) >= 0.75, rho  # 0.83–0.95 over seeds 0–4 (mean − 3 sd 0.78)


def test_decoder_at_latent_zero_is_the_neutral_gmm(chain):
    from gmmcore.fourier import lowpass
    from gmmcore.heter.analysis import map_gmm_fsc
    from gmmcore.heter.pair import HalfNetwork
    from gmmcore.io.maps import read_map
    from gmmcore.summary import HeterogeneitySummary

    summary = HeterogeneitySummary.load(chain["het"])
    for h in (1, 2):
        rep = summary.halves[str(h)]
        assert rep.gmm_fsc_decoder_zero >= rep.gmm_fsc_neutral - 0.02, rep
        net = HalfNetwork.load(summary.path(rep.network))
        neutral = net.decoder.layout.neutral
        zero = net.decoder.gmm(np.zeros(4))
        assert np.abs(zero.centers - neutral.centers).max() < 1e-4
        half_map = lowpass(read_map(chain["cons"] / "final" / f"half{h}.mrc")[0], 2.0, 6.0)
        f_zero, f_neutral = (map_gmm_fsc(half_map, g, 2.0, 6.0, 40.0) for g in (zero, neutral))
        assert f_neutral > 0.5 and f_zero >= f_neutral - 0.02, (f_zero, f_neutral)
        # a latent away from 0 moves the GMM
        far = net.decoder.gmm(np.array([2.0, 0, 0, 0], np.float32))
        assert np.abs(far.centers - neutral.centers).max() > 0.1


def test_saved_network_gives_the_same_latents(chain):
    from gmmcore.heter.pair import HalfNetwork
    from gmmcore.heter.training import encode

    table = read_star(chain["cons"] / "final" / "particles.star", image_root=chain["sim"]["out_dir"])
    lat = _latents(chain["het"])
    for h in (1, 2):
        net = HalfNetwork.load(chain["het"] / "final" / f"network_half{h}.npz")
        rows = np.flatnonzero(table.half == h)
        z = encode(net, table, rows, chunk=64)
        assert np.array_equal(z["latent"], lat["latent"][rows])


def _corrupt_copy(chain, d):
    """A copy of the consensus run whose particles' half-2 images are pure noise."""
    sim2 = d / "sim"
    shutil.copytree(chain["sim"]["out_dir"], sim2)
    half = chain["truth"]["half"]
    with mrcfile.open(sim2 / "particles.mrcs", mode="r+") as m:
        data = m.data.copy()
        rng = np.random.default_rng(11)
        data[half == 2] = rng.normal(0.0, data.std(), data[half == 2].shape).astype(np.float32)
        m.set_data(data)
    cons2 = d / "cons"
    shutil.copytree(chain["cons"], cons2)
    for name in ("params.json", "summary.json"):  # the run's images are found next to its input star
        data = json.loads((cons2 / name).read_text())
        (data if name == "params.json" else data["params"])["particles"] = str(sim2 / "particles_true.star")
        (cons2 / name).write_text(json.dumps(data))
    star = cons2 / "final" / "particles.star"  # image names may also be absolute paths into the simulation
    star.write_text(star.read_text().replace(str(chain["sim"]["out_dir"]), str(sim2)))
    return cons2


def test_gold_standard_and_resume(chain, tmp_path, monkeypatch, capsys):
    from gmmcore.heter import training

    cons2 = _corrupt_copy(chain, tmp_path)
    het2 = tmp_path / "het"

    # kill: the process stops right after half 1's checkpoint of its 3rd epoch
    original = training.CheckpointStore.save

    def save_then_die(self, state, arrays):
        original(self, state, arrays)
        if self.folder.name == "half1" and state["round"] == 0 and state["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.CheckpointStore, "save", save_then_die)
    assert cli("heterogeneity", "--from", cons2, "--out", het2, *HET_ARGS) == 130
    assert not (het2 / "final" / "network_half1.npz").exists()
    # half 2's neutral GMM comes from the (unchanged) consensus half map 2: reuse it (saves its fit)
    (het2 / "half2").mkdir()
    shutil.copy(chain["het"] / "half2" / "neutral.gmm.npz", het2 / "half2")
    monkeypatch.setattr(training.CheckpointStore, "save", original)
    capsys.readouterr()
    assert cli("heterogeneity", "--from", cons2, "--out", het2, *HET_ARGS) == 0
    assert "resuming after anchors epoch 3" in capsys.readouterr().out

    ref, new = _latents(chain["het"]), _latents(het2)
    one, two = ref["half"] == 1, ref["half"] == 2
    with np.load(chain["het"] / "final" / "network_half1.npz") as a, np.load(het2 / "final" / "network_half1.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    with np.load(chain["het"] / "final" / "network_half2.npz") as a, np.load(het2 / "final" / "network_half2.npz") as b:
        assert not np.array_equal(a["enc.0.w"], b["enc.0.w"])
    assert np.array_equal(new["latent"][one], ref["latent"][one]) and np.array_equal(new["pcs"][one], ref["pcs"][one])
    assert not np.allclose(new["latent"][two], ref["latent"][two])
    assert (het2 / "final" / "pca_half1.json").read_text() == (chain["het"] / "final" / "pca_half1.json").read_text()

    # conformation to pose: half 1's converted poses do not depend on half 2
    c2p_ref = chain["dir"] / "c2p"
    _conf2pose(chain, c2p_ref)
    c2p2 = tmp_path / "c2p"
    assert cli("conf2pose", "--from", het2, "--mask", chain["mask"], "--out", c2p2, *C2P_BASE, "--focus-iter", 0) == 0
    with np.load(c2p_ref / "convert" / "poses.npz") as a, np.load(c2p2 / "convert" / "poses.npz") as b:
        assert np.array_equal(a["rotation"][one], b["rotation"][one]) and np.array_equal(a["origin"][one], b["origin"][one])
        assert not np.allclose(a["rotation"][two], b["rotation"][two])


def _conf2pose(chain, out, seed: int = 0):
    if not (out / "summary.json").exists():
        assert cli("conf2pose", "--from", chain["het"], "--mask", chain["mask"], "--out", out, *C2P_ARGS,
                   "--seed", seed) == 0
    return out


def _region_measures(run_dir, maps_dir, curve, chain):
    """(mean gold-standard FSC within the domain mask over 10 Å → Nyquist, its 0.5 and 0.143
    crossings, mean FSC of the half-map average against the unmoved true map within the mask)."""
    from gmmcore.fsc import fsc, resolution_at
    from gmmcore.io.maps import read_map

    freq = np.asarray(RunSummary_load(run_dir).initial.fsc["freq"])
    c = np.asarray(curve)
    band = freq >= 0.1
    mask = read_map(chain["mask"])[0]
    true_map = read_map(chain["sim"]["true_map"])[0]
    avg = 0.5 * (read_map(maps_dir / "half1.mrc")[0] + read_map(maps_dir / "half2.mrc")[0])
    f_true = fsc(avg * mask, true_map * mask, 2.0)[1]
    return {"fsc_mean": float(c[band].mean()), "res_0.5": resolution_at(freq, c, 0.5),
            "res_0.143": resolution_at(freq, c, 0.143), "vs_truth": float(f_true[band].mean())}


def RunSummary_load(path):
    from gmmcore.summary import RunSummary
    return RunSummary.load(path)


def _focus_curve(record):
    return record.report.fsc_focus


def chain_measures(chain, seed: int = 0) -> dict:
    """Run conf2pose (+ one focused iteration) and one focused iteration from the consensus on
    ``chain``; the domain's pose errors against the truth (°, mean and median), shifts (px) and the
    in-mask FSC measures of :func:`_region_measures` for the four pose sets, and the training's
    Spearman ρ(PC1, true angle) per half.  (Also used by ``benchmarks/seed_spread.py``.)"""
    from gmmcore.particles import Poses

    t = chain["truth"]
    dom_R, dom_o = t["domain_pose_rotations"][:, 0], t["domain_pose_origins_A"][:, 0]
    c2p = _conf2pose(chain, chain["dir"] / "c2p", seed)
    focus = chain["dir"] / "focused"
    if not (focus / "summary.json").exists():
        assert cli("refine-focused", "--from", chain["cons"], "--mask", chain["mask"], "--fsc-mask", chain["mask"],
                   "--out", focus, *FOCUS_ARGS) == 0
    s, fs = RunSummary_load(c2p), RunSummary_load(focus)

    poses = {"consensus": Poses(t["rotations"], t["origins_A"]),  # the consensus run's poses: the particles' core poses
             "focused alone": read_star(focus / "final" / "particles.star").poses,
             "converted": Poses.load(c2p / "convert" / "poses.npz"),
             "conf2pose+focused": read_star(c2p / "final" / "particles.star").poses}
    region = {"consensus": _region_measures(c2p, chain["cons"] / "final", s.consensus.fsc["masked"], chain),
              "focused alone": _region_measures(c2p, focus / "final", _focus_curve(fs.iterations[-1]), chain),
              "converted": _region_measures(c2p, c2p / "convert", s.initial.fsc_focus, chain),
              "conf2pose+focused": _region_measures(c2p, c2p / "final", _focus_curve(s.iterations[-1]), chain)}
    out = {}
    for k, p in poses.items():
        e = angular_distance(p.rotation, dom_R)
        out[k] = {"err_mean": float(e.mean()), "err_median": float(np.median(e)),
                  "shift_px": float(np.linalg.norm(p.origin_A - dom_o, axis=1).mean() / 2.0), **region[k]}
    lat, angle = _latents(chain["het"]), t["domain_angle_deg"][:, 0]
    out["rho"] = {h: float(abs(spearmanr(lat["pcs"][lat["half"] == h, 0], angle[lat["half"] == h]).correlation))
                  for h in (1, 2)}
    out["pose_change_mean"] = float(np.load(c2p / s.conversion.pose_changes)["angle_deg"].mean())
    return out


def test_conformation_to_pose(chain):
    m = chain_measures(chain)
    for k in ("consensus", "focused alone", "converted", "conf2pose+focused"):
        r = m[k]
        print("%-18s domain pose error %.2f° (median %.2f°), %.2f px; FSC in the mask: mean %.3f, 0.5 at %.2f Å, "
              "0.143 at %.2f Å; vs truth %.3f" % (k, r["err_mean"], r["err_median"], r["shift_px"], r["fsc_mean"],
                                                  r["res_0.5"], r["res_0.143"], r["vs_truth"]))

    # Margins from the spread over seeds 0–4 of benchmarks/seed_spread.py (simulation + training
    # seed; table in that script's notes): each is the original one where the spread supports it,
    # else max(half the smallest gap, mean − 3 sd) rounded down.
    c, f, v, cf = (m[k] for k in ("consensus", "focused alone", "converted", "conf2pose+focused"))
    # the converted poses are the domain's poses far better than the consensus (≈ 12° → ≈ 8.5°;
    # gaps 3.5–4.5°, medians 4.4–5.7°, shifts 0.29–0.37 px)
    assert v["err_mean"] < c["err_mean"] - 2.5, (v, c)
    assert v["err_median"] < c["err_median"] - 3.0, (v, c)
    assert v["shift_px"] < c["shift_px"], (v, c)
    # one focused iteration after the conversion keeps them far better than the consensus or a
    # focused iteration from it (gaps 3.1–4.2°)
    assert cf["err_mean"] < min(c["err_mean"], f["err_mean"]) - 2.0, (cf, c, f)
    # the domain in the maps, against the truth: mean FSC (10 Å → Nyquist) of the half-map average
    # against the unmoved true map within the domain mask (gaps 0.04–0.13 over the seeds).  The
    # gold-standard FSC within the mask is printed only: its mean and 0.5 crossing rank these maps
    # differently seed by seed (converted − consensus mean FSC −0.06…+0.003, conf2pose+focused −
    # focused alone +0.002…+0.07; 0.5 crossings ±0.5 Å) and machine by machine (same seed:
    # converted 0.419 on one machine, 0.474 on another): two halves blurred by the same consensus
    # compromise agree with each other without agreeing with the truth.
    for better, worse in (("converted", "consensus"), ("converted", "focused alone"),
                          ("conf2pose+focused", "focused alone"), ("conf2pose+focused", "consensus")):
        assert m[better]["vs_truth"] > m[worse]["vs_truth"] + 0.02, (better, worse, m[better], m[worse])
    # the run contract
    c2p = chain["dir"] / "c2p"
    s = RunSummary_load(c2p)
    assert s.kind == "conf2pose" and s.final is not None and (c2p / "final" / "half1.mrc").exists()
    # its focused stage ran with today's defaults, not the values kept for runs of older versions
    from gmmcore import defaults

    recorded = json.loads((c2p / "params.json").read_text())
    assert (recorded["band_rule"], recorded["gmm_local_res"]) == (defaults.BAND_RULE, defaults.GMM_LOCAL_RES)
    assert "made before" not in (c2p / "run.log").read_text()
    with np.load(c2p / s.conversion.pose_changes) as z:
        assert z["angle_deg"].shape == (400,) and z["angle_deg"].mean() > 3.0


def test_conf2pose_folder_takes_a_new_focused_stage_and_keeps_an_older_record(chain, tmp_path, capsys):
    """The conversion's identity is its own parameters: ``--focus-iter 0`` (and a focused iteration
    killed before it finished) then a focused stage with another width rule into the same --out
    reuses the conversion (its checkpoints untouched); a
    change after focused iterations is refused in one line; a folder an older version made (its
    focused stage recorded with the legacy band rule) continues as it was made."""
    out = tmp_path / "c2p"
    assert cli("conf2pose", "--from", chain["het"], "--mask", chain["mask"], "--out", out, *C2P_BASE,
               "--focus-iter", 0) == 0
    chunk = out / "convert" / "convert_half1_chunk0000.npz"
    stamp = chunk.stat().st_mtime_ns
    with np.load(out / "convert" / "poses.npz") as z:
        converted = z["rotation"].copy()
    (out / "iter001").mkdir()  # an iteration killed before it finished: not a finished stage
    (out / "iter001" / "align_half1_chunk0000.npz").write_bytes(b"partial")
    assert cli("conf2pose", "--from", chain["het"], "--mask", chain["mask"], "--out", out, *C2P_BASE,
               "--focus-iter", 1, "--width-rule", "sigma") == 0
    assert chunk.stat().st_mtime_ns == stamp
    with np.load(out / "convert" / "poses.npz") as z:
        assert np.array_equal(z["rotation"], converted)
    s = RunSummary_load(out)
    assert len(s.iterations) == 1 and json.loads((out / "params.json").read_text())["width_rule"] == "sigma"
    # fewer focused iterations than the stage finished: it ends at the conversion, iteration 1 stays on
    # disk untouched, and asking for it again loads it
    with np.load(out / "iter001" / "poses.npz") as z:
        focused = z["rotation"].copy()
    kept = {f: f.stat().st_mtime_ns for f in (out / "iter001").iterdir()}
    capsys.readouterr()
    assert cli("conf2pose", "--from", chain["het"], "--mask", chain["mask"], "--out", out, *C2P_BASE,
               "--focus-iter", 0, "--width-rule", "sigma") == 0
    assert "ends at iteration 0" in capsys.readouterr().out
    assert len(RunSummary_load(out).iterations) == 0
    assert np.allclose(read_star(out / "final" / "particles.star").rotation, converted, atol=1e-6)
    assert cli("conf2pose", "--from", chain["het"], "--mask", chain["mask"], "--out", out, *C2P_BASE,
               "--focus-iter", 1, "--width-rule", "sigma") == 0
    assert {f: f.stat().st_mtime_ns for f in (out / "iter001").iterdir()} == kept
    assert len(RunSummary_load(out).iterations) == 1
    assert np.allclose(read_star(out / "final" / "particles.star").rotation, focused, atol=1e-6)
    capsys.readouterr()
    assert cli("conf2pose", "--from", chain["het"], "--mask", chain["mask"], "--out", out, *C2P_BASE,
               "--focus-iter", 1) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "width_rule" in err and "--out" in err, err

    old = tmp_path / "old"  # the chain's finished run, as an older version recorded its focused stage
    shutil.copytree(_conf2pose(chain, chain["dir"] / "c2p"), old)
    record = json.loads((old / "params.json").read_text())
    record.update(band_rule="fsc0143", gmm_local_res="off")
    (old / "params.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert cli("conf2pose", "--from", chain["het"], "--mask", chain["mask"], "--out", old, *C2P_ARGS) == 0
    assert "already complete" in capsys.readouterr().out
    assert json.loads((old / "params.json").read_text())["band_rule"] == "fsc0143"


def test_cli_errors(chain, tmp_path, capsys):
    def one_line_error(*args):
        capsys.readouterr()
        rc = cli(*args)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        return err

    err = one_line_error("heterogeneity", "--from", tmp_path / "nothing", "--out", tmp_path / "o")
    assert "--from" in err and "nothing" in err
    err = one_line_error("conf2pose", "--from", chain["cons"], "--mask", chain["mask"], "--out", tmp_path / "o2")
    assert "not a heterogeneity run" in err and str(chain["cons"]) in err
    from gmmcore.masks import soft_sphere_mask

    # a usable mask (masks.check_mask) in a corner of the box, empty of the particle's Gaussians
    empty, zeros = tmp_path / "empty.mrc", tmp_path / "zeros.mrc"
    for path, data in ((empty, soft_sphere_mask(48, 4, 2, center=(5, 5, 5))), (zeros, np.zeros((48,) * 3, np.float32))):
        with mrcfile.new(str(path)) as m:
            m.set_data(data)
            m.voxel_size = 2.0
    err = one_line_error("conf2pose", "--from", chain["het"], "--mask", empty, "--out", tmp_path / "o3")
    assert "inside the mask" in err and "empty.mrc" in err
    assert not (tmp_path / "o3").exists()
    # an all-zero mask is refused by the one mask check, as in every verb
    err = one_line_error("conf2pose", "--from", chain["het"], "--mask", zeros, "--out", tmp_path / "o4")
    assert "the mask is empty" in err and "zeros.mrc" in err and "--mask" in err
    assert not (tmp_path / "o4").exists()
