"""Small, valid stand-ins for gmmcore files (no engine run needed): a particle star + stack and a
refine run folder written through the engine's run contract (gmmcore.summary).

Used to test conversions and viewers quickly; the protocol tests run the real engine.
"""
import os

import numpy as np


def write_star_stack(folder, n=24, box=16, apix=2.0, version="31", halves=True, seed=0,
                     flipped=False, stack_name="particles.mrcs"):
    """Write ``folder/particles.star`` (RELION 3.0 or 3.1 layout) + ``folder/<stack_name>``.

    Returns (star path, dict of the true per-particle values).
    """
    import mrcfile

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    stack = os.path.join(folder, stack_name)
    with mrcfile.new(stack, overwrite=True) as m:
        m.set_data(rng.normal(size=(n, box, box)).astype(np.float32))
        m.voxel_size = apix
    truth = {
        "rot": rng.uniform(-180, 180, n),
        "tilt": rng.uniform(5, 175, n),
        "psi": rng.uniform(-180, 180, n),
        "ox_A": rng.uniform(-3, 3, n),
        "oy_A": rng.uniform(-3, 3, n),
        "du": rng.uniform(8000, 20000, n),
        "half": (np.arange(n) % 2) + 1,
    }
    truth["dv"] = truth["du"] - rng.uniform(0, 500, n)
    truth["da"] = rng.uniform(0, 180, n)
    lines = ["# written by gmm_fakes", ""]
    if version != "30":
        lines += ["# version 30001", "", "data_optics", "", "loop_"]
        cols = ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographOriginalPixelSize", "rlnVoltage",
                "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize",
                "rlnImageDimensionality", "rlnCtfDataArePhaseFlipped"]
        lines += ["_%s #%d" % (c, i + 1) for i, c in enumerate(cols)]
        lines += ["opticsGroup1 1 %.4f 300.0 2.7 0.1 %.4f %d 2 %d" % (apix, apix, box, int(flipped)), ""]
        lines += ["# version 30001", "", "data_particles", "", "loop_"]
        cols = ["rlnImageName", "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU",
                "rlnDefocusV", "rlnDefocusAngle", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
                "rlnOriginXAngst", "rlnOriginYAngst", "rlnOpticsGroup"] + (["rlnRandomSubset"] if halves else [])
    else:
        lines += ["data_", "", "loop_"]
        cols = ["rlnImageName", "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU",
                "rlnDefocusV", "rlnDefocusAngle", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
                "rlnOriginX", "rlnOriginY", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                "rlnMagnification", "rlnDetectorPixelSize"] + (["rlnRandomSubset"] if halves else [])
    lines += ["_%s #%d" % (c, i + 1) for i, c in enumerate(cols)]
    for i in range(n):
        vals = ["%06d@%s" % (i + 1, stack_name), "mics/mic%03d.mrc" % (i // 8 + 1),
                "%d" % (100 + 10 * i), "%d" % (200 + 5 * i),
                "%.2f" % truth["du"][i], "%.2f" % truth["dv"][i], "%.3f" % truth["da"][i],
                "%.6f" % truth["rot"][i], "%.6f" % truth["tilt"][i], "%.6f" % truth["psi"][i]]
        if version != "30":
            vals += ["%.6f" % truth["ox_A"][i], "%.6f" % truth["oy_A"][i], "1"]
        else:
            vals += ["%.6f" % (truth["ox_A"][i] / apix), "%.6f" % (truth["oy_A"][i] / apix),
                     "300.0", "2.7", "0.1", "10000.0", "%.4f" % apix]
        if halves:
            vals.append("%d" % truth["half"][i])
        lines.append(" ".join(vals))
    star = os.path.join(folder, "particles.star")
    with open(star, "w") as f:
        f.write("\n".join(lines) + "\n")
    return star, truth


def write_refine_run(folder, n=24, box=16, apix=2.0, iterations=2, ngauss=40, seed=1, star_from=None):
    """A refine output folder as ``gmmcore refine`` writes it (summary.json + final/*), written
    through the engine's own run contract (gmmcore.summary) and GMM format (gmmcore.gmm.model)."""
    import mrcfile
    from gmmcore.gmm.model import GMM
    from gmmcore.summary import FinalFiles, HalfMapReport, IterationRecord, PoseChange, RunSummary

    rng = np.random.default_rng(seed)
    final = os.path.join(folder, "final")
    os.makedirs(final, exist_ok=True)
    freq = np.arange(1, box // 2 + 1) / (box * apix)

    def fsc_curve(res):
        f0 = 1.0 / res
        return (1.0 / (1.0 + np.exp((freq - f0) / (0.08 * freq.max())))).tolist()

    def report(res):
        return HalfMapReport(resolution=res, resolution_unmasked=res + 0.5, resolution_masked=res,
                             fsc={"freq": freq.tolist(), "unmasked": fsc_curve(res + 0.5), "masked": fsc_curve(res)})

    iters = []
    for it in range(1, iterations + 1):
        res = 12.0 - 2.0 * it
        iters.append(IterationRecord(
            iteration=it, target_resolution=res + 1, report=report(res),
            pose_change=PoseChange(angle_mean=3.0 / it, angle_median=2.5 / it, shift_mean=0.8 / it,
                                   shift_median=0.6 / it),
            frc={"before": {"1": 0.3, "2": 0.3}, "after": {"1": 0.35, "2": 0.35}},
            gmm_fsc={"1": 0.8, "2": 0.79}, n_gaussians={"1": ngauss, "2": ngauss}, seconds=1.5,
            dir="iter%03d" % it))
    for name in ("half1", "half2", "map"):
        with mrcfile.new(os.path.join(final, name + ".mrc"), overwrite=True) as m:
            m.set_data(rng.normal(size=(box, box, box)).astype(np.float32))
            m.voxel_size = apix
    for h in ("1", "2"):
        g = GMM(rng.normal(scale=8.0, size=(ngauss, 3)), rng.uniform(0.2, 1.0, ngauss), rng.uniform(1.0, 3.0, ngauss))
        g.save(os.path.join(final, "gmm_half%s.gmm.npz" % h))
        g.save_pdb(os.path.join(final, "gmm_half%s.pdb" % h))
    np.savez(os.path.join(final, "pose_changes.npz"),
             angle_deg=np.abs(rng.normal(scale=3.0, size=n)), shift_px=np.abs(rng.normal(scale=0.7, size=n)))
    if star_from is not None:
        import shutil
        shutil.copy(star_from, os.path.join(final, "particles.star"))
    summary = RunSummary(kind="global", params={"iterations": iterations, "ngauss": ngauss, "sym": "C1"},
                         n_particles={"1": n // 2, "2": n - n // 2}, initial=report(14.0), iterations=iters,
                         final=FinalFiles(resolution=iters[-1].resolution, resolution_initial=14.0))
    summary.save(folder)
    return os.path.join(folder, "summary.json")


def write_heterogeneity_run(folder, n=40, box=16, apix=2.0, latent_dim=3, bins=3, epochs=(4, 2), seed=2):
    """A heterogeneity output folder as ``gmmcore heterogeneity`` writes it (summary.json,
    final/latents.csv, maps along PC1), written through the engine's run contract."""
    import mrcfile
    from gmmcore.heter.latent import write_latents_csv
    from gmmcore.summary import HeterogeneitySummary, LatentHalfReport

    rng = np.random.default_rng(seed)
    final = os.path.join(folder, "final")
    os.makedirs(os.path.join(final, "bins"), exist_ok=True)
    half = (np.arange(n) % 2) + 1
    latent = rng.normal(size=(n, latent_dim)).astype(np.float32)
    pcs = np.stack([latent[:, 0], latent[:, 1]], 1)
    names = ["%06d@particles.mrcs" % (i + 1) for i in range(n)]
    write_latents_csv(os.path.join(final, "latents.csv"), names, half, latent, pcs)
    halves = {}
    for h in (1, 2):
        rep = LatentHalfReport(n_particles=int((half == h).sum()), network="final/network_half%d.npz" % h,
                               explained_variance_ratio=[0.6, 0.3, 0.1], frc_neutral=0.30, frc_decoded=0.32,
                               gmm_fsc_neutral=0.8, gmm_fsc_decoder_zero=0.8)
        rep.history = [{"round": r, "epoch": e + 1, "loss": 0.7 - 0.01 * k, "frc": 0.3 + 0.01 * k, "seconds": 1.0}
                       for k, (r, e) in enumerate([("anchors", e) for e in range(epochs[0])] +
                                                  [("full", e) for e in range(epochs[1])])]
        for k in range(bins):
            stem = "bins/half%d_bin%d" % (h, k + 1)
            with mrcfile.new(os.path.join(final, stem + ".mrc"), overwrite=True) as m:
                m.set_data(rng.normal(size=(box, box, box)).astype(np.float32))
                m.voxel_size = apix
            rep.bins.append({"pc1": float(k - 1), "n": n // (2 * bins), "gmm": "final/%s.gmm.npz" % stem,
                             "gmm_pdb": "final/%s.pdb" % stem, "map": "final/%s.mrc" % stem})
        halves[str(h)] = rep
    HeterogeneitySummary(latent_dim=latent_dim, resolution_A=8.0, minres_A=40.0,
                         n_particles={"1": n // 2, "2": n - n // 2}, halves=halves).save(folder)
    return os.path.join(folder, "summary.json")


def write_conf2pose_run(folder, n=24, box=16, apix=2.0, seed=3):
    """A conf2pose output folder (a refine-like run of kind "conf2pose" with the conversion's
    record and pose changes), written through the engine's run contract."""
    from gmmcore.summary import Conversion, HalfMapReport, PoseChange
    s = _focused_summary(folder, "conf2pose", n, box, apix, seed)
    s.consensus = HalfMapReport.from_json({**s.initial.to_json(), "resolution": 11.0})
    os.makedirs(os.path.join(folder, "convert"), exist_ok=True)
    rng = np.random.default_rng(seed)
    np.savez(os.path.join(folder, "convert", "pose_changes.npz"), angle_deg=np.abs(rng.normal(scale=5.0, size=n)),
             shift_px=np.abs(rng.normal(scale=0.5, size=n)), half=(np.arange(n) % 2) + 1)
    s.conversion = Conversion(pose_change=PoseChange(angle_mean=5.0, angle_median=4.0, shift_mean=0.5,
                                                     shift_median=0.4),
                              pose_changes="convert/pose_changes.npz", particles="convert/particles.star",
                              resolution_region=9.0)
    s.save(folder)
    return os.path.join(folder, "summary.json")


def write_focused_run(folder, n=24, box=16, apix=2.0, seed=4):
    """A refine-focused output folder (kind "focused": the FSC within the focus mask at the start
    and after each iteration), written through the engine's run contract."""
    s = _focused_summary(folder, "focused", n, box, apix, seed)
    s.final.resolution_focus_initial, s.final.resolution_focus = 9.0, 8.0
    s.save(folder)
    return os.path.join(folder, "summary.json")


def _focused_summary(folder, kind, n, box, apix, seed):
    """A one-iteration refine run of ``kind`` with the FSC within a focus mask at the start (9 Å)
    and after the iteration (8 Å); returns its RunSummary (not saved yet)."""
    from gmmcore.summary import RunSummary
    write_refine_run(folder, n=n, box=box, apix=apix, iterations=1, seed=seed)
    s = RunSummary.load(folder)
    s.kind = kind
    s.initial.resolution_focus, s.initial.fsc_focus = 9.0, list(s.initial.fsc["masked"])
    for rec in s.iterations:
        rec.report.resolution_focus, rec.report.fsc_focus = 8.0, list(rec.report.fsc["masked"])
    return s


def pose_precision(region_deg=4.5, particle_deg=1.2, resolution=8.0, gaussians=12, mass=0.3, n=12):
    """A focused-like run's ``pose_precision`` ({"region", "particle"} PosePrecision, the
    Cramér–Rao bounds of a per-particle pose) with the given angles (degrees)."""
    from gmmcore.summary import PosePrecision

    def bound(angle, count, fraction):
        return PosePrecision(angle_deg=angle, shift_px=angle / 4.0, axis_deg=(angle, angle, angle / 2.0),
                             resolution_A=resolution, region_gaussians=count, region_mass=fraction, n_particles=n)
    return {"region": bound(region_deg, gaussians, mass), "particle": bound(particle_deg, 40, 1.0)}


def write_patches_run(folder, patches=2, n=24, box=16, apix=2.0, precision=None, warnings=None, seed=5):
    """A refine-patches output folder (kind "patches") whose patches are finished focused runs
    of kind "patch" in ``patch_NN/``; ``precision`` / ``warnings``: per patch (lists), each patch
    run's ``pose_precision`` and ``warnings``. No composite (the Summary tab needs none)."""
    from gmmcore.summary import PatchRecord, RunSummary
    write_refine_run(folder, n=n, box=box, apix=apix, iterations=1, seed=seed)
    top = RunSummary.load(folder)
    top.kind, top.iterations, top.final, top.patches = "patches", [], None, []
    for k in range(1, patches + 1):
        name = "patch_%02d" % k
        s = _focused_summary(os.path.join(folder, name), "patch", n, box, apix, seed + k)
        s.final.resolution_focus_initial, s.final.resolution_focus = 9.0, 8.0
        s.patch, s.parent = k, os.path.abspath(folder)
        s.pose_precision = precision[k - 1] if precision else None
        s.warnings = list(warnings[k - 1]) if warnings else []
        s.save()
        top.patches.append(PatchRecord(index=k, dir=name, mask="%s_mask.mrc" % name, center_A=[0.0, 0.0, 0.0],
                                       radius_A=10.0, n_gaussians=20, complete=True, resolution=s.resolution_final,
                                       resolution_focus=8.0, resolution_focus_initial=9.0,
                                       particles="%s/final/particles.star" % name, summary="%s/summary.json" % name))
    top.save(folder)
    return os.path.join(folder, "summary.json")
