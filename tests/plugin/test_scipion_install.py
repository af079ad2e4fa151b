"""Slow tier (GMMREFINE_SLOW_TESTS=1, `make test-install`; PyPI needed, ~10 min): the plugin
installed the way Scipion installs every plugin.

In a fresh venv: scipion-app + scipion-pyworkflow + scipion-em from PyPI; Scipion's own installer
on a copy of this checkout named ``scipion-em-gmmrefine`` (``installp -p DIR --devel``), which
runs ``Plugin.defineBinaries`` and creates the engine environment ``gmmrefine-<version>`` (CPU
TensorFlow); ``scipion tests --show`` lists our tests without an error; the short chain
``gmmrefine_scipion.tests.test_gmm_engine_env`` passes.  GMMREFINE_INSTALL_TEST_DIR=DIR keeps
everything in DIR (reused: a second run skips what exists)."""
import os
import shutil
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.install, pytest.mark.timeout(3600),
              pytest.mark.skipif(not os.environ.get("GMMREFINE_SLOW_TESTS"),
                                 reason="slow tier: GMMREFINE_SLOW_TESTS=1 (make test-install)")]

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCIPION_PACKAGES = ["scipion-app==3.8.3", "scipion-pyworkflow", "scipion-em"]
# scipion-app 3.8.3's console script fails on Python 3.11 ("module 'importlib' has no attribute
# 'util'"): run its module the way the script would.
SCIPION_MAIN = ("import importlib.util, runpy, sys; sys.argv = ['scipion'] + sys.argv[1:]; "
                "runpy.run_module('scipion', run_name='__main__')")
CHAIN = "gmmrefine_scipion.tests.test_gmm_engine_env"


def run(cmd, env, timeout, cwd):
    """Run in ``cwd`` (never this checkout: ``python -c`` would import from it); print the command,
    its wall time and last lines (pytest -s / -rA shows them)."""
    t0 = time.time()
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    text = out.stdout + out.stderr
    print("$ %s\n  rc=%d, %.0f s\n  %s" % (" ".join(cmd)[:300], out.returncode, time.time() - t0,
                                          "\n  ".join(text.strip().splitlines()[-8:])), flush=True)
    return out.returncode, text


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = os.environ.get("GMMREFINE_INSTALL_TEST_DIR") or str(tmp_path_factory.mktemp("scipion_install"))
    plugin = os.path.join(root, "scipion-em-gmmrefine")  # the folder name is the pip name (--devel)
    shutil.rmtree(plugin, ignore_errors=True)
    shutil.copytree(CHECKOUT, plugin, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "demo_out*", "demo_heterogeneity",
        ".pytest_cache", "benchmarks"))
    # a clean environment: none of the headless test set-up, no PYTHONPATH into this checkout
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SCIPION_", "GMMREFINE_", "PYTHON", "VIRTUAL_ENV", "MPLBACKEND"))}
    env.update(SCIPION_HOME=os.path.join(root, "home"), SCIPION_USER_DATA=os.path.join(root, "userdata"),
               SCIPION_NOTIFY="False", TF_CPP_MIN_LOG_LEVEL="2")
    for folder in ("SCIPION_HOME", "SCIPION_USER_DATA"):
        os.makedirs(env[folder], exist_ok=True)  # scipion-app refuses a SCIPION_HOME that does not exist
    venv = os.path.join(root, "venv")
    python = os.path.join(venv, "bin", "python")
    env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "")  # Scipion runs protocols with
    # "python3" from PATH, as in an activated venv
    if not os.path.exists(python):
        rc, text = run([sys.executable, "-m", "venv", venv], env, 300, root)
        assert rc == 0, text
    rc, text = run([python, "-m", "pip", "install", "-q"] + SCIPION_PACKAGES, env, 1800, root)
    assert rc == 0, text
    return dict(root=root, plugin=plugin, env=env, scipion=[python, "-c", SCIPION_MAIN])


def test_installp_devel_creates_the_engine_environment_and_scipion_tests_run(sandbox):
    import gmmrefine_scipion
    from gmmrefine_scipion.install import DONE_MARK
    env, scipion, root = sandbox["env"], sandbox["scipion"], sandbox["root"]
    rc, text = run(scipion + ["installp", "-p", sandbox["plugin"], "--devel", "-j", "2"], env, 2400, root)
    assert rc == 0 and "ERROR" not in text, text[-3000:]
    engine = os.path.join(env["SCIPION_HOME"], "software", "em", "gmmrefine-%s" % gmmrefine_scipion.__version__)
    with open(os.path.join(engine, DONE_MARK)) as f:
        assert f.read().split() == ["tf"]
    rc, text = run([os.path.join(engine, "bin", "python"), "-c",
                    "import gmmcore, tensorflow as tf; print(gmmcore.__file__, tf.__version__, "
                    "tf.config.list_physical_devices('GPU'))"], env, 300, root)
    assert rc == 0 and os.path.join(sandbox["plugin"], "gmmcore") in text, text

    rc, text = run(scipion + ["tests", "--show"], env, 600, root)
    # (pwem 3.11.1 itself prints "Error loading the test" for a few of its own modules)
    assert rc == 0 and "Traceback" not in text, text[-3000:]
    assert CHAIN in text and not [line for line in text.splitlines() if "Error loading" in line and "gmmrefine" in line], \
        text[-3000:]

    rc, text = run(scipion + ["tests", CHAIN], dict(env, SCIPION_TEST_NOSYNC="1"), 1800, root)
    assert rc == 0 and "FAILED" not in text and "Traceback" not in text, text[-5000:]
