"""Scipion 3 plugin for gmmrefine: GMM-based refinement of cryo-EM particle poses.

The plugin is thin: protocol forms, conversion between Scipion objects and the star files the
engine reads, viewers.  All numerics run in the ``gmmcore`` engine, started as a subprocess
(``<GMMREFINE_PYTHON> -m gmmcore <verb> ...``) so that the engine may live in its own (GPU)
environment.  Reference: Chen, Schmid & Chiu, Nat Methods 21:37-40 (2024).
"""
import os
import shlex
import sys

import pwem
import pyworkflow.utils as pwutils

from .constants import GMMREFINE_ENV_ACTIVATION, GMMREFINE_GPU, GMMREFINE_PYTHON

__version__ = "0.1.0"  # must equal gmmcore.__version__ (checked by Plugin.validateInstallation)
_ENGINE_VERSION = {}
_logo = ""
_references = ["Chen2024"]


class Plugin(pwem.Plugin):
    # Pure-Python plugin: no installed binaries to check.  A non-empty _pathVars makes Scipion
    # report "Missing paths" when validating any protocol of the plugin.
    _homeVar = ""
    _pathVars = []
    _supportedVersions = [__version__]
    # No project web site yet: the help link is the method's paper.
    _url = "https://doi.org/10.1038/s41592-023-02082-9"

    def getName(self):
        """The short name Scipion shows before protocol labels ("gmmrefine - gmm global refinement");
        the Python package stays gmmrefine_scipion."""
        return "gmmrefine"

    @classmethod
    def _defineVariables(cls):
        cls._defineVar(GMMREFINE_PYTHON, sys.executable,
                       description="Python interpreter of the environment where gmmcore is "
                                   "installed (default: Scipion's own interpreter).")
        cls._defineVar(GMMREFINE_ENV_ACTIVATION, "",
                       description="Optional command run before gmmcore in the same shell, "
                                   "e.g. 'conda activate gmmcore'. Empty: none.")
        cls._defineVar(GMMREFINE_GPU, "0",
                       description="Default GPU ids offered by the gmmrefine forms.")

    # ------------------------------------------------------------------ engine
    @classmethod
    def getPython(cls):
        """Interpreter that runs ``python -m gmmcore``."""
        return cls.getVar(GMMREFINE_PYTHON) or sys.executable

    @classmethod
    def getActivation(cls):
        return (cls.getVar(GMMREFINE_ENV_ACTIVATION) or "").strip()

    @classmethod
    def getDefaultGpu(cls):
        return cls.getVar(GMMREFINE_GPU) or "0"

    @classmethod
    def getProgram(cls):
        """Program string for ``Protocol.runJob``: the interpreter, preceded by the environment
        activation when one is configured (runJob runs the command line through a shell)."""
        python = shlex.quote(cls.getPython())
        activation = cls.getActivation()
        if activation:
            return "%s %s && %s" % (cls.getCondaActivationCmd() if "conda" in activation else "",
                                    activation, python)
        return python

    @classmethod
    def getGmmcoreArgs(cls, verb, *args, **options):
        """Arguments (after the interpreter) for ``python -m gmmcore <verb> ...``.

        ``options`` become ``--name value`` (underscores -> dashes); ``True`` gives a bare flag,
        ``None``/``False`` are left out, lists give repeated values after one flag.
        """
        parts = ["-m", "gmmcore", verb]
        parts += [str(a) for a in args]
        for key, value in options.items():
            if value is None or value is False:
                continue
            flag = "--" + key.replace("_", "-")
            if value is True:
                parts.append(flag)
            elif isinstance(value, (list, tuple)):
                parts.append(flag)
                parts += [str(v) for v in value]
            else:
                parts += [flag, str(value)]
        return " ".join(shlex.quote(p) for p in parts)

    @classmethod
    def getGmmcoreCommand(cls, verb, *args, **options):
        """The full command line, e.g. for logs or for running outside Scipion."""
        return "%s %s" % (cls.getProgram(), cls.getGmmcoreArgs(verb, *args, **options))

    @classmethod
    def getEnviron(cls):
        """Environment for gmmcore: Scipion's, without PYTHONPATH when the engine runs in
        another interpreter (it would shadow that environment's packages)."""
        environ = pwutils.Environ(os.environ)
        python = cls.getPython()
        if os.path.realpath(python) != os.path.realpath(sys.executable) or cls.getActivation():
            environ.pop("PYTHONPATH", None)
        environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # tqdm progress bars in Scipion's log files: one line per update, not carriage returns.
        environ.setdefault("PYTHONUNBUFFERED", "1")
        return environ

    @classmethod
    def getEngineVersion(cls):
        """``gmmcore --version`` of the configured interpreter, e.g. "0.1.0", or None if it fails."""
        import subprocess
        key = (cls.getPython(), cls.getActivation())
        if key not in _ENGINE_VERSION:
            cmd = "%s -m gmmcore --version" % cls.getProgram()
            try:
                out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=120,
                                     env=cls.getEnviron())
                text = (out.stdout + out.stderr).strip().split()
                _ENGINE_VERSION[key] = text[-1] if out.returncode == 0 and text else None
            except (OSError, subprocess.SubprocessError):
                _ENGINE_VERSION[key] = None
        return _ENGINE_VERSION[key]

    @classmethod
    def validateInstallation(cls):
        python = cls.getPython()
        if not os.path.exists(python):
            return ["%s = %s: interpreter not found." % (GMMREFINE_PYTHON, python)]
        engine = cls.getEngineVersion()
        if engine is None:
            return ["%s = %s: 'python -m gmmcore --version' fails: install gmmcore in that environment "
                    "(pip install scipion-em-gmmrefine)." % (GMMREFINE_PYTHON, python)]
        if engine != __version__:
            return ["gmmcore %s is installed in %s, but this plugin needs %s: install the matching "
                    "version in that environment." % (engine, python, __version__)]
        return []

    @classmethod
    def defineBinaries(cls, env):
        # Nothing to install: gmmcore is a Python package (pip install scipion-em-gmmrefine,
        # or into a separate environment named by GMMREFINE_PYTHON).
        pass
