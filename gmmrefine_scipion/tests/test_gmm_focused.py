"""Scipion projects run headless: import -> gmm refinement -> focused refinement -> patch refinement
(composite), symmetry expansion; outputs registered and every viewer builds its views.

The ``gmmrefine`` DataSet's ``domain`` simulation (``gmmcore simulate``, made on first use): two
adenylate kinases side by side, the second swinging ±15° (``--copies C2 --domain copy:2``), 300
particles, box 48; 1 iteration per run on the CPU.
"""
import os

import numpy as np

from pyworkflow.tests import setupTestProject
from pwem.protocols import ProtImportMask

from gmmrefine_scipion import convert
from gmmrefine_scipion.protocols import (GmmProtExpandSymmetry, GmmProtFocusedRefine, GmmProtImportParticles,
                                         GmmProtPatchRefine, GmmProtRefine)
from gmmrefine_scipion.tests import SIMULATIONS, GmmBaseTest, getTestData

SIM = SIMULATIONS["domain"]
RUN = dict(numberOfIterations=1, useGpu=False)


class TestGmmFocused(GmmBaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.data = getTestData("domain")

    def _import(self):
        prot = self.newProtocol(GmmProtImportParticles, objLabel="gmm import", importFrom=0,
                                starFile=self.data.getFile("domain_particles"))
        self.launchProtocol(prot)
        return prot

    def _global_and_mask(self, label):
        imp = self._import()
        glob = self.newProtocol(GmmProtRefine, objLabel="gmm global" + label, **RUN)
        glob.inputParticles.set(imp)
        glob.inputParticles.setExtended("outputParticles")
        self.launchProtocol(glob)
        mask = self.newProtocol(ProtImportMask, maskPath=self.data.getFile("domain_mask"), samplingRate=SIM["apix"])
        self.launchProtocol(mask)
        return imp, glob, mask

    def _continued(self, prot, reports):
        """Iterations 1 -> 2 and Execute (Continue) on a finished run: its first iteration is kept
        (``reports``: its report.json files), the second added, the outputs registered again."""
        stamps = [os.path.getmtime(r) for r in reports]
        prot.numberOfIterations.set(2)
        self.launchProtocol(prot)  # what the form's Execute does (Project.launchProtocol, mode Continue)
        self.assertEqual([os.path.getmtime(r) for r in reports], stamps)  # iteration 1 was not redone
        with open(prot.getLogPaths()[0]) as f:
            log = f.read()
        self.assertIn("Continuing the run", log)
        self.assertNotIn("All steps seem to be FINISHED", log)
        self.assertTrue(os.path.exists(prot.outputLocalResolution.getFileName()))

    def test_more_iterations_continue_focused_and_patches(self):
        """As for global refinement: raise Iterations of a finished focused / patch run and Execute."""
        _, glob, mask = self._global_and_mask(" (continue)")
        foc = self.newProtocol(GmmProtFocusedRefine, objLabel="gmm focused 1 then 2", inputType=0, **RUN)
        foc.inputRefinement.set(glob)
        foc.focusMask.set(mask)
        foc.focusMask.setExtended("outputMask")
        self.launchProtocol(foc)
        self.assertEqual(len(foc.getSummary().iterations), 1)
        self._continued(foc, [foc.getRunDir("iter001", "report.json")])
        self.assertEqual([r.iteration for r in foc.getSummary().iterations], [1, 2])
        self.assertSetSize(foc.outputParticles, SIM["n"])
        self.assertEqual(foc.getSummary().final.resolution_focus,
                         foc.getSummary().iterations[-1].report.resolution_focus)

        pat = self.newProtocol(GmmProtPatchRefine, objLabel="gmm patches 1 then 2", numberOfPatches=2, **RUN)
        pat.inputRefinement.set(glob)
        self.launchProtocol(pat)
        self._continued(pat, [pat.getRunDir("patch_%02d" % k, "iter001", "report.json") for k in (1, 2)])
        from gmmcore.summary import RunSummary
        for k in (1, 2):
            patch = RunSummary.load(pat.getRunDir("patch_%02d" % k))
            self.assertEqual([r.iteration for r in patch.iterations], [1, 2], k)
            self.assertSetSize(getattr(pat, "outputParticlesPatch%02d" % k), SIM["n"])
        self.assertTrue(all(rec.complete for rec in pat.getSummary().patch_records()))
        self.assertIsNotNone(pat.getSummary().composite())

        # the run it started from went on since (2 global iterations): more focused iterations cannot
        # continue it; the engine refuses, and the protocol's error says so in the form's words
        glob.numberOfIterations.set(2)
        self.launchProtocol(glob)
        foc.numberOfIterations.set(3)
        self.proj.launchProtocol(foc, wait=True)
        self.assertTrue(foc.isFailed())
        message = foc.getErrorMessage()
        self.assertIn("this run was made from other input than the form's now (", message.lower())
        self.assertIn("the run it starts from", message)
        self.assertIn('set "Run mode" to "Restart" and press Execute', message)
        self.assertNotIn("--out", message)

    def test_focused_patches_expand(self):
        imp, glob, mask = self._global_and_mask("")

        # ---- focused refinement from the global run
        foc = self.newProtocol(GmmProtFocusedRefine, objLabel="gmm focused", inputType=0, **RUN)
        foc.inputRefinement.set(glob)
        foc.focusMask.set(mask)
        foc.focusMask.setExtended("outputMask")
        self.launchProtocol(foc)
        self.assertSetSize(foc.outputParticles, SIM["n"])
        before = {p.getObjId(): convert.get_half_set(p) for p in glob.outputParticles.iterItems()}
        self.assertEqual(before, {p.getObjId(): convert.get_half_set(p) for p in foc.outputParticles.iterItems()})
        self.assertTrue(foc.outputVolume.hasHalfMaps())
        labels = [f.getObjLabel() for f in foc.outputFSCs]
        self.assertTrue(any("within focus mask" in lab for lab in labels), labels)
        self.assertTrue(os.path.exists(foc.outputLocalResolution.getFileName()))
        summary = foc.getSummary()
        self.assertEqual(summary.kind, "focused")
        self.assertTrue(any("focus mask" in line for line in foc.summary()), foc.summary())
        # the poses moved against the global ones (the focus was applied)
        ang, _ = convert.pose_errors(foc.outputParticles, self.data.getFile("domain_truth"))
        ang_g, _ = convert.pose_errors(glob.outputParticles, self.data.getFile("domain_truth"))
        self.assertGreater(abs(float(np.mean(ang)) - float(np.mean(ang_g))), 0.2)

        # ---- patch refinement from the global run
        pat = self.newProtocol(GmmProtPatchRefine, objLabel="gmm patches", numberOfPatches=2, **RUN)
        pat.inputRefinement.set(glob)
        self.launchProtocol(pat)
        for k in (1, 2):
            parts = getattr(pat, "outputParticlesPatch%02d" % k)
            self.assertSetSize(parts, SIM["n"])
            self.assertTrue(os.path.exists(getattr(pat, "outputMaskPatch%02d" % k).getFileName()))
        self.assertTrue(pat.outputVolume.hasHalfMaps())
        self.assertTrue(os.path.exists(pat.outputLocalResolution.getFileName()))
        self.assertTrue(any("Composite" in line for line in pat.summary()), pat.summary())
        labels = [f.getObjLabel() for f in pat.outputFSCs]
        self.assertTrue(any(lab.startswith("composite") for lab in labels) and
                        any("patch 2" in lab for lab in labels), labels)

        # ---- viewers: every view builds (no display), every plot writes a PNG
        from gmmrefine_scipion.viewers import GmmFocusedViewer
        from gmmrefine_scipion.plotting.focused import plot_all_focused
        for prot in (foc, pat):
            viewer = GmmFocusedViewer(project=self.proj)
            viewer.setProtocol(prot)
            for name, build in viewer._getVisualizeDict().items():
                if prot is foc and name.startswith("displayPatch"):
                    continue
                views = build(name)
                self.assertEqual(len(views), 1, name)
                self.assertIn(type(views[0]).__name__, ("FigureView", "FscViewer", "EmPlotter"), name)  # ours, Scipion's
            pngs = plot_all_focused(prot.getSummaryFile(), self.getOutputPath("png_%s" % prot.getObjId()),
                                    localres=prot.getLocalResolutionFile())
            for path in pngs.values():
                self.assertGreater(os.path.getsize(path), 5000, path)

        # ---- symmetry expansion of the imported particles
        exp = self.newProtocol(GmmProtExpandSymmetry, symmetryGroup="C2")
        exp.inputParticles.set(imp)
        exp.inputParticles.setExtended("outputParticles")
        self.launchProtocol(exp)
        self.assertSetSize(exp.outputParticles, 2 * SIM["n"])
        first = {}
        for p in exp.outputParticles.iterItems():
            first.setdefault(p._gmmSourceParticle.get(), []).append(
                (p._gmmSymmetryOperator.get(), convert.get_half_set(p), np.array(p.getTransform().getMatrix())))
        src = {p.getObjId(): (convert.get_half_set(p), np.array(p.getTransform().getMatrix()))
               for p in imp.outputParticles.iterItems()}
        self.assertEqual(set(first), set(src))
        from gmmcore.symmetry import symmetry_matrices
        S = symmetry_matrices("C2")
        for pid, rows in list(first.items())[:20]:
            half, T = src[pid]
            A, o = convert.scipion_poses(T)
            for k, h, Tk in rows:
                self.assertEqual(h, half)
                Ak, ok = convert.scipion_poses(Tk)
                np.testing.assert_allclose(Ak, A @ S[k - 1], atol=1e-4)
                np.testing.assert_allclose(ok, o, atol=1e-3)
