"""The Scipion plugin distribution scipion-em-gmmrefine: one top-level package, gmmrefine_scipion.

The engine is the separate distribution ``gmmcore`` (``gmmcore/pyproject.toml``), pinned to this
plugin's version.  From a checkout (``gmmcore/`` beside this file: ``pip install -e .``, Scipion's
``installp -p <checkout> --devel``) the requirement points at that folder; from the released sdist
(no ``gmmcore/`` inside) it is ``gmmcore==<version>`` from PyPI.  Scipion's process imports the
engine's light part (star files, summaries); the array backend lives in the engine environment
that ``Plugin.defineBinaries`` creates.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent.resolve()


def read_version() -> str:
    """The plugin's version from gmmrefine_scipion/__init__.py, parsed without importing it."""
    text = (HERE / "gmmrefine_scipion" / "__init__.py").read_text()
    return re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.M).group(1)


def engine_requirement(version: str) -> str:
    """``gmmcore`` at this plugin's version: the checkout's folder when there is one."""
    engine = HERE / "gmmcore"
    if (engine / "pyproject.toml").exists():
        return "gmmcore @ %s" % engine.as_uri()
    return "gmmcore==%s" % version


VERSION = read_version()

setup(
    name="scipion-em-gmmrefine",
    version=VERSION,
    description="Scipion 3 plugin for GMM-based refinement of cryo-EM particle poses (gmmcore engine)",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    url="https://doi.org/10.1038/s41592-023-02082-9",
    python_requires=">=3.10",
    packages=find_packages(include=["gmmrefine_scipion", "gmmrefine_scipion.*"]),
    include_package_data=False,
    package_data={"gmmrefine_scipion": ["protocols.conf", "*.png"]},
    install_requires=[
        engine_requirement(VERSION),
        "scipion-pyworkflow>=3.11",
        "scipion-em>=3.11",
        "matplotlib",
    ],
    extras_require={"test": ["pytest", "scipion-em-relion"]},
    entry_points={"pyworkflow.plugin": ["gmmrefine_scipion = gmmrefine_scipion"]},
    classifiers=["Programming Language :: Python :: 3"],
)
