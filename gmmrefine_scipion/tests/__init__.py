"""Scipion tests of the gmmrefine plugin (``scipion3 tests gmmrefine_scipion.tests.<module>``).

The test data are the Scipion DataSet ``gmmrefine`` (folder ``$SCIPION_TESTS/gmmrefine``): not
downloaded but simulated on first use, when the folder has no ``particles_perturbed.star``, by the
engine's own simulator (``gmmcore simulate``, bundled adenylate-kinase model, SIMULATION's
numbers) run with the plugin's engine interpreter (``Plugin.getProgram()``).  Run with
``SCIPION_TEST_NOSYNC=1`` (pytest's set-up does) so that pyworkflow does not ask Scipion's data
server for it first.  pytest-only tests of the plugin live in ``tests/plugin/`` of the checkout.
"""
import os
import subprocess

from pyworkflow.tests import DataSet

#: DataSet name and folder under SCIPION_TESTS.
DATASET = "gmmrefine"
#: ``gmmcore simulate`` options: small and fast (a few hundred particles, box 48).
SIMULATION = dict(n=400, box=48, apix=2.0, snr=1.0, perturb_angle=4.0, perturb_shift=1.0, seed=3)

DataSet(name=DATASET, folder=DATASET,
        files={"particles": "particles_perturbed.star",  # poses perturbed by 4° / 1 px, half sets
               "truth": "particles_true.star",           # the true poses
               "stack": "particles.mrcs",                # images (CTF applied, not phase flipped)
               "map": "true_map.mrc"})                   # the map of the model


def getTestData() -> DataSet:
    """The ``gmmrefine`` DataSet, simulated first when its folder lacks the particles."""
    from gmmrefine_scipion import Plugin
    dataset = DataSet.getDataSet(DATASET)
    if not os.path.exists(dataset.getFile("particles")):
        args = Plugin.getGmmcoreArgs("simulate", model="builtin:adk-closed", out=dataset.getPath(),
                                     **SIMULATION)
        subprocess.run("%s %s" % (Plugin.getProgram(), args), shell=True, check=True,
                       env=Plugin.getEnviron(), stdout=subprocess.DEVNULL)
    return dataset
