"""Packaging facts that need no network: the engine's package list, the engine environment's
install commands for each kind of machine."""
import os
import re

import pytest

from gmmrefine_scipion import install

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_engine_pyproject_lists_every_subpackage():
    text = open(os.path.join(ROOT, "gmmcore", "pyproject.toml")).read()
    listed = set(re.findall(r'"(gmmcore(?:\.\w+)*)"', text.split("packages = [", 1)[1].split("]", 1)[0]))
    found = {"gmmcore" + ("." + os.path.relpath(d, os.path.join(ROOT, "gmmcore")).replace(os.sep, ".")
                          if d != os.path.join(ROOT, "gmmcore") else "")
             for d, _, files in os.walk(os.path.join(ROOT, "gmmcore")) if "__init__.py" in files}
    assert listed == found


def test_plugin_version_pins_the_engine():
    import gmmcore
    import gmmrefine_scipion
    assert gmmrefine_scipion.__version__ == gmmcore.__version__


@pytest.mark.parametrize("driver, backends, extras", [
    (None, ["tf"], ["tf"]), ((470, 199), ["tf"], ["tf"]), ((525, 60), ["tf", "jax"], ["tf-cuda", "jax-cuda12"]),
    ((580, 95), ["jax"], ["jax-cuda12"])])
def test_backend_chosen_from_the_driver(driver, backends, extras):
    assert install.engine_extras(backends, driver) == extras


def test_install_commands_devel_and_release():
    checkout = install.engine_checkout(os.path.join(ROOT, "gmmrefine_scipion"))
    assert checkout == os.path.join(ROOT, "gmmcore")
    venv, pip = install.install_commands("/usr/bin/python3", "0.1.0", ["tf"], None, checkout)
    assert venv == ("/usr/bin/python3 -m venv .", "bin/python")
    assert "pip install -e '%s[tf]'" % checkout in pip[0] and "import gmmcore, tensorflow" in pip[0]
    assert pip[1] == install.DONE_MARK
    _, pip = install.install_commands("/usr/bin/python3", "0.1.0", ["jax"], (535, 1), None)
    assert "pip install 'gmmcore[jax-cuda12]==0.1.0'" in pip[0]
    with pytest.raises(ValueError):
        install.parse_backends("torch")
