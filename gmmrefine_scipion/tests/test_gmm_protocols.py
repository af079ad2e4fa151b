"""Scipion projects run headless: import (ours and pwem/relion's) -> GmmProtRefine -> viewers,
export.  The data are the ``gmmrefine`` DataSet's ``rigid`` simulation (``getTestData``: made by
``gmmcore simulate`` in the engine environment on first use, no download).

How to run (see README.md beside this file):  ``.venv/bin/python -m pytest gmmrefine_scipion/tests``.
conftest.py sets up the Scipion environment before pyworkflow is imported.  Protocols run in a
child process (SCIPION_PYTHON); their logs are printed when one fails.  A missing gmmcore verb
fails these tests (it is never skipped).
"""
import os

import numpy as np

from pyworkflow.tests import setupTestProject
from pwem.constants import ALIGN_PROJ
from pwem.protocols import ProtImportParticles

from gmmcore.io.star import read_star
from gmmrefine_scipion import convert
from gmmrefine_scipion.constants import HALF_SET_ATTR
from gmmrefine_scipion.protocols import (GmmProtExportParticles, GmmProtImportParticles,
                                         GmmProtRefine)
from gmmrefine_scipion.plotting import refine as plots
from gmmrefine_scipion.tests import SIMULATION as SIM, GmmBaseTest, getTestData, runGmmcore

# Small and fast: a few hundred particles (SIM), box 48, 2 iterations on CPU (~40 s per refinement).
REFINE = dict(numberOfIterations=2, batchSize=16, useGpu=False)


class GmmProtocolsTestBase(GmmBaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.dataset = getTestData()
        cls.perturbed = cls.dataset.getFile("particles")
        cls.true_star = cls.dataset.getFile("truth")
        cls.stack = cls.dataset.getFile("stack")

    def check_particles(self, parts, n=SIM["n"], flipped=None):
        self.assertSetSize(parts, n)
        self.assertEqual(parts.getAlignment(), ALIGN_PROJ)
        self.assertAlmostEqual(parts.getSamplingRate(), SIM["apix"], places=3)
        self.assertTrue(parts.hasCTF())
        counts = convert.count_half_sets(parts)
        self.assertEqual(counts[None], 0)
        self.assertGreater(counts[1], n // 3)
        self.assertGreater(counts[2], n // 3)
        if flipped is not None:
            self.assertEqual(bool(parts.isPhaseFlipped()), flipped)

    def refine_and_check(self, inputProt, label):
        prot = self.newProtocol(GmmProtRefine, objLabel="gmm refine " + label, **REFINE)
        prot.inputParticles.set(inputProt)
        prot.inputParticles.setExtended("outputParticles")
        self.launchProtocol(prot)

        parts = prot.outputParticles
        self.check_particles(parts, flipped=inputProt.outputParticles.isPhaseFlipped())
        # half sets are kept particle by particle
        before = {p.getObjId(): convert.get_half_set(p) for p in inputProt.outputParticles.iterItems()}
        after = {p.getObjId(): convert.get_half_set(p) for p in parts.iterItems()}
        self.assertEqual(before, after)

        vol = prot.outputVolume
        self.assertTrue(vol.hasHalfMaps())
        for fn in [vol.getFileName()] + list(vol.getHalfMaps().split(",")):
            self.assertTrue(os.path.exists(fn), fn)
        self.assertAlmostEqual(vol.getSamplingRate(), SIM["apix"], places=3)
        self.assertEqual(prot.outputFSCs.getSize(), 2 * (1 + REFINE["numberOfIterations"]))
        for half in ("1", "2"):
            self.assertTrue(os.path.exists(getattr(prot, "outputGmmHalf%s" % half).getFileName()))

        # resolution and pose error improve over the input poses
        summary = prot.getSummary()
        res_in, res_out = summary.resolution_initial, summary.resolution_final
        ang_in, sh_in = convert.pose_errors(inputProt.outputParticles, self.true_star)
        ang_out, sh_out = convert.pose_errors(parts, self.true_star)
        print("\n[%s] resolution %.2f -> %.2f A; median angle error %.2f -> %.2f deg; "
              "median shift error %.2f -> %.2f px"
              % (label, res_in, res_out, np.median(ang_in), np.median(ang_out),
                 np.median(sh_in), np.median(sh_out)))
        # (quality of the engine, not of the plugin: checked last, after every output check)
        quality = (res_out < res_in, np.median(ang_out) < np.median(ang_in),
                   np.median(sh_out) < np.median(sh_in))

        # every plot of the run, from the project's files
        pngs = plots.plot_all(prot.getSummaryFile(), self.getOutputPath("png_" + label))
        self.assertEqual(set(pngs), {"fsc", "resolution", "gmm", "pose_changes"})
        for path in pngs.values():
            self.assertGreater(os.path.getsize(path), 5000, path)
        # the Scipion viewer builds its views without a display
        from gmmrefine_scipion.viewers import GmmRefineViewer
        viewer = GmmRefineViewer(project=self.proj)
        viewer.setProtocol(prot)
        for name, build in viewer._getVisualizeDict().items():
            if name != "displayChimera":
                views = build(name)
                self.assertEqual(len(views), 1)
                self.assertIn(type(views[0]).__name__, ("FigureView", "FscViewer", "EmPlotter"), name)  # ours, Scipion's
        self.assertTrue(any("Final resolution" in line for line in prot.summary()), prot.summary())
        self.assertTrue(prot.methods())
        problems = []
        if not quality[0]:
            problems.append("resolution did not improve (%.2f -> %.2f A)" % (res_in, res_out))
        if not (quality[1] and quality[2]):
            problems.append("pose error vs truth did not decrease (median angle %.2f -> %.2f deg, "
                            "shift %.2f -> %.2f px)" % (np.median(ang_in), np.median(ang_out),
                                                        np.median(sh_in), np.median(sh_out)))
        return prot, problems

    def assert_engine_quality(self, problems):
        self.assertFalse(problems, "gmmcore refine: " + "; ".join(problems))


class TestGmmImportOurs(GmmProtocolsTestBase):
    """RELION star -> GmmProtImportParticles -> GmmProtRefine -> export."""

    def test_import_refine_export(self):
        prot = self.newProtocol(GmmProtImportParticles, objLabel="gmm import star",
                                importFrom=0, starFile=self.perturbed)
        self.launchProtocol(prot)
        self.check_particles(prot.outputParticles, flipped=True)
        # the poses survive the import exactly (compare with the file)
        ang, sh = convert.pose_errors(prot.outputParticles, self.perturbed)
        self.assertLess(ang.max(), 1e-3)
        self.assertLess(sh.max(), 1e-3)

        self.assertTrue(any("particles" in line for line in prot.summary()), prot.summary())
        self.assertTrue(prot.methods())

        refine, problems = self.refine_and_check(prot, "ours")

        exp = self.newProtocol(GmmProtExportParticles, objLabel="gmm export", exportFormat=2,
                               referenceStar=self.perturbed)
        exp.inputParticles.set(refine)
        exp.inputParticles.setExtended("outputParticles")
        self.launchProtocol(exp)
        star = exp._getExtraPath("particles_gmm.star")
        cs = exp._getExtraPath("particles_gmm.cs")
        self.assertTrue(os.path.exists(star) and os.path.exists(cs))
        exported = read_star(star)
        self.assertEqual(len(exported), SIM["n"])
        # with the original star as reference, rows point at the original images again
        self.assertTrue(all(str(n).endswith("particles.mrcs") and "import" not in str(n)
                            for n in exported.image_name), exported.image_name[:3])
        ang, _ = convert.pose_errors(star, self.true_star)
        ang_ref, _ = convert.pose_errors(refine.outputParticles, self.true_star)
        self.assertAlmostEqual(float(np.median(ang)), float(np.median(ang_ref)), places=2)
        self.assertEqual(len(np.load(cs)), SIM["n"])

        # without the original star: still the original (raw, not phase-flipped) images
        plain = self.newProtocol(GmmProtExportParticles, objLabel="gmm export, no reference", exportFormat=0,
                                 baseName="plain")
        plain.inputParticles.set(refine)
        plain.inputParticles.setExtended("outputParticles")
        self.launchProtocol(plain)
        exported = read_star(plain._getExtraPath("plain.star"))
        original_stack = os.path.realpath(self.stack)
        self.assertFalse(exported.phase_flipped)
        self.assertEqual({os.path.realpath(str(n).split("@", 1)[1]) for n in exported.image_name}, {original_stack})
        ang, _ = convert.pose_errors(plain._getExtraPath("plain.star"), self.true_star)
        self.assertAlmostEqual(float(np.median(ang)), float(np.median(ang_ref)), places=2)
        self.assert_engine_quality(problems)


    def test_more_iterations_continue_a_finished_run(self):
        """Iterations 1 -> 2 and Execute (Scipion's Continue mode): the run goes on from its first
        iteration (kept as it was), it is not 'All steps seem to be FINISHED'."""
        imp = self.newProtocol(GmmProtImportParticles, objLabel="gmm import (continue)", importFrom=0,
                               starFile=self.perturbed)
        self.launchProtocol(imp)
        prot = self.newProtocol(GmmProtRefine, objLabel="gmm refine 1 then 2", **dict(REFINE, numberOfIterations=1))
        prot.inputParticles.set(imp)
        prot.inputParticles.setExtended("outputParticles")
        self.launchProtocol(prot)
        self.assertEqual(len(prot.getSummary().iterations), 1)
        first = prot.getRunDir("iter001", "report.json")
        stamp = os.path.getmtime(first)

        prot.numberOfIterations.set(2)
        self.launchProtocol(prot)  # what the form's Execute does (Project.launchProtocol, mode Continue)
        summary = prot.getSummary()
        self.assertEqual([r.iteration for r in summary.iterations], [1, 2])
        self.assertEqual(os.path.getmtime(first), stamp)  # iteration 1 was not redone
        with open(prot.getLogPaths()[0]) as f:
            log = f.read()
        self.assertIn("Continuing the run", log)
        self.assertNotIn("All steps seem to be FINISHED", log)
        self.assertEqual(prot.outputFSCs.getSize(), 2 * 3)  # input poses + 2 iterations, masked and unmasked
        self.check_particles(prot.outputParticles, flipped=True)

    def test_import_cryosparc(self):
        """.cs written by gmmcore export (blob paths relative to the stack folder) -> our import."""
        cs = self.getOutputPath("perturbed.cs")
        runGmmcore("export", particles=self.perturbed, format="cryosparc", out=cs)
        prot = self.newProtocol(GmmProtImportParticles, objLabel="gmm import cs",
                                importFrom=1, csFile=cs, stackRoot=os.path.dirname(self.stack))
        self.launchProtocol(prot)
        self.check_particles(prot.outputParticles, flipped=True)
        ang, sh = convert.pose_errors(prot.outputParticles, self.perturbed)
        self.assertLess(ang.max(), 0.01)
        self.assertLess(sh.max(), 0.01)


class TestGmmImportRelion(GmmProtocolsTestBase):
    """RELION star -> pwem ProtImportParticles (relion plugin's reader) -> GmmProtRefine."""

    def _import_relion(self, star, label):
        prot = self.newProtocol(ProtImportParticles, objLabel=label,
                                importFrom=ProtImportParticles.IMPORT_FROM_RELION,
                                starFile=star, samplingRate=SIM["apix"],
                                haveDataBeenPhaseFlipped=False, magnification=10000)
        self.launchProtocol(prot)
        return prot

    def test_import_refine(self):
        prot = self._import_relion(self.perturbed, "relion import")
        self.check_particles(prot.outputParticles, flipped=False)
        ang, sh = convert.pose_errors(prot.outputParticles, self.perturbed)
        self.assertLess(ang.max(), 1e-3)
        _, problems = self.refine_and_check(prot, "relion")
        self.assert_engine_quality(problems)

    def test_gpu_list_and_dask_scheduler_reach_the_engine(self):
        """The form's GPU list gives one engine worker per GPU; the expert Dask address replaces it."""
        from gmmcore.cli import build_parser
        from gmmrefine_scipion import Plugin

        refine = self.newProtocol(GmmProtRefine, useGpu=True, gpuList="0 1")
        opts = refine._deviceOptions()
        self.assertEqual(opts, {"gpu": "0,1"})
        argv = Plugin.getGmmcoreArgs("refine", particles="p.star", out="o", **opts).split()[2:]
        self.assertEqual(build_parser(argv).parse_args(argv).gpu, "0,1")
        refine.daskScheduler.set(" tcp://node12:8786 ")
        opts = refine._deviceOptions()
        self.assertEqual(opts, {"dask_scheduler": "tcp://node12:8786"})
        argv = Plugin.getGmmcoreArgs("refine", particles="p.star", out="o", **opts).split()[2:]
        args = build_parser(argv).parse_args(argv)
        self.assertEqual((args.dask_scheduler, args.gpu), ("tcp://node12:8786", None))

    def test_validate_half_sets(self):
        """Refinement refuses particles without half sets unless asked for a new split."""
        import starfile
        tables = starfile.read(self.perturbed, always_dict=True)
        tables["particles"] = tables["particles"].drop(columns=["rlnRandomSubset"])
        nohalf = self.getOutputPath("no_halves.star")
        starfile.write(tables, nohalf, overwrite=True)
        os.symlink(self.stack, self.getOutputPath("particles.mrcs"))
        prot = self._import_relion(nohalf, "relion import, no halves")
        self.assertIsNone(prot.outputParticles.getFirstItem().getAttributeValue(HALF_SET_ATTR, None))

        refine = self.newProtocol(GmmProtRefine, **REFINE)
        refine.inputParticles.set(prot)
        refine.inputParticles.setExtended("outputParticles")
        errors = refine.validate()
        self.assertTrue(any("half sets" in e for e in errors), errors)
        refine.newSplit.set(True)
        self.assertFalse([e for e in refine.validate() if "half" in e])


class TestGmmErrors(GmmBaseTest):
    """A failing engine run shows the engine's one-line reason as the protocol's error."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)

    def test_failed_import_shows_engine_error(self):
        import re
        import shutil

        import mrcfile
        data = getTestData()
        star = self.getOutputPath("nan_image.star")
        shutil.copy(data.getFile("particles"), star)
        stack = self.getOutputPath("particles.mrcs")  # the star names it relative to its folder
        shutil.copy(data.getFile("stack"), stack)
        with mrcfile.open(stack, mode="r+") as m:
            m.data[5] = np.nan  # passes the form's checks; the engine finds it while phase flipping
        prot = self.newProtocol(GmmProtImportParticles, objLabel="gmm import, NaN image",
                                importFrom=0, starFile=star)
        self.proj.launchProtocol(prot, wait=True)
        self.assertTrue(prot.isFailed())
        message = prot.getErrorMessage()
        with open(prot._getExtraPath("gmmcore_error.txt")) as f:
            engine = f.read().strip()
        self.assertTrue(engine.startswith("gmmcore import: error: ") and len(engine.splitlines()) == 1, engine)
        self.assertEqual(message.strip(), engine.split(": error: ", 1)[1])
        self.assertIn("NaN", message)
        self.assertIn("particles.mrcs", message)
        self.assertNotIn("non-zero exit status", message)
        self.assertIsNone(re.search(r"\x1b\[", message))
        self.assertNotIn("Traceback", message)
