"""``gmmcore <verb>``: the engine's command line.

Each verb lives in the module that owns its logic; that module exposes
``configure_parser(parser)`` and ``run(args) -> int``.  Modules are imported lazily so ``--help``
stays fast.  Any :class:`~gmmcore.errors.InputError` ends the command with one line on stderr and
exit code 2 — never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

from . import __version__
from .errors import InputError

# verb -> (module, one-line help)
VERBS = {
    "import": ("gmmcore.importer", "import particles from a RELION star or cryoSPARC .cs (phase-flipped stack)"),
    "export": ("gmmcore.exporter", "write particles as a RELION star or cryoSPARC .cs"),
    "simulate": ("gmmcore.simulate", "simulate particles from an atomic model (truth + perturbed poses)"),
    "reconstruct": ("gmmcore.reconstruct", "reconstruct half maps and measure gold-standard FSC"),
    "build-gmm": ("gmmcore.gmm.build", "build a Gaussian mixture model from a map"),
    "refine": ("gmmcore.refine", "GMM global pose refinement (gold standard)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gmmcore", description="GMM-based refinement of cryo-EM particle poses.")
    parser.add_argument("--version", action="version", version=f"gmmcore {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    sub.required = True
    argv = sys.argv[1:]
    for verb, (modname, help_) in VERBS.items():
        p = sub.add_parser(verb, help=help_, description=help_)
        # Only import the module of the verb being run (or all of them for the top-level --help).
        if verb in argv or not any(v in argv for v in VERBS):
            try:
                importlib.import_module(modname).configure_parser(p)
            except ModuleNotFoundError as exc:  # verb not built yet
                if exc.name != modname:
                    raise
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:])
    module = importlib.import_module(VERBS[args.verb][0])
    try:
        return int(module.run(args) or 0)
    except InputError as exc:
        print(f"gmmcore {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gmmcore {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
