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

from . import install
from .constants import (ENGINE_ENV_NAME, GMMREFINE_BACKENDS, GMMREFINE_ENV_ACTIVATION, GMMREFINE_GPU,
                        GMMREFINE_PYTHON)

__version__ = "0.1.0"  # must equal gmmcore.__version__ (checked by Plugin.validateInstallation)
_ENGINE_VERSION = {}
_BACKEND_ERROR = {}
_logo = ""
_references = ["Chen2024"]


class Plugin(pwem.Plugin):
    # The engine environment is checked by validateInstallation (it may live anywhere: the
    # installer's gmmrefine-<version>, conda, a GPU node's venv).  A non-empty _pathVars would make
    # Scipion report "Missing paths" for any protocol of the plugin.
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
    def getEngineEnvName(cls):
        """The installer's package name for the engine environment, e.g. "gmmrefine-0.1.0"."""
        return "%s-%s" % (ENGINE_ENV_NAME, __version__)

    @classmethod
    def getEngineEnvDir(cls):
        """``<EM_ROOT>/gmmrefine-<version>``: where ``scipion3 installp``/``installb`` put the engine."""
        return os.path.join(pwem.Config.EM_ROOT, cls.getEngineEnvName())

    @classmethod
    def _defineVariables(cls):
        env_dir = cls.getEngineEnvDir()
        installed = os.path.exists(os.path.join(env_dir, install.DONE_MARK))
        cls._defineVar(GMMREFINE_PYTHON, "",
                       description="Python interpreter of the environment where gmmcore is installed. "
                                   "Empty: 'python' after GMMREFINE_ENV_ACTIVATION when that is set, "
                                   "else Scipion's own interpreter.")
        cls._defineVar(GMMREFINE_ENV_ACTIVATION,
                       ". %s" % shlex.quote(os.path.join(env_dir, "bin", "activate")) if installed else "",
                       description="Shell command run before gmmcore, e.g. 'conda activate gmmcore'. "
                                   "Default: the engine environment %s made by the installer "
                                   "(empty when it is absent)." % cls.getEngineEnvName())
        cls._defineVar(GMMREFINE_GPU, "0",
                       description="Default GPU ids offered by the gmmrefine forms.")
        cls._defineVar(GMMREFINE_BACKENDS, "tf",
                       description="Array backends installed in the engine environment and checked by "
                                   "validation: tf, jax or 'tf jax' (the installer picks CPU or CUDA builds "
                                   "from nvidia-smi's driver).")

    # ------------------------------------------------------------------ engine
    @classmethod
    def getPython(cls):
        """Interpreter that runs ``python -m gmmcore``: GMMREFINE_PYTHON; else the activated
        environment's own ``python``; else Scipion's interpreter."""
        return cls.getVar(GMMREFINE_PYTHON) or ("python" if cls.getActivation() else sys.executable)

    @classmethod
    def getActivation(cls):
        return (cls.getVar(GMMREFINE_ENV_ACTIVATION) or "").strip()

    @classmethod
    def getBackends(cls):
        """Backend names (GMMREFINE_BACKENDS), e.g. ["tf"]."""
        return install.parse_backends(cls.getVar(GMMREFINE_BACKENDS) or "tf")

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
    def getBackendError(cls):
        """One line saying which backend module cannot be imported by the engine's interpreter
        (and why), or None when gmmcore and every backend of GMMREFINE_BACKENDS import.  Cached."""
        import subprocess
        backends = cls.getBackends()
        key = (cls.getPython(), cls.getActivation(), tuple(backends))
        if key not in _BACKEND_ERROR:
            modules = [install.BACKEND_MODULES[b] for b in backends]
            cmd = "%s -c %s %s" % (cls.getProgram(), shlex.quote(install.check_code()), " ".join(modules))
            try:
                out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=300,
                                     env=cls.getEnviron())
                lines = (out.stderr or out.stdout).strip().splitlines()
                _BACKEND_ERROR[key] = None if out.returncode == 0 else (lines[-1] if lines else "failed")
            except (OSError, subprocess.SubprocessError) as e:
                _BACKEND_ERROR[key] = str(e)
        return _BACKEND_ERROR[key]

    @classmethod
    def getFixCommand(cls):
        """The command that installs the engine and its backend where the plugin looks for them."""
        if cls.getVar(GMMREFINE_PYTHON) or (cls.getActivation() and not cls._usesEngineEnv()):
            extras = install.engine_extras(cls.getBackends(), install.nvidia_driver())
            return "%s -m pip install %s" % (cls.getPython(), install.engine_spec(
                __version__, extras, install.engine_checkout(os.path.dirname(__file__))))
        return "scipion3 installb %s" % cls.getEngineEnvName()

    @classmethod
    def _usesEngineEnv(cls):
        return cls.getEngineEnvDir() in cls.getActivation()

    @classmethod
    def validateInstallation(cls):
        python = cls.getPython()
        where = "%s = %s" % (GMMREFINE_PYTHON, python) if cls.getVar(GMMREFINE_PYTHON) or not cls.getActivation() \
            else "%s = %s" % (GMMREFINE_ENV_ACTIVATION, cls.getActivation())
        if os.path.isabs(python) and not os.path.exists(python):
            return ["%s: interpreter not found; fix: %s" % (where, cls.getFixCommand())]
        engine = cls.getEngineVersion()
        if engine is None:
            return ["%s: 'python -m gmmcore --version' fails (gmmcore missing); fix: %s"
                    % (where, cls.getFixCommand())]
        if engine != __version__:
            return ["gmmcore %s is installed in %s, but this plugin needs %s; fix: %s"
                    % (engine, where, __version__, cls.getFixCommand())]
        error = cls.getBackendError()
        if error:
            return ["%s: the engine cannot import its backend (%s); fix: %s" % (where, error, cls.getFixCommand())]
        return []

    @classmethod
    def defineBinaries(cls, env):
        """The engine environment gmmrefine-<version>: a venv with gmmcore (this plugin's version;
        the checkout's gmmcore/ in editable mode for --devel installs) and the backends of
        GMMREFINE_BACKENDS, CPU or CUDA builds after nvidia-smi's driver (see install.py)."""
        backends = install.parse_backends(os.environ.get(GMMREFINE_BACKENDS)
                                          or cls.getVar(GMMREFINE_BACKENDS) or "tf")
        commands = install.install_commands(sys.executable, __version__, backends, install.nvidia_driver(),
                                            install.engine_checkout(os.path.dirname(__file__)))
        env.addPackage(ENGINE_ENV_NAME, version=__version__, tar="void.tgz", commands=commands,
                       default=True)
