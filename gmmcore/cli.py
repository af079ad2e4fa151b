"""``gmmcore <verb>``: the engine's command line.

Each verb is a module of :mod:`gmmcore.commands` with ``configure_parser(parser)`` and
``run(args) -> int``; its docstring is the verb's help (first line: the summary).  Only the module
of the verb being run is imported, so ``--help`` stays fast.  Any
:class:`~gmmcore.errors.InputError` ends the command with one line on stderr and exit code 2 —
never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional, Sequence

# TensorFlow / absl / XLA start-up noise is silenced before any verb can load a backend (a failing
# command prints its one error line, nothing else); a user's own setting wins
for _name, _value in (("TF_CPP_MIN_LOG_LEVEL", "3"), ("GRPC_VERBOSITY", "ERROR"), ("GLOG_minloglevel", "2"),
                      ("ABSL_MIN_LOG_LEVEL", "3")):
    os.environ.setdefault(_name, _value)

from . import __version__
from .errors import InputError

# verb -> module (in the order `gmmcore --help` lists them)
VERBS = {
    "import": "gmmcore.commands.import_particles",
    "reconstruct": "gmmcore.commands.reconstruct",
    "build-gmm": "gmmcore.commands.build_gmm",
    "refine": "gmmcore.commands.refine",
    "export": "gmmcore.commands.export_particles",
    "simulate": "gmmcore.commands.simulate",
    "refine-focused": "gmmcore.commands.refine_focused",
    "refine-patches": "gmmcore.commands.refine_patches",
    "expand-symmetry": "gmmcore.commands.expand_symmetry",
    "local-resolution": "gmmcore.commands.local_resolution",
    "heterogeneity": "gmmcore.commands.heterogeneity",
    "conf2pose": "gmmcore.commands.conf2pose",
}


def _doc(module) -> tuple:
    """(one-line summary, full description) from a verb module's docstring."""
    doc = (module.__doc__ or "").strip()
    return doc.split("\n", 1)[0].rstrip("."), doc


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser for ``argv``: every verb's sub-parser, configured only for the verb named in
    ``argv`` (all of them when none is, e.g. for ``gmmcore --help``)."""
    parser = argparse.ArgumentParser(prog="gmmcore", description="GMM-based refinement of cryo-EM particle poses.")
    parser.add_argument("--version", action="version", version=f"gmmcore {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    sub.required = True
    named = [a for a in argv if a in VERBS]
    for verb, modname in VERBS.items():
        if named and verb != named[0]:
            sub.add_parser(verb, add_help=False)
            continue
        module = importlib.import_module(modname)
        summary, description = _doc(module)
        p = sub.add_parser(verb, help=summary, description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure_parser(p)
        # set by the Scipion plugin: errors name the form field instead of the option (OPTION=LABEL)
        p.add_argument("--form-field", action="extend", nargs="+", default=[], metavar="OPTION=LABEL",
                       help=argparse.SUPPRESS)
    return parser


def _verb_options(parser: argparse.ArgumentParser, verb: str) -> set:
    """The option strings the verb's sub-parser accepts (an error suggests only these)."""
    for action in parser._subparsers._group_actions:  # noqa: SLF001 - argparse has no public accessor
        sub = action.choices.get(verb)
        if sub is not None:
            return {o for a in sub._actions for o in a.option_strings}  # noqa: SLF001
    return set()


def _form_fields(args) -> dict:
    fields = {}
    for item in getattr(args, "form_field", None) or []:
        opt, _, label = str(item).partition("=")
        if label:
            fields["--" + opt.lstrip("-")] = label
    return fields


def main(argv: Optional[List[str]] = None) -> int:
    """Run one verb.  Every verb alike: SIGTERM unwinds like Ctrl-C ("interrupted", exit code 130;
    re-running the command continues), an InputError is one line (exit code 2) and leaves nothing
    the command wrote, the output's lock is released at the end."""
    from .safewrite import release_claims, sigterm_as_interrupt

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        with sigterm_as_interrupt():
            return _run(parser, args)
    finally:  # a refused command (InputError) leaves nothing; a crash or an interrupt keeps what resumes
        release_claims(refused=getattr(args, "_refused", False))


def _run(parser: argparse.ArgumentParser, args) -> int:
    module = importlib.import_module(VERBS[args.verb])
    try:
        return int(module.run(args) or 0)
    except InputError as exc:
        args._refused = True
        line = f"gmmcore {args.verb}: error: " + exc.render(_verb_options(parser, args.verb), _form_fields(args))
        print(line, file=sys.stderr)
        _record_error(line)
        return 2
    except ModuleNotFoundError as exc:  # an array library this environment lacks: say which, and what to do
        return _fail(args.verb, _missing_library(exc, args))
    except OSError as exc:  # a full disk, a read-only file system, ...: one line, not a traceback
        from .safewrite import os_error_line

        return _fail(args.verb, os_error_line(exc))
    except KeyboardInterrupt:
        print(f"gmmcore {args.verb}: interrupted (run the same command again to continue)", file=sys.stderr)
        return 130


def _fail(verb: str, text: Optional[str]) -> int:
    """Print (and record) one error line, exit code 2; re-raise the exception being handled when
    there is no line for it (``text`` None)."""
    if text is None:
        raise
    line = f"gmmcore {verb}: error: {text}"
    print(line, file=sys.stderr)
    _record_error(line)
    return 2


_LIBRARIES = {"tensorflow": ("TensorFlow", "tf", "jax"), "jax": ("JAX", "jax", "tf"), "jaxlib": ("JAX", "jax", "tf")}


def _missing_library(exc: ModuleNotFoundError, args) -> Optional[str]:
    """The one-line error for a missing TensorFlow or JAX (None for any other missing module)."""
    name = (exc.name or "").split(".")[0]
    if name not in _LIBRARIES:
        return None
    label, backend, other = _LIBRARIES[name]
    text = f"{label} is not installed in this Python environment ({sys.executable})"
    if getattr(args, "backend", None) == backend:
        return f"{text}: install it, or choose the other array backend (--backend {other})"
    if args.verb in ("heterogeneity", "conf2pose"):
        return f"{text}: the heterogeneity networks run on TensorFlow only; install it (see the README)"
    return f"{text}: install it (see the README)"


def _record_error(line: str) -> None:
    """Also write the one-line error to $GMMCORE_ERROR_FILE (how the Scipion plugin shows it)."""
    path = os.environ.get("GMMCORE_ERROR_FILE")
    if path:
        try:
            with open(path, "w") as fh:
                fh.write(line + "\n")
        except OSError:
            pass


if __name__ == "__main__":
    raise SystemExit(main())
