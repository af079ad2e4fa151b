"""The compute protocols' shared form, without an engine run (seconds): one meaning of the batch
size (0 = automatic), Threads for every compute protocol (the engine's GMMCORE_THREADS), checks of
the maps on the particles' grid and of the particle count naming the form's fields, the GPU asked
for and not used in every Summary, the patch outputs among the possible outputs, the expert
alignment fields (width rule, band rule, align from) on the engine's command line, the pose
precision (Cramér–Rao bound) in the Summary of focused-like runs."""
import os

import mrcfile
import numpy as np

from pyworkflow.tests import BaseTest, setupTestProject
from pwem.constants import ALIGN_PROJ
from pwem.objects import SetOfParticles, VolumeMask

import gmm_fakes
from gmmcore.summary import HeterogeneitySummary, RunSummary
from gmmrefine_scipion import convert
from gmmrefine_scipion.protocols import (GmmProtConfToPose, GmmProtExpandSymmetry, GmmProtFocusedRefine,
                                         GmmProtHeterogeneity, GmmProtPatchRefine, GmmProtRefine)

COMPUTE = (GmmProtRefine, GmmProtFocusedRefine, GmmProtPatchRefine, GmmProtHeterogeneity, GmmProtConfToPose)


class TestGmmProtocolForms(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)

    def _particles(self, name, n=24, box=16, apix=2.0):
        star, _ = gmm_fakes.write_star_stack(self.getOutputPath(name), n=n, box=box, apix=apix)
        parts = SetOfParticles(filename=self.getOutputPath(name + ".sqlite"))
        convert.read_particles_star(star, parts, alignType=ALIGN_PROJ, phaseFlipped=False)
        parts.write()
        return parts

    def _mask(self, name, box, apix):
        path = self.getOutputPath(name + ".mrc")
        with mrcfile.new(path, overwrite=True) as m:
            m.set_data(np.ones((box,) * 3, np.float32))
            m.voxel_size = apix
        mask = VolumeMask(location=path)
        mask.setSamplingRate(apix)
        return mask

    def _saved(self, protClass, **kwargs):
        prot = self.newProtocol(protClass, **kwargs)
        self.proj.saveProtocol(prot)
        return prot

    def test_common_fields(self):
        for protClass in COMPUTE:
            prot = protClass()
            for name in ("useGpu", "gpuList", "maxResolution", "batchSize", "extraParams", "numberOfThreads"):
                self.assertTrue(prot.hasAttribute(name), (protClass.__name__, name))
            self.assertEqual(prot.batchSize.get(), 16, protClass.__name__)
            batchHelp = prot.getParam("batchSize").help.get()
            if protClass.BATCH_AUTO:
                self.assertIn("0 = automatic", batchHelp, protClass.__name__)
            else:  # gmmcore heterogeneity refuses --batch auto (its training batch is a hyperparameter)
                self.assertIn("at least 1", batchHelp, protClass.__name__)
                self.assertNotIn("automatic", batchHelp, protClass.__name__)
        self.assertEqual([c.__name__ for c in COMPUTE if not c.BATCH_AUTO],
                         ["GmmProtHeterogeneity"])
        self.assertEqual(GmmProtExpandSymmetry().symmetryGroup.get(), "C1")

    def test_batch_zero_is_auto_and_threads_reach_the_engine(self):
        refine = self._saved(GmmProtRefine, batchSize=0, numberOfThreads=3, useGpu=False)
        refine.inputParticles.set(self._particles("batch"))
        options = refine._engineOptions()
        self.assertEqual((options["batch"], options["cpu"]), ("auto", True))
        self.assertEqual(refine.engineEnviron()["GMMCORE_THREADS"], "3")
        het = self._saved(GmmProtHeterogeneity, batchSize=0, numberOfThreads=2, useGpu=False)
        het.inputRefinement.set(refine)
        # the engine's heterogeneity takes no --batch auto: the form refuses 0 in its own words
        batchErrors = [e for e in het.validate() if e.startswith("*Batch size*")]
        self.assertEqual(len(batchErrors), 1, het.validate())
        self.assertIn("at least 1", batchErrors[0])
        self.assertNotIn("--", batchErrors[0])
        het.batchSize.set(8)
        options = het._engineOptions()
        self.assertEqual((options["batch"], options["maxres"]), (8, None))
        self.assertNotIn("res", options)
        self.assertEqual(options["from"], os.path.abspath(refine.getRunDir()))
        self.assertEqual(het.engineEnviron()["GMMCORE_THREADS"], "2")

    def test_mask_on_the_particles_grid_and_particle_count(self):
        refine = self._saved(GmmProtRefine, useGpu=False)
        refine.inputParticles.set(self._particles("grid", n=24, box=16, apix=2.0))
        refine.referenceMask.set(self._mask("mask_box20", 20, 2.0))
        errors = refine.validate()
        self.assertTrue(any(e.startswith("Mask (optional): box 20") for e in errors), errors)
        # 12 particles per half set at box 16: gmmcore needs ceil(pi * 16 / 2) = 26
        self.assertTrue(any("'Refine few particles anyway?'" in e for e in errors), errors)
        self.assertFalse([e for e in errors if "--" in e], errors)
        refine.referenceMask.set(self._mask("mask_apix", 16, 2.5))
        errors = refine.validate()
        self.assertTrue(any(e.startswith("Mask (optional): pixel size 2.500") for e in errors), errors)
        refine.referenceMask.set(self._mask("mask_ok", 16, 2.0))
        refine.fewParticles.set(True)
        self.assertEqual(refine.validate(), [])
        # what the form asks the user to confirm
        self.assertEqual(len(refine.warnings()), 2, refine.warnings())  # CPU only, few particles

    def test_gpu_requested_and_not_used_is_a_summary_warning(self):
        for protClass, forge, load in ((GmmProtRefine, gmm_fakes.write_refine_run, RunSummary),
                                       (GmmProtHeterogeneity, gmm_fakes.write_heterogeneity_run, HeterogeneitySummary),
                                       (GmmProtConfToPose, gmm_fakes.write_conf2pose_run, RunSummary)):
            prot = self._saved(protClass, useGpu=True, gpuList="0")
            forge(prot.getRunDir())
            summary = load.load(prot.getRunDir())
            summary.device = "CPU (4 threads)"
            summary.save(prot.getRunDir())
            warnings = [line for line in prot.summary() if line.startswith("Warning:")]
            self.assertEqual(len(warnings), 1, (protClass.__name__, prot.summary()))
            self.assertIn("GPU", warnings[0])
            prot.useGpu.set(False)
            self.assertFalse([line for line in prot.summary() if line.startswith("Warning:")], protClass.__name__)

    def test_heterogeneity_summary_tells_what_the_gmm_holds_of_the_focus_mask(self):
        prot = self._saved(GmmProtHeterogeneity, useGpu=False)
        gmm_fakes.write_heterogeneity_run(prot.getRunDir())
        summary = HeterogeneitySummary.load(prot.getRunDir())
        self.assertFalse([line for line in prot.summary() if "focus mask" in line])  # no --mask: nothing said
        summary.halves["1"].mask_coverage = {"map_share": 0.155, "gmm_share": 0.18, "low": False, "short": False,
                                             "region_seeded": True,
                                             "before": {"map_share": 0.155, "gmm_share": 0.09, "low": True}}
        summary.halves["2"].mask_coverage = {"map_share": 0.17, "gmm_share": 0.003, "low": True, "short": True}
        summary.save(prot.getRunDir())
        lines = prot.summary()
        self.assertIn("Half 1, inside the focus mask: 16 % of the map's density and 9 % of the consensus GMM's "
                      "mass; re-seeded on the region: 18 % of its mass", lines)
        self.assertIn("Half 2, inside the focus mask: 17 % of the map's density and 0 % of the consensus GMM's mass",
                      lines)
        warnings = [line for line in lines if line.startswith("Warning:")]
        self.assertEqual(len(warnings), 1, lines)
        self.assertTrue(warnings[0].startswith("Warning: half 2: the GMM leaves out"), warnings)

    def test_patch_outputs_are_possible_outputs(self):
        prot = GmmProtPatchRefine(numberOfPatches=2)
        names = {name for name, _ in prot.iterOutputAttributes(includePossible=True)}  # as pyworkflow lists them
        self.assertEqual(names, {"outputVolume", "outputFSCs", "outputLocalResolution", "outputParticlesPatch01",
                                 "outputParticlesPatch02", "outputMaskPatch01", "outputMaskPatch02"})

    def test_every_protocol_declares_its_outputs(self):
        """What Scipion offers downstream before a run (``iterOutputAttributes(includePossible=True)``):
        every output each protocol registers, by name and class (a dict: several outputs share a
        class, which an Enum would alias).  The Scipion chains check what the runs register against
        it (``GmmBaseTest.launchProtocol``); export writes files only."""
        from pwem.objects import AtomStruct, SetOfFSCs, SetOfParticlesFlex, SetOfVolumes, Volume
        from gmmrefine_scipion import protocols
        from gmmrefine_scipion.tests import declaredOutputs, undeclaredOutputs
        volumes = {"outputVolume": Volume, "outputFSCs": SetOfFSCs}
        expected = {
            "GmmProtImportParticles": {"outputParticles": SetOfParticles},
            "GmmProtExportParticles": {},
            "GmmProtExpandSymmetry": {"outputParticles": SetOfParticles},
            "GmmProtRefine": dict(volumes, outputParticles=SetOfParticles, outputGmmHalf1=AtomStruct,
                                  outputGmmHalf2=AtomStruct),
            "GmmProtFocusedRefine": dict(volumes, outputParticles=SetOfParticles, outputLocalResolution=Volume,
                                         outputVolumeSym=Volume),
            "GmmProtPatchRefine": dict(volumes, outputLocalResolution=Volume, outputParticlesPatch01=SetOfParticles,
                                       outputMaskPatch01=VolumeMask),
            "GmmProtHeterogeneity": {"outputParticles": SetOfParticlesFlex, "outputVolumes": SetOfVolumes},
            "GmmProtConfToPose": dict(volumes, outputParticles=SetOfParticles, outputParticlesConverted=SetOfParticles),
        }
        classes = {name: getattr(protocols, name) for name in dir(protocols) if name.startswith("GmmProt")}
        self.assertEqual(set(classes), set(expected))
        for name, protClass in classes.items():
            prot = protClass(numberOfPatches=1) if protClass is GmmProtPatchRefine else protClass()
            self.assertEqual(declaredOutputs(prot), expected[name], name)
            self.assertEqual({n for n, _ in prot.iterOutputAttributes(includePossible=True)}, set(expected[name]), name)
        # the chains' check: an output registered but not declared (or of another class) is named
        prot = self._saved(GmmProtRefine)
        prot._defineOutputs(outputMask=VolumeMask(), outputVolume=SetOfParticles(filename=":memory:"))
        self.assertEqual(sorted(undeclaredOutputs(prot)), [
            "GmmProtRefine registered outputMask, not among its possible outputs",
            "GmmProtRefine registered outputVolume as SetOfParticles, declared Volume"])

    def test_focus_width_fields_reach_the_engine(self):
        """Focused, patch and conf2pose forms: expert "Width rule" and "Mask level" (the engine's
        defaults) become --width-rule / --mask-level, which the engine's parser takes."""
        from pyworkflow.protocol.params import LEVEL_ADVANCED
        from gmmcore import defaults
        from gmmcore.cli import build_parser
        from gmmrefine_scipion import Plugin
        from gmmrefine_scipion.protocols.focus_width import focusWidthOptions

        for protClass in COMPUTE:
            prot = protClass()
            has = protClass in (GmmProtFocusedRefine, GmmProtPatchRefine, GmmProtConfToPose)
            self.assertEqual((prot.hasAttribute("widthRule"), prot.hasAttribute("maskLevel")), (has, has),
                             protClass.__name__)
            if not has:
                continue
            for name in ("widthRule", "maskLevel"):
                self.assertEqual(prot.getParam(name).expertLevel.get(), LEVEL_ADVANCED, (protClass.__name__, name))
            self.assertEqual(focusWidthOptions(prot), {"width_rule": defaults.WIDTH_RULE,
                                                       "mask_level": defaults.MASK_LEVEL})
        prot = self._saved(GmmProtFocusedRefine, widthRule=1, maskLevel=0.5, useGpu=False)
        options = focusWidthOptions(prot)
        self.assertEqual(options, {"width_rule": "sigma", "mask_level": 0.5})
        for verb, required in (("refine-focused", dict(mask="m.mrc", out="o", **{"from": "r"})),
                               ("refine-patches", dict(out="o", **{"from": "r"})),
                               ("conf2pose", dict(mask="m.mrc", out="o", **{"from": "h"}))):
            argv = Plugin.getGmmcoreArgs(verb, **required, **options).split()[2:]
            args = build_parser(argv).parse_args(argv)
            self.assertEqual((args.width_rule, args.mask_level), ("sigma", 0.5), verb)
        for level in (0.0, 1.5):
            prot.maskLevel.set(level)
            errors = [e for e in prot.validate() if e.startswith("*Mask level*")]
            self.assertEqual(len(errors), 1, (level, prot.validate()))

    def test_patch_shape_reaches_the_engine(self):
        """The patch form: expert "Patch shape" (the engine's default) becomes --patch-shape, which
        the engine's parser takes."""
        from pyworkflow.protocol.params import LEVEL_ADVANCED
        from gmmcore import defaults
        from gmmcore.cli import build_parser
        from gmmrefine_scipion import Plugin

        prot = GmmProtPatchRefine()
        self.assertEqual(prot.getParam("patchShape").expertLevel.get(), LEVEL_ADVANCED)
        self.assertEqual(prot._patchOptions()["patch_shape"], defaults.PATCH_SHAPE)
        for index, name in enumerate(defaults.PATCH_SHAPES):
            options = self._saved(GmmProtPatchRefine, patchShape=index, numberOfPatches=3, useGpu=False)._patchOptions()
            argv = Plugin.getGmmcoreArgs("refine-patches", out="o", **{"from": "r"}, **options).split()[2:]
            args = build_parser(argv).parse_args(argv)
            self.assertEqual((args.patch_shape, args.patches), (name, 3))

    def test_alignment_rule_fields_reach_the_engine(self):
        """Global, focused and patch forms: expert "Band rule", "Align from" and "Drop worst fraction"
        (the engine's defaults) become --band-rule / --align-from / --drop-worst, which the engine's
        parser takes; a changed choice changes the steps' signature (Continue reruns them)."""
        from pyworkflow.protocol.params import LEVEL_ADVANCED
        from gmmcore import defaults
        from gmmcore.cli import build_parser
        from gmmrefine_scipion import Plugin
        from gmmrefine_scipion.protocols.alignment_rules import (BAND_RULES, GMM_DENSITIES, GMM_FITS, GMM_LOCAL_RES,
                                                                 GMM_STARTS, alignmentRuleOptions)

        for protClass in COMPUTE:
            prot = protClass()
            has = protClass in (GmmProtRefine, GmmProtFocusedRefine, GmmProtPatchRefine)
            self.assertEqual((prot.hasAttribute("bandRule"), prot.hasAttribute("alignFrom")), (has, has),
                             protClass.__name__)
            if not has:
                continue
            for name in ("bandRule", "alignFrom", "dropWorst", "gmmFit", "gmmStart", "gmmLocalRes", "gmmNScale",
                         "gmmDensity"):
                self.assertEqual(prot.getParam(name).expertLevel.get(), LEVEL_ADVANCED, (protClass.__name__, name))
            self.assertEqual(alignmentRuleOptions(prot), {"band_rule": defaults.BAND_RULE,
                                                          "align_from": defaults.ALIGN_FROM,
                                                          "drop_worst": defaults.DROP_WORST,
                                                          "gmm_fit": defaults.GMM_FIT,
                                                          "gmm_start": defaults.GMM_START,
                                                          "gmm_local_res": defaults.GMM_LOCAL_RES,
                                                          "gmm_n_scale": defaults.GMM_N_SCALE,
                                                          "gmm_density": defaults.GMM_DENSITY})
        refine = self._saved(GmmProtRefine, useGpu=False)
        refine.inputParticles.set(self._particles("rules"))
        other = [r for r in BAND_RULES if r != defaults.BAND_RULE][0]  # the non-default rule
        other_local = [c for c in GMM_LOCAL_RES if c != defaults.GMM_LOCAL_RES][0]  # the non-default choice
        # (field, a value that changes the run, a value out of range or None, the words of its refusal)
        for name, value, bad, words in (("bandRule", BAND_RULES.index(other), None, None),
                                        ("alignFrom", 1, None, None),
                                        ("dropWorst", 0.1, 0.6, "Drop worst fraction"),
                                        ("gmmFit", GMM_FITS.index("hermitian"), None, None),
                                        ("gmmStart", GMM_STARTS.index("warm"), None, None),
                                        ("gmmLocalRes", GMM_LOCAL_RES.index(other_local), None, None),
                                        ("gmmNScale", 2.0, 20.0, "GMM size"),
                                        ("gmmDensity", GMM_DENSITIES.index("local"), None, None)):
            signature = refine._formSignature()
            getattr(refine, name).set(value)
            self.assertNotEqual(refine._formSignature(), signature, name)
            if bad is not None:
                getattr(refine, name).set(bad)
                self.assertTrue(any(words in e for e in refine.validate()), refine.validate())
                getattr(refine, name).set(value)
        command = Plugin.getGmmcoreArgs("refine", out="o", **refine._engineOptions())
        self.assertIn("--band-rule %s " % other, command + " ")
        self.assertIn("--align-from prior ", command + " ")
        self.assertIn("--drop-worst 0.1 ", command + " ")
        self.assertIn("--gmm-fit hermitian ", command + " ")
        self.assertIn("--gmm-start warm ", command + " ")
        self.assertIn("--gmm-local-res %s " % other_local, command + " ")
        self.assertIn("--gmm-n-scale 2.0 ", command + " ")
        self.assertIn("--gmm-density local ", command + " ")
        for protClass, verb, required in (
                (GmmProtFocusedRefine, "refine-focused", dict(mask="m.mrc", out="o", **{"from": "r"})),
                (GmmProtPatchRefine, "refine-patches", dict(out="o", **{"from": "r"}))):
            options = self._saved(protClass, bandRule=BAND_RULES.index(other), alignFrom=1, dropWorst=0.1,
                                   gmmFit=GMM_FITS.index("hermitian"), gmmStart=GMM_STARTS.index("warm"),
                                   gmmLocalRes=GMM_LOCAL_RES.index(other_local), gmmNScale=2.0,
                                   gmmDensity=GMM_DENSITIES.index("local"), useGpu=False)._alignmentOptions()
            self.assertEqual((options["band_rule"], options["align_from"]), (other, "prior"), verb)
            argv = Plugin.getGmmcoreArgs(verb, **required, **options).split()[2:]
            args = build_parser(argv).parse_args(argv)
            self.assertEqual((args.band_rule, args.align_from, args.drop_worst, args.gmm_fit, args.gmm_start,
                              args.gmm_local_res, args.gmm_n_scale, args.gmm_density),
                             (other, "prior", 0.1, "hermitian", "warm", other_local, 2.0, "local"), verb)

    def test_decoder_amplitude_field_reaches_the_engine(self):
        """Heterogeneity form: expert "Decoder amplitudes" (the engine's default) becomes --amplitude,
        which the engine's parser takes; changing it changes the steps' signature."""
        from pyworkflow.protocol.params import LEVEL_ADVANCED
        from gmmcore import defaults
        from gmmcore.cli import build_parser
        from gmmrefine_scipion import Plugin
        from gmmrefine_scipion.protocols.protocol_heterogeneity import DECODER_AMPLITUDE

        refine = self._saved(GmmProtRefine, useGpu=False)
        refine.inputParticles.set(self._particles("amp"))
        het = self._saved(GmmProtHeterogeneity, batchSize=8, useGpu=False)
        het.inputRefinement.set(refine)
        self.assertEqual(het.getParam("decoderAmplitude").expertLevel.get(), LEVEL_ADVANCED)
        self.assertEqual(het._engineOptions()["amplitude"], defaults.DECODER_AMPLITUDE)
        signature = het._formSignature()
        other = [c for c in DECODER_AMPLITUDE if c != defaults.DECODER_AMPLITUDE][0]
        het.decoderAmplitude.set(DECODER_AMPLITUDE.index(other))
        self.assertNotEqual(het._formSignature(), signature)
        argv = Plugin.getGmmcoreArgs("heterogeneity", out="o", **het._engineOptions()).split()[2:]
        self.assertEqual(build_parser(argv).parse_args(argv).amplitude, other)

    def test_gmm_fidelity_in_the_iteration_lines(self):
        """Each iteration's Summary line tells how much of the other half map's signal the GMMs hold,
        beside what the truth would score; a run of an older version (no such figures) keeps its line."""
        prot = self._saved(GmmProtRefine, numberOfIterations=2, useGpu=False)
        gmm_fakes.write_refine_run(prot.getRunDir(), iterations=2)
        old = [line for line in prot.summary() if line.startswith("Iteration 2:")]
        self.assertEqual(len(old), 1)
        self.assertNotIn("other half map", old[0])
        summary = RunSummary.load(prot.getRunDir())
        summary.iterations[1].gmm_cross_fsc = {"1": 0.586, "2": 0.583}
        summary.iterations[1].gmm_fsc_ceiling = 0.638
        summary.save(prot.getRunDir())
        self.assertIn(old[0] + "; GMMs vs the other half map 0.59 / 0.58 (the truth would score 0.64)", prot.summary())

    def test_pose_precision_in_the_summary(self):
        """Focused, conf2pose and patch runs: the Cramér–Rao bound of the region's and the whole
        particle's per-particle pose is one Summary line (per patch: appended to its line); the
        engine's warning of a region that is too weak is shown (a patch's with its number)."""
        weak = ("the focus region carries too little signal to align each particle on its own: its pose can be "
                "fixed at best to ±4.5° per particle")
        for protClass, forge, region in ((GmmProtFocusedRefine, gmm_fakes.write_focused_run, "focus region"),
                                         (GmmProtConfToPose, gmm_fakes.write_conf2pose_run, "target region")):
            prot = self._saved(protClass, useGpu=False)
            forge(prot.getRunDir())
            self.assertFalse([line for line in prot.summary() if line.startswith("Pose precision")],
                             protClass.__name__)  # a start without GMMs: no bound
            summary = RunSummary.load(prot.getRunDir())
            summary.pose_precision = gmm_fakes.pose_precision(region_deg=4.5, particle_deg=1.2, resolution=8.0,
                                                              gaussians=12, mass=0.3)
            summary.warnings = [weak]
            summary.save(prot.getRunDir())
            lines = prot.summary()
            self.assertIn("Pose precision at 8.00 Å (Cramér–Rao bound, per particle): %s ±4.5° / 1.12 px "
                          "(12 Gaussians, 30%% of the mass); whole particle ±1.2°" % region, lines,
                          protClass.__name__)
            self.assertEqual(lines[0], "Warning: " + weak, protClass.__name__)
        prot = self._saved(GmmProtPatchRefine, useGpu=False)
        gmm_fakes.write_patches_run(prot.getRunDir(), patches=3,
                                    precision=[gmm_fakes.pose_precision(region_deg=a, mass=m)
                                               for a, m in ((1.5, 0.4), (4.5, 0.1), (2.0, 0.25))],
                                    warnings=[[], [weak], []])
        lines = prot.summary()
        self.assertEqual(lines[0], "Warning: patch 2: " + weak, lines)
        self.assertIn("Pose precision at 8.00 Å (Cramér–Rao bound, per particle): whole particle ±1.2° / 0.30 "
                      "px; each patch's region below", lines)
        self.assertIn("Patch 2 (20 Gaussians): within its mask 9.00 Å -> 8.00 Å; pose precision ±4.5° / 1.12 px "
                      "(10% of the mass)", lines)
        self.assertEqual(len([line for line in lines if "; pose precision ±" in line]), 3, lines)
        gmm_fakes.write_patches_run(prot.getRunDir(), patches=2, warnings=[[weak], [weak]])
        lines = prot.summary()
        self.assertEqual([line for line in lines if line.startswith("Warning:")], ["Warning: patches 1, 2: " + weak])
        self.assertFalse([line for line in lines if "pose precision" in line.lower()], lines)

    def test_continue_mode_after_a_changed_field(self):
        """Execute in Continue mode: the engine steps carry the form's signature (a changed field
        reruns them, a device field does not); another Iterations continues the finished run (the
        engine adds iterations or ends at an earlier one), any other change of what it computes starts
        the run directory anew."""
        refine = self._saved(GmmProtRefine, numberOfIterations=1, useGpu=False)
        refine.inputParticles.set(self._particles("continue"))
        signature = refine._formSignature()
        refine.numberOfThreads.set(7)
        refine.batchSize.set(4)
        self.assertEqual(refine._formSignature(), signature)
        refine.numberOfIterations.set(2)
        self.assertNotEqual(refine._formSignature(), signature)

        def engineRun(**changes):
            """What runEngineStep decides for the form as it is (no engine run): continue?"""
            for name, value in changes.items():
                getattr(refine, name).set(value)
            options = dict(refine._engineOptions(), out=os.path.abspath(refine.getRunDir()))
            started = refine._startOrContinue(options)
            gmm_fakes.write_refine_run(refine.getRunDir(), iterations=refine.numberOfIterations.get())
            with open(refine.getRunDir("params.json"), "w") as f:
                f.write("{}")
            return started

        self.assertFalse(engineRun(numberOfIterations=1))  # a new run
        self.assertTrue(engineRun())  # killed, or nothing changed: continue
        self.assertTrue(engineRun(numberOfIterations=2, batchSize=8, numberOfThreads=2))  # N more iterations
        self.assertTrue(engineRun(numberOfIterations=1))  # fewer: the engine ends at iteration 1, keeps iteration 2
        self.assertTrue(os.path.exists(refine.getRunDir("summary.json")))  # (forged again by engineRun)
        self.assertFalse(engineRun(symmetryGroup="C2"))  # changes the result: anew
        self.assertTrue(engineRun(numberOfIterations=3))
        # another mask (the engine sees the same converted file name): the steps rerun, the run starts anew
        signature = refine._formSignature()
        mask = self._mask("continue_mask", 16, 2.0)
        maskProt = self._saved(GmmProtRefine, useGpu=False)  # any saved protocol can own an output
        maskProt._defineOutputs(outputMask=mask)
        refine.referenceMask.set(maskProt)
        refine.referenceMask.setExtended("outputMask")
        self.assertNotEqual(refine._formSignature(), signature)
        self.assertFalse(engineRun())
        # conformation to pose: raised Focused iterations continue; another focused stage keeps the
        # conversion (convert/ and the record; gmmcore conf2pose reuses it); a conversion field starts anew
        c2p = self._saved(GmmProtConfToPose, useGpu=False)
        base = {"from": "/runs/het", "mask": "region_mask.mrc", "steps": 30, "focus_iter": 0,
                "width_rule": "variance", "mask_level": 0.25, "out": os.path.abspath(c2p.getRunDir())}

        def c2pRun(**changes):
            started = c2p._startOrContinue({**base, **changes})
            for name in ("convert", "iter000", "iter001", "final"):
                os.makedirs(c2p.getRunDir(name), exist_ok=True)
            for name in ("params.json", "summary.json", os.path.join("convert", "params.json")):
                with open(c2p.getRunDir(name), "w") as f:
                    f.write("{}")
            return started

        self.assertFalse(c2pRun())  # a new run
        self.assertTrue(c2pRun(focus_iter=3))  # more focused iterations
        self.assertTrue(c2pRun(focus_iter=1))  # fewer: the stage ends at iteration 1 (the engine keeps the rest)
        self.assertTrue(c2pRun(focus_iter=3))
        self.assertTrue(c2pRun(focus_iter=3, width_rule="sigma"))  # another focused stage: the conversion stays
        c2p._startOrContinue({**base, "focus_iter": 3, "width_rule": "sigma", "mask_level": 0.1})
        self.assertEqual(sorted(os.listdir(c2p.getRunDir())), ["convert", "params.json"])
        self.assertTrue(os.path.exists(c2p.getRunDir("convert", "params.json")))
        self.assertFalse(c2pRun(steps=40))  # the conversion changed: anew
        self.assertFalse(c2pRun(steps=40, mask="other_mask.mrc", focus_iter=1))
