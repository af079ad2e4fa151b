"""Headless Scipion demo: simulate -> import -> GMM global refinement -> pictures.

    python -m gmmrefine_scipion.demo --out demo_out        (what ``make demo`` runs)

1. ``gmmcore simulate`` makes particles of adenylate kinase (bundled model; by default 2000
   particles, box 64, 1.6 Å/px, SNR 0.5) with known poses and a copy of them perturbed by 3° and
   1 px (the "input poses", with the truth kept aside).
2. A Scipion project (``<out>/scipion/ScipionUserData/projects/<name>``) runs
   GmmProtImportParticles on the perturbed star, then GmmProtRefine on its output.
3. The viewers' plots are saved as PNGs in ``<out>/pictures``; the resolution and the pose errors
   against the truth (mean and median angle and shift), before and after, are printed and
   written to ``<out>/demo_summary.json``.

No display, no GPU and no download are needed.  The Scipion environment (SCIPION_HOME with a
hosts.conf, SCIPION_USER_DATA, ...) is created under ``<out>/scipion`` unless already set.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from gmmrefine_scipion.headless import setup_scipion_env

# Simulation (``gmmcore simulate`` options, defaults of the demo): adenylate kinase, a few thousand
# particles at a realistic SNR, input poses perturbed by exactly 3° and 1 px.
SIMULATION = {"n": 2000, "box": 64, "apix": 1.6, "snr": 0.5, "perturb_angle": 3.0,
              "perturb_shift": 1.0, "seed": 3}


def simulate(folder, quiet=False, model="builtin:adk-closed", **options):
    """Run the engine's own ``gmmcore simulate`` (a subprocess) into ``folder``: particles of the
    bundled model with known poses (particles_true.star) and a perturbed copy
    (particles_perturbed.star).  ``options``: simulate's options, e.g. ``n=400, perturb_angle=3``."""
    cmd = [sys.executable, "-m", "gmmcore", "simulate", "--model", model, "--out", folder]
    for key, value in options.items():
        cmd += ["--" + key.replace("_", "-"), str(value)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if quiet else None)


def _error_stats(partSet, true_star):
    """{'angle_deg': {mean, median}, 'shift_px': {mean, median}} of a set's poses vs the truth."""
    import numpy as np
    from gmmrefine_scipion.convert import pose_errors
    angles, shifts = pose_errors(partSet, true_star)
    return {"angle_deg": {"mean": float(np.mean(angles)), "median": float(np.median(angles))},
            "shift_px": {"mean": float(np.mean(shifts)), "median": float(np.median(shifts))}}


def _launch(project, prot, name):
    t0 = time.time()
    print("  running %s ..." % name, flush=True)
    project.launchProtocol(prot, wait=True)
    if not prot.isFinished():
        log = prot.getLogPaths()[1] if hasattr(prot, "getLogPaths") else ""
        lines = prot.getLogsLastLines(30, logFile=1) if hasattr(prot, "getLogsLastLines") else []
        raise SystemExit("%s failed (%s). Last lines of %s:\n%s" % (name, prot.getStatus(), log, "\n".join(lines)))
    print("  %s finished in %.0f s" % (name, time.time() - t0), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gmmrefine_scipion.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    for key, default in SIMULATION.items():
        parser.add_argument("--" + key.replace("_", "-"), type=type(default), default=default,
                            help="gmmcore simulate --%s (default %s)" % (key.replace("_", "-"), default))
    parser.add_argument("--iter", type=int, default=3, help="refinement iterations (default 3)")
    parser.add_argument("--gpu", default=None, help="GPU ids (default: CPU)")
    args = parser.parse_args(argv)

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    if os.environ.get("_GMMREFINE_DEMO_ENV") != out:
        # pyworkflow read its configuration when this package was imported (before main): set the
        # Scipion environment, then start again in a fresh interpreter that sees it.
        setup_scipion_env(os.path.join(out, "scipion"))
        os.environ["_GMMREFINE_DEMO_ENV"] = out
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "gmmrefine_scipion.demo"]
                 + list(sys.argv[1:] if argv is None else argv))
    t_start = time.time()

    # 1. simulate (the engine's own verb); an earlier simulation is reused if made with the same options
    sim = os.path.join(out, "simulated")
    options = {key: getattr(args, key) for key in SIMULATION}
    stamp = os.path.join(out, "simulated_options.json")
    if not (os.path.exists(os.path.join(sim, "particles_perturbed.star")) and _read_json(stamp) == options):
        print("Simulating %(n)d particles (box %(box)d, %(apix).2f Å/px, SNR %(snr)g; input poses off by "
              "%(perturb_angle)g° and %(perturb_shift)g px) ..." % options, flush=True)
        simulate(sim, **options)
        with open(stamp, "w") as f:
            json.dump(options, f, indent=1)

    # 2. Scipion project
    from pyworkflow.project import Manager
    from gmmrefine_scipion.protocols import GmmProtImportParticles, GmmProtRefine
    from gmmrefine_scipion.plotting import refine as plots

    name = "gmmrefine_demo_%s" % time.strftime("%Y%m%d_%H%M%S")
    manager = Manager()
    project = manager.createProject(name)
    os.chdir(project.getPath())
    print("Scipion project: %s" % project.getPath(), flush=True)

    imp = project.newProtocol(GmmProtImportParticles, objLabel="import simulated particles",
                              importFrom=0, starFile=os.path.join(sim, "particles_perturbed.star"))
    _launch(project, imp, "import")

    refine = project.newProtocol(GmmProtRefine, objLabel="gmm global refinement",
                                 numberOfIterations=args.iter, useGpu=args.gpu is not None,
                                 gpuList=args.gpu or "0")
    refine.inputParticles.set(imp)
    refine.inputParticles.setExtended("outputParticles")
    _launch(project, refine, "refinement")

    # 3. pictures and numbers
    pictures = plots.plot_all(refine.getSummaryFile(), os.path.join(out, "pictures"))
    summary = refine.getSummary()
    true_star = os.path.join(sim, "particles_true.star")
    before = _error_stats(imp.outputParticles, true_star)
    after = _error_stats(refine.outputParticles, true_star)
    result = {
        "project": project.getPath(),
        "pictures": pictures,
        "simulation": options,
        "resolution_A": {"before": summary.resolution_initial, "after": summary.resolution_final},
        "angle_error_deg": {"before": before["angle_deg"], "after": after["angle_deg"]},
        "shift_error_px": {"before": before["shift_px"], "after": after["shift_px"]},
        "n_particles": refine.outputParticles.getSize(),
        "iterations": len(summary.iterations),
        "seconds": round(time.time() - t_start, 1),
    }
    with open(os.path.join(out, "demo_summary.json"), "w") as f:
        json.dump(result, f, indent=1)

    print("\nScipion project : %s" % result["project"])
    print("  (open it in the Scipion GUI with:  make gui   or   python -m gmmrefine_scipion.gui --out %s)" % out)
    print("Pictures        : %s" % os.path.join(out, "pictures"))
    for key, path in pictures.items():
        print("  %-13s %s" % (key, path))
    print("%d particles, %d iterations; before -> after refinement:" % (result["n_particles"], result["iterations"]))
    print("  resolution (FSC 0.143, masked)   : %6.2f Å  -> %6.2f Å" % (result["resolution_A"]["before"],
                                                                       result["resolution_A"]["after"]))
    for what, key, unit in (("angle", "angle_deg", "° "), ("shift", "shift_px", "px")):
        for stat in ("mean", "median"):
            print("  %-32s : %6.2f %s -> %6.2f %s" % ("%s %s error vs truth" % (stat, what),
                                                     before[key][stat], unit, after[key][stat], unit))
    print("Summary: %s  (%.0f s)" % (os.path.join(out, "demo_summary.json"), result["seconds"]))
    return 0


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())
