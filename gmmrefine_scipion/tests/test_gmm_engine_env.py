"""The engine environment end to end, the short chain for an installed plugin:
``scipion3 tests gmmrefine_scipion.tests.test_gmm_engine_env`` (about a minute on 2 CPU cores).

The installation is valid (gmmcore and its backend import in the engine's interpreter), the
``gmmrefine`` DataSet is there (simulated on first use), and import -> one refinement iteration
runs through ``Plugin.getProgram()``."""
from pyworkflow.tests import setupTestProject

from gmmrefine_scipion import Plugin
from gmmrefine_scipion.protocols import GmmProtImportParticles, GmmProtRefine
from gmmrefine_scipion.tests import SIMULATION, GmmBaseTest, getTestData


class TestGmmEngineEnv(GmmBaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.data = getTestData()

    def test_installation_valid(self):
        self.assertEqual(Plugin.validateInstallation(), [])

    def test_import_and_one_iteration(self):
        imp = self.newProtocol(GmmProtImportParticles, objLabel="gmm import star", importFrom=0,
                               starFile=self.data.getFile("particles"))
        self.launchProtocol(imp)
        self.assertEqual(imp.outputParticles.getSize(), SIMULATION["n"])
        refine = self.newProtocol(GmmProtRefine, objLabel="gmm refine, 1 iteration", numberOfIterations=1,
                                  batchSize=16, useGpu=False)
        refine.inputParticles.set(imp.outputParticles)
        self.launchProtocol(refine)
        self.assertEqual(refine.outputParticles.getSize(), SIMULATION["n"])
        self.assertTrue(refine.outputVolume.getFileName())
