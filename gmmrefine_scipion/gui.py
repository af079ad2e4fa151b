"""Open the demo's Scipion project in the Scipion GUI (what ``make gui`` runs after ``make demo``).

    python -m gmmrefine_scipion.gui [--out demo_out] [--project NAME]

It uses the headless environment the demo created (``<out>/scipion``: SCIPION_HOME,
SCIPION_USER_DATA, ...) and opens the newest demo project (or ``--project``) in pyworkflow's project
window — the same window ``scipion3 project NAME`` shows, without needing the ``scipion`` launcher,
which the two set-up commands do not install.  It needs a display (``DISPLAY``; a virtual one from
Xvfb works).  ``--close-after S`` closes the window after S seconds (used by the tests to check that
the GUI starts).
"""
import argparse
import os
import sys

from gmmrefine_scipion.headless import setup_scipion_env


def _projects_dir():
    return os.path.join(os.environ["SCIPION_USER_DATA"], "projects")


def newest_project(prefix="gmmrefine_demo_"):
    """Name of the most recently created project whose name starts with ``prefix``, or None."""
    folder = _projects_dir()
    if not os.path.isdir(folder):
        return None
    names = [n for n in os.listdir(folder) if n.startswith(prefix) and os.path.isdir(os.path.join(folder, n))]
    return max(names, key=lambda n: os.path.getmtime(os.path.join(folder, n))) if names else None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gmmrefine_scipion.gui", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="demo_out", help="the folder `make demo` wrote (default demo_out)")
    parser.add_argument("--project", default=None, help="project name (default: the newest demo project)")
    parser.add_argument("--close-after", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    out = os.path.abspath(args.out)
    scipion = os.path.join(out, "scipion")
    if not os.path.isdir(scipion):
        sys.exit("%s has no Scipion project yet: run `make demo` first." % out)
    if os.environ.get("_GMMREFINE_GUI_ENV") != out:
        # pyworkflow reads its configuration when first imported: set it, then start again
        # optimised (-O), the way the scipion launcher runs the project window.
        setup_scipion_env(scipion)
        os.environ["_GMMREFINE_GUI_ENV"] = out
        os.environ.pop("MPLBACKEND", None)  # the viewers open real windows here
        os.execv(sys.executable, [sys.executable, "-O", "-m", "gmmrefine_scipion.gui"]
                 + list(sys.argv[1:] if argv is None else argv))
    if not os.environ.get("DISPLAY"):
        sys.exit("No display (DISPLAY is not set): the Scipion GUI needs one (e.g. run it under xvfb-run).")

    name = args.project or newest_project()
    path = os.path.join(_projects_dir(), name) if name else None
    if not path or not os.path.isdir(path):
        sys.exit("No project %s in %s: run `make demo` first." % (name or "gmmrefine_demo_*", _projects_dir()))

    from pyworkflow.gui.project import ProjectWindow
    os.chdir(path)
    print("Opening Scipion project %s" % path, flush=True)
    window = ProjectWindow(path)
    if args.close_after is not None:
        def close():
            print("GUI started: %s" % window.root.title(), flush=True)
            window.root.destroy()
            os._exit(0)  # pyworkflow's project window keeps threads and timers alive
        window.root.after(int(1000 * args.close_after), close)
    window.show()
    # The window is closed: leave now (pyworkflow's project window keeps non-daemon threads alive).
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
