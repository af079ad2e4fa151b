"""Scipion project, headless: import (a simulated particle with a moving domain) -> GmmProtRefine
-> GmmProtHeterogeneity -> GmmProtConfToPose, and their outputs in the project graph.

The ``gmmrefine`` DataSet's ``lid`` simulation (made on first use by ``gmmcore simulate``).
Small and fast (box 32, 3 Å/px, 300 particles, one refinement iteration, a few epochs, one focused
iteration); the numbers of the method are tested in tests/test_heterogeneity.py — here: every
particle carries its latent coordinates, the maps along PC1 are a SetOfVolumes, the converted and
the focused particles keep their half sets and change their poses, the summaries read back.
"""
import os

import numpy as np
from pyworkflow.tests import setupTestProject
from pwem.protocols import ProtImportMask

from gmmrefine_scipion import convert
from gmmrefine_scipion.protocols import (GmmProtConfToPose, GmmProtHeterogeneity, GmmProtImportParticles,
                                         GmmProtRefine)
from gmmrefine_scipion.tests import SIMULATIONS, GmmBaseTest, getTestData

SIM = SIMULATIONS["lid"]


class TestGmmHeterogeneityChain(GmmBaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.data = getTestData("lid")

    def test_chain(self):
        imp = self.newProtocol(GmmProtImportParticles, objLabel="gmm import", importFrom=0,
                               starFile=self.data.getFile("lid_particles"))
        self.launchProtocol(imp)
        refine = self.newProtocol(GmmProtRefine, objLabel="gmm refine", numberOfIterations=1, useGpu=False)
        refine.inputParticles.set(imp)
        refine.inputParticles.setExtended("outputParticles")
        self.launchProtocol(refine)

        het = self.newProtocol(GmmProtHeterogeneity, objLabel="gmm heterogeneity", latentDim=3, anchors=16,
                               epochs=3, fullEpochs=1, maxResolution=8.0, bins=3, useGpu=False)
        het.inputRefinement.set(refine)
        self.launchProtocol(het)
        parts = het.outputParticles
        self.assertSetSize(parts, SIM["n"])
        halves = {}
        for p in parts.iterItems():
            latent, pc1, pc2 = convert.get_latent(p)
            self.assertEqual(len(latent), 3)
            self.assertTrue(np.isfinite(pc1) and np.isfinite(pc2))
            halves.setdefault(convert.get_half_set(p), []).append(pc1)
        for h in (1, 2):  # PC1 from each half's own PCA: centred on that half
            self.assertLess(abs(np.mean(halves[h])), 1e-3)
        self.assertEqual(het.outputVolumes.getSize(), 2 * 3)
        for vol in het.outputVolumes.iterItems():
            self.assertTrue(os.path.exists(vol.getFileName()))
        self.assertTrue(any("PC1" in line for line in het.summary()), het.summary())
        self.check_flexibility_hub(het)

        mask = self.newProtocol(ProtImportMask, maskPath=self.data.getFile("lid_mask"),
                                samplingRate=SIM["apix"])
        self.launchProtocol(mask)
        c2p = self.newProtocol(GmmProtConfToPose, objLabel="gmm conf2pose", steps=10, focusIterations=1,
                               maxResolution=8.0, batchSize=64, useGpu=False)
        c2p.inputHeterogeneity.set(het)
        self.check_conf2pose_takes_the_flex_set(het, mask)
        c2p.regionMask.set(mask)
        c2p.regionMask.setExtended("outputMask")
        self.launchProtocol(c2p)
        for name in ("outputParticlesConverted", "outputParticles"):
            out = getattr(c2p, name)
            self.assertSetSize(out, SIM["n"])
            before = {p.getObjId(): (convert.get_half_set(p), p.getTransform().getMatrix().copy())
                      for p in parts.iterItems()}
            moved = 0
            for p in out.iterItems():
                half, matrix = before[p.getObjId()]
                self.assertEqual(convert.get_half_set(p), half)
                self.assertIsNotNone(convert.get_latent(p))  # copied from the heterogeneity output
                moved += not np.allclose(p.getTransform().getMatrix(), matrix, atol=1e-6)
            self.assertGreater(moved, SIM["n"] // 2, name)
        self.assertTrue(c2p.outputVolume.hasHalfMaps())
        self.assertEqual(c2p.outputFSCs.getSize(), 2 * 2)  # converted start + 1 iteration, masked and unmasked
        self.assertTrue(any("Conversion" in line for line in c2p.summary()), c2p.summary())

    def check_flexibility_hub(self, het):
        """The heterogeneity output read back as the Flexibility Hub's SetOfParticlesFlex: our
        progName, the latent vector as zFlex, our columns kept."""
        from pwem.objects import ParticleFlex, SetOfParticlesFlex
        from gmmrefine_scipion.protocols.protocol_heterogeneity import FLEX_PROGNAME
        self.assertIsInstance(het.outputParticles, SetOfParticlesFlex)
        # as a downstream protocol's pointer gets it (from the project): the set's FlexInfo in full
        stored = self.proj.getProtocol(het.getObjId()).outputParticles
        self.assertIsInstance(stored, SetOfParticlesFlex)
        self.assertEqual(stored.getFlexInfo().getProgName(), FLEX_PROGNAME)
        self.assertEqual(int(stored.getFlexInfo().getAttr("_gmmLatentDim")), 3)
        # the set's own file
        flex = SetOfParticlesFlex(filename=het.outputParticles.getFileName())
        flex.loadAllProperties()
        self.assertEqual(flex.getFlexInfo().getProgName(), FLEX_PROGNAME)
        self.assertEqual(flex.getSize(), SIM["n"])
        for p in flex.iterItems():
            self.assertIsInstance(p, ParticleFlex)
            latent, pc1, _ = convert.get_latent(p)
            np.testing.assert_allclose(p.getZFlex(), latent, rtol=1e-5, atol=1e-6)
            self.assertIn(convert.get_half_set(p), (1, 2))
        flex.close()

    def check_conf2pose_takes_the_flex_set(self, het, mask):
        """Conformation to pose accepts the heterogeneity run or its SetOfParticlesFlex."""
        c2p = self.newProtocol(GmmProtConfToPose, objLabel="gmm conf2pose (flex set)", useGpu=False)
        c2p.inputHeterogeneity.set(het)
        c2p.inputHeterogeneity.setExtended("outputParticles")
        c2p.regionMask.set(mask)
        c2p.regionMask.setExtended("outputMask")
        self.assertIs(type(c2p._heterogeneityRun()), type(het))
        self.assertEqual(c2p._heterogeneityRun().getObjId(), het.getObjId())
        self.assertEqual(c2p._protocolOptions()["from"], os.path.abspath(het.getRunDir()))
        self.assertEqual([e for e in c2p.validate() if "heterogeneity" in e.lower()], [])
