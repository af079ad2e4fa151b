"""One distribution, two packages: the gmmcore engine and the gmmrefine_scipion plugin."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_version() -> str:
    """Parse the version from gmmcore/__init__.py without importing it (build isolation)."""
    text = (HERE / "gmmcore" / "__init__.py").read_text()
    return re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.M).group(1)


setup(
    name="scipion-em-gmmrefine",
    version=read_version(),
    description="GMM-based refinement of cryo-EM particle poses (engine + Scipion 3 plugin)",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["gmmcore", "gmmcore.*", "gmmrefine_scipion", "gmmrefine_scipion.*"]),
    include_package_data=True,
    package_data={
        "gmmcore": ["data/*.pdb"],
        "gmmrefine_scipion": ["protocols.conf", "*.png"],
    },
    install_requires=[
        "numpy",
        "scipy",
        "mrcfile",
        "starfile",
        "scikit-learn",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "tf": ["tensorflow-cpu"],
        "cluster": ["dask>=2024.8", "distributed>=2024.8", "dask-jobqueue>=0.9"],
        "jax": ["jax"],
        "scipion": ["scipion-pyworkflow", "scipion-em"],
        "test": ["pytest", "scipion-em-relion"],
    },
    entry_points={
        "console_scripts": ["gmmcore = gmmcore.cli:main"],
        "pyworkflow.plugin": ["gmmrefine_scipion = gmmrefine_scipion"],
    },
)
