"""Headless Scipion for pytest: the environment set up *before* pyworkflow is imported.

pyworkflow reads its configuration (``pyworkflow.Config``) from environment variables when it is
first imported, and ``import gmmrefine_scipion`` imports pwem -> pyworkflow.  This file is at the
repository root so that pytest loads it before any other conftest or test module: the plugin's
test package (``gmmrefine_scipion/tests``, a package so that ``scipion3 tests`` discovers it) is
imported through ``gmmrefine_scipion``, i.e. pyworkflow, so its own conftest comes too late.
``gmmrefine_scipion/headless.py`` (the set-up the demo uses too; what it sets is listed there) is
loaded by file path, not through the package, for the same reason.

Everything lives under one temporary folder, created at start-up and removed
at the end unless GMMREFINE_KEEP_TESTS=1 (or GMMREFINE_TEST_ROOT=DIR chooses it).  Variables
already set in the environment win.  The plugin tests' conftests hide the GPUs
(CUDA_VISIBLE_DEVICES empty unless set); engine-only runs keep them.
"""
import importlib.util
import os
import shutil
import tempfile

_spec = importlib.util.spec_from_file_location(
    "_gmmrefine_headless", os.path.join(os.path.dirname(os.path.abspath(__file__)), "gmmrefine_scipion",
                                        "headless.py"))
_headless = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_headless)

_ROOT = os.environ.get("GMMREFINE_TEST_ROOT") or tempfile.mkdtemp(prefix="gmmrefine_scipion_tests_")
_headless.setup_scipion_env(_ROOT)

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _scipion_sandbox():
    cwd = os.getcwd()
    yield os.environ["SCIPION_USER_DATA"]
    os.chdir(cwd)  # setupTestProject chdirs into the project
    if not os.environ.get("GMMREFINE_KEEP_TESTS") and not os.environ.get("GMMREFINE_TEST_ROOT"):
        shutil.rmtree(_ROOT, ignore_errors=True)
