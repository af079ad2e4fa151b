"""Headless Scipion demo: simulate -> import -> GMM global refinement -> pictures.

    python -m gmmrefine_scipion.demo --out demo_out        (what ``make demo`` runs)

1. ``gmmcore simulate`` makes particles of adenylate kinase (bundled model) with known poses and
   a perturbed copy of them (the "input poses", with the truth kept aside).
2. A Scipion project (``<out>/scipion/ScipionUserData/projects/<name>``) runs
   GmmProtImportParticles on the perturbed star, then GmmProtRefine on its output.
3. The viewers' plots are saved as PNGs in ``<out>/pictures``; the resolution and the pose error
   against the truth, before and after, are printed and written to ``<out>/demo_summary.json``.

No display, no GPU and no download are needed.  The Scipion environment (SCIPION_HOME with a
hosts.conf, SCIPION_USER_DATA, ...) is created under ``<out>/scipion`` unless already set.
"""
import argparse
import json
import os
import subprocess
import sys
import time


def _setup_scipion_env(root):
    """Environment for a headless Scipion; must run before pyworkflow is imported."""
    env = {
        "SCIPION_DOMAIN": "pwem",
        "SCIPION_HOME": os.path.join(root, "scipion_home"),
        "SCIPION_USER_DATA": os.path.join(root, "ScipionUserData"),
        "SCIPION_PYTHON": sys.executable,
        "SCIPION_TESTS": os.path.join(root, "scipion_home", "data", "tests"),
        "SCIPION_TEST_NOSYNC": "1",
        "SCIPION_NOTIFY": "False",
        "MPLBACKEND": "Agg",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    for key, value in env.items():
        os.environ.setdefault(key, value)
    hosts = os.path.join(os.environ["SCIPION_HOME"], "config", "hosts.conf")
    if not os.path.exists(hosts):
        os.makedirs(os.path.dirname(hosts), exist_ok=True)
        with open(hosts, "w") as f:
            f.write("[localhost]\nPARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d %_(COMMAND)s\n")
    os.makedirs(os.environ["SCIPION_USER_DATA"], exist_ok=True)


def _pose_errors(partSet, true_star):
    import numpy as np
    from gmmrefine_scipion import convert
    angles, shifts = convert.pose_errors(partSet, true_star)
    return float(np.median(angles)), float(np.median(shifts))


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
    parser.add_argument("--n", type=int, default=1000, help="particles (default 1000)")
    parser.add_argument("--box", type=int, default=64, help="box in pixels (default 64)")
    parser.add_argument("--apix", type=float, default=1.6, help="pixel size in Å (default 1.6)")
    parser.add_argument("--snr", type=float, default=0.5, help="simulated SNR (default 0.5)")
    parser.add_argument("--perturb-angle", type=float, default=4.0, help="input pose error, degrees")
    parser.add_argument("--perturb-shift", type=float, default=1.0, help="input shift error, pixels")
    parser.add_argument("--iter", type=int, default=3, help="refinement iterations (default 3)")
    parser.add_argument("--gpu", default=None, help="GPU ids (default: CPU)")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    if os.environ.get("_GMMREFINE_DEMO_ENV") != out:
        # pyworkflow read its configuration when this package was imported (before main): set the
        # Scipion environment, then start again in a fresh interpreter that sees it.
        _setup_scipion_env(os.path.join(out, "scipion"))
        os.environ["_GMMREFINE_DEMO_ENV"] = out
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "gmmrefine_scipion.demo"]
                 + list(sys.argv[1:] if argv is None else argv))
    t_start = time.time()

    # 1. simulate (the engine's own verb)
    sim = os.path.join(out, "simulated")
    if not os.path.exists(os.path.join(sim, "particles_perturbed.star")):
        print("Simulating %d particles (box %d, %.2f Å/px) ..." % (args.n, args.box, args.apix), flush=True)
        subprocess.run([sys.executable, "-m", "gmmcore", "simulate", "--model", "builtin:adk-closed",
                        "--n", str(args.n), "--box", str(args.box), "--apix", str(args.apix),
                        "--snr", str(args.snr), "--perturb-angle", str(args.perturb_angle),
                        "--perturb-shift", str(args.perturb_shift), "--seed", str(args.seed),
                        "--out", sim], check=True)

    # 2. Scipion project
    from pyworkflow.project import Manager
    from gmmrefine_scipion.protocols import GmmProtImportParticles, GmmProtRefine
    from gmmrefine_scipion.viewers import plots

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
    before = _pose_errors(imp.outputParticles, true_star)
    after = _pose_errors(refine.outputParticles, true_star)
    result = {
        "project": project.getPath(),
        "pictures": pictures,
        "resolution_A": {"before": summary["initial"]["resolution"], "after": summary["final"]["resolution"]},
        "median_angle_error_deg": {"before": before[0], "after": after[0]},
        "median_shift_error_px": {"before": before[1], "after": after[1]},
        "n_particles": refine.outputParticles.getSize(),
        "iterations": len(summary.get("iterations", [])),
        "seconds": round(time.time() - t_start, 1),
    }
    with open(os.path.join(out, "demo_summary.json"), "w") as f:
        json.dump(result, f, indent=1)

    print("\nScipion project : %s" % result["project"])
    print("  (open it with:  SCIPION_USER_DATA=%s scipion3 project %s)" % (os.environ["SCIPION_USER_DATA"], name))
    print("Pictures        : %s" % os.path.join(out, "pictures"))
    for key, path in pictures.items():
        print("  %-13s %s" % (key, path))
    print("Resolution (FSC 0.143, masked): %.2f Å -> %.2f Å" % (result["resolution_A"]["before"],
                                                                 result["resolution_A"]["after"]))
    print("Pose error vs truth (median)  : %.2f° -> %.2f°,  %.2f px -> %.2f px"
          % (before[0], after[0], before[1], after[1]))
    print("Summary: %s  (%.0f s)" % (os.path.join(out, "demo_summary.json"), result["seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
