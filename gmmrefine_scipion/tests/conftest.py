"""Headless Scipion for pytest: environment set up *before* pyworkflow is imported.

pyworkflow reads its configuration (``pyworkflow.Config``) from environment variables when it is
first imported, and ``import gmmrefine_scipion`` imports pwem -> pyworkflow.  pytest loads this
file at start-up (it is in a ``testpaths`` folder) before importing any test module, so setting
the variables here is early enough.  This folder deliberately has **no** ``__init__.py``: with one,
pytest would import this file as ``gmmrefine_scipion.tests.conftest``, importing the plugin (and
pyworkflow) before the lines below run.

What is set (all under one temporary folder, removed at the end unless GMMREFINE_KEEP_TESTS=1):

* SCIPION_DOMAIN=pwem — the domain whose plugins are discovered.
* SCIPION_HOME with ``config/hosts.conf`` (a basic localhost entry) — protocols need a host.
* SCIPION_USER_DATA — projects are created under ``<user data>/projects``.
* SCIPION_PYTHON=sys.executable — protocols run in a child process started with it.
* SCIPION_TESTS + SCIPION_TEST_NOSYNC=1 — test data come from here; nothing is downloaded.
* SCIPION_NOTIFY=False — no usage report over the network.
* MPLBACKEND=Agg — matplotlib without a display.

Variables already set in the environment win (so a real Scipion installation can be used).
"""
import os
import shutil
import sys
import tempfile

_ROOT = os.environ.get("GMMREFINE_TEST_ROOT") or tempfile.mkdtemp(prefix="gmmrefine_scipion_tests_")
_DEFAULTS = {
    "SCIPION_DOMAIN": "pwem",
    "SCIPION_HOME": os.path.join(_ROOT, "scipion_home"),
    "SCIPION_USER_DATA": os.path.join(_ROOT, "ScipionUserData"),
    "SCIPION_PYTHON": sys.executable,
    "SCIPION_TESTS": os.path.join(_ROOT, "scipion_home", "data", "tests"),
    "SCIPION_TEST_NOSYNC": "1",
    "SCIPION_NOTIFY": "False",
    "MPLBACKEND": "Agg",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
}
for _k, _v in _DEFAULTS.items():
    os.environ.setdefault(_k, _v)

_hosts = os.path.join(os.environ["SCIPION_HOME"], "config", "hosts.conf")
if not os.path.exists(_hosts):
    os.makedirs(os.path.dirname(_hosts), exist_ok=True)
    with open(_hosts, "w") as _f:
        _f.write("[localhost]\nPARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d %_(COMMAND)s\n")
for _d in ("SCIPION_USER_DATA", "SCIPION_TESTS"):
    os.makedirs(os.environ[_d], exist_ok=True)

import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session", autouse=True)
def _scipion_sandbox():
    cwd = os.getcwd()
    yield os.environ["SCIPION_USER_DATA"]
    os.chdir(cwd)  # setupTestProject chdirs into the project
    if not os.environ.get("GMMREFINE_KEEP_TESTS") and not os.environ.get("GMMREFINE_TEST_ROOT"):
        shutil.rmtree(_ROOT, ignore_errors=True)

