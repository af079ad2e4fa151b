"""The engine environment ``gmmrefine-<version>``: what Scipion's installer runs to create it.

``Plugin.defineBinaries`` turns these commands into one Scipion package: a plain
``python -m venv`` in ``<EM_ROOT>/gmmrefine-<version>`` and ``pip install`` of the engine
(``gmmcore``, this plugin's version) with its array backend chosen for the machine:

=====================================  ==========  ===========================================
``nvidia-smi`` driver                  CUDA        backend installed (extra of ``gmmcore``)
=====================================  ==========  ===========================================
none, or older than 525.60             (CPU)       TensorFlow CPU (``tf``); JAX CPU (``jax``)
525.60 or newer                        12.x        TensorFlow with its CUDA 12 wheels (``tf-cuda``);
                                                   JAX with CUDA 12 (``jax-cuda12``)
=====================================  ==========  ===========================================

The CUDA libraries come as pip wheels with the backend: only the driver is needed on the machine.
Nothing here imports Scipion (the installer and the tests call it directly).
"""
from __future__ import annotations

import os
import shlex
import subprocess
from typing import Optional, Sequence

#: Oldest driver that runs CUDA 12 (major, minor), the CUDA of the pip-installed backends.
CUDA12_MIN_DRIVER = (525, 60)
#: Backend name (GMMREFINE_BACKENDS) -> gmmcore extra on a CPU-only machine / with CUDA 12.
BACKEND_EXTRAS = {"tf": ("tf", "tf-cuda"), "jax": ("jax", "jax-cuda12")}
#: Backend name -> the module the engine imports for it.
BACKEND_MODULES = {"tf": "tensorflow", "jax": "jax"}
#: Written last by the install: its presence means the environment is complete.
DONE_MARK = "gmmrefine-installed.txt"


def parse_backends(text: str) -> list[str]:
    """``"tf"``, ``"jax"``, ``"tf jax"`` (or commas) -> names; unknown names raise ValueError."""
    names = [n for n in text.replace(",", " ").split() if n]
    unknown = [n for n in names if n not in BACKEND_EXTRAS]
    if unknown or not names:
        raise ValueError("GMMREFINE_BACKENDS=%r: use tf, jax or 'tf jax'" % text)
    return names


def nvidia_driver() -> Optional[tuple[int, int]]:
    """The NVIDIA driver version (major, minor) that ``nvidia-smi`` reports, or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    parts = out.stdout.split()[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None


def uses_cuda(driver: Optional[tuple[int, int]]) -> bool:
    """True when the driver runs the CUDA 12 backends (see the table above)."""
    return driver is not None and tuple(driver) >= CUDA12_MIN_DRIVER


def engine_extras(backends: Sequence[str], driver: Optional[tuple[int, int]]) -> list[str]:
    """gmmcore extras for the backends on a machine with this driver, e.g. ``["tf"]``."""
    return [BACKEND_EXTRAS[b][1 if uses_cuda(driver) else 0] for b in backends]


def engine_checkout(plugin_dir: str) -> Optional[str]:
    """The engine's project folder beside the plugin package in a checkout (``--devel``), or None
    for a release (then the engine comes from PyPI)."""
    folder = os.path.join(os.path.dirname(os.path.abspath(plugin_dir)), "gmmcore")
    return folder if os.path.exists(os.path.join(folder, "pyproject.toml")) else None


def engine_spec(version: str, extras: Sequence[str], checkout: Optional[str]) -> str:
    """pip arguments for the engine: the checkout in editable mode, else ``gmmcore==version``."""
    tail = "[%s]" % ",".join(extras) if extras else ""
    if checkout:
        return "-e %s" % shlex.quote(checkout + tail)
    return shlex.quote("gmmcore%s==%s" % (tail, version))


def install_commands(base_python: str, version: str, backends: Sequence[str],
                     driver: Optional[tuple[int, int]], checkout: Optional[str]) -> list[tuple[str, str]]:
    """(shell command, target relative to the environment folder) pairs, run in that folder:
    create the venv, install the engine and its backend, import both, mark the install done."""
    python = "./bin/python"
    modules = ["gmmcore"] + [BACKEND_MODULES[b] for b in backends]
    check = "import %s" % ", ".join(modules)
    return [
        ("%s -m venv ." % shlex.quote(base_python), "bin/python"),
        ("%s -m pip install -q --upgrade pip && %s -m pip install %s && TF_CPP_MIN_LOG_LEVEL=2 %s -c %s "
         "&& echo %s > %s"
         % (python, python, engine_spec(version, engine_extras(backends, driver), checkout), python,
            shlex.quote(check), shlex.quote(" ".join(backends)), DONE_MARK), DONE_MARK),
    ]


def check_code() -> str:
    """Python source that imports gmmcore and the modules named in argv[1:], exits with one line
    ``module: error`` on the first that fails, and prints the engine's version otherwise."""
    return ("import sys, importlib, gmmcore\n"
            "for m in sys.argv[1:]:\n"
            "    try:\n"
            "        importlib.import_module(m)\n"
            "    except Exception as e:\n"
            "        sys.exit('%s: %s' % (m, e))\n"
            "print(gmmcore.__version__)")
