"""Headless Scipion for pytest: environment set up *before* pyworkflow is imported.

pyworkflow reads its configuration (``pyworkflow.Config``) from environment variables when it is
first imported, and ``import gmmrefine_scipion`` imports pwem -> pyworkflow.  pytest loads this
file at start-up (it is in a ``testpaths`` folder) before importing any test module, so setting
the variables here is early enough.  This folder deliberately has **no** ``__init__.py``: with
one, pytest would import this file as ``gmmrefine_scipion.tests.conftest``, importing the plugin (and
pyworkflow) before the lines below run.  For the same reason ``gmmrefine_scipion/headless.py``
(the set-up the demo uses too; what it sets is listed there) is loaded by file path, not through
the package.

Everything lives under one temporary folder, removed at the end unless GMMREFINE_KEEP_TESTS=1
(or GMMREFINE_TEST_ROOT=DIR chooses it).  The tests run on the CPU (CUDA_VISIBLE_DEVICES empty
unless set).  Variables already set in the environment win.
"""
import importlib.util
import os
import shutil
import sys
import tempfile

_spec = importlib.util.spec_from_file_location(
    "_gmmrefine_headless", os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "headless.py"))
_headless = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_headless)

_ROOT = os.environ.get("GMMREFINE_TEST_ROOT") or tempfile.mkdtemp(prefix="gmmrefine_scipion_tests_")
_headless.setup_scipion_env(_ROOT, CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", ""))

import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session", autouse=True)
def _scipion_sandbox():
    cwd = os.getcwd()
    yield os.environ["SCIPION_USER_DATA"]
    os.chdir(cwd)  # setupTestProject chdirs into the project
    if not os.environ.get("GMMREFINE_KEEP_TESTS") and not os.environ.get("GMMREFINE_TEST_ROOT"):
        shutil.rmtree(_ROOT, ignore_errors=True)

