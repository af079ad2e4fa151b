"""GMM focused refinement and patch-by-patch refinement (composite half maps).

Both run one gmmcore run directory through :class:`GmmProtRunBase` (``gmmcore refine-focused`` /
``gmmcore refine-patches``), then ``gmmcore local-resolution`` on the result, and register
particles, volume with half maps, FSCs (including the FSC within the focus / patch masks), the
local-resolution volume and (patches) the patch masks.
"""
import os

import pyworkflow.protocol.params as params
from pyworkflow.protocol.constants import GPU_LIST, USE_GPU
from pwem.objects import SetOfFSCs, SetOfParticles, Volume, VolumeMask
from pwem.protocols import ProtRefine3D

from gmmrefine_scipion import Plugin, convert
from gmmrefine_scipion.constants import BACKEND_HELP, BACKEND_LABELS, BACKEND_VALUES, INPUT_STAR, SYMMETRY_HELP
from .protocol_base import GmmProtRunBase, validateSymmetry

FOCUSED_DIR = "focused"
PATCHES_DIR = "patches"
LOCALRES_DIR = "localres"
FROM_RUN, FROM_PARTICLES = 0, 1


def _alignmentParams(form, iterations, iterLabel):
    """The form fields focused and patch refinement share (device, iterations, alignment)."""
    form.addHidden(USE_GPU, params.BooleanParam, default=True, label="Use GPU?",
                   help="Run the GMM kernels on GPU(s); No runs them on the CPU (slow, fine for small tests).")
    form.addHidden(GPU_LIST, params.StringParam, default=Plugin.getDefaultGpu(), label="GPU ids",
                   help="GPU(s) to use, e.g. '0' or '0 1 2 3'. Focused refinement uses the first; patch-by-patch "
                        "refinement refines one patch per listed GPU at once (one worker process each).")
    form.addSection(label="Refinement")
    form.addParam("numberOfIterations", params.IntParam, default=iterations,
                  validators=[params.Range(1, 50, "between 1 and 50")], label=iterLabel,
                  help="The paper runs 3 focused iterations (per patch).")
    form.addParam("reimposeSymmetry", params.StringParam, default="", label="Reimpose symmetry (optional)",
                  help="For particles expanded with 'gmm expand symmetry' and refined in C1 with a mask on one "
                       "asymmetric unit: average the symmetry copies of the refined region, weighted by the "
                       "rotated masks, into a symmetric map (e.g. C3). Empty: none. " + SYMMETRY_HELP)
    form.addParam("localResolution", params.BooleanParam, default=True, label="Compute local resolution?",
                  help="Windowed FSC of the two result half maps (gmmcore local-resolution: 16-voxel window, "
                       "FSC 0.5) within the FSC mask.")
    form.addParam("numberOfGaussians", params.IntParam, default=0, validators=[params.GE(0)],
                  expertLevel=params.LEVEL_ADVANCED, label="Number of Gaussians",
                  help="0: estimated from the map (mass and resolution).")
    form.addParam("maxResolution", params.FloatParam, default=0.0, expertLevel=params.LEVEL_ADVANCED,
                  label="Highest resolution used (Å)", help="0: follow the FSC of each iteration.")
    form.addParam("priorAngle", params.FloatParam, default=3.0, validators=[params.GE(0)],
                  expertLevel=params.LEVEL_ADVANCED, label="Start pose accuracy: angle (deg)",
                  help="Width of the pose prior centred on the poses this run starts from. Focused refinement "
                       "moves poses more than global refinement (the region moves relative to the rest): raise "
                       "it for large motions. 0: no prior.")
    form.addParam("priorShift", params.FloatParam, default=1.0, validators=[params.GE(0)],
                  expertLevel=params.LEVEL_ADVANCED, condition="priorAngle > 0",
                  label="Start pose accuracy: shift (px)")
    form.addParam("batchSize", params.IntParam, default=16, validators=[params.GE(0)],
                  expertLevel=params.LEVEL_ADVANCED, label="Batch size",
                  help="Particles aligned together on the GPU; lower it if the GPU runs out of memory. 0 = "
                       "automatic: the largest batch that fits the device's free memory (results do not depend "
                       "on it).")
    form.addParam("arrayBackend", params.EnumParam, choices=BACKEND_LABELS, default=0,
                  expertLevel=params.LEVEL_ADVANCED, display=params.EnumParam.DISPLAY_HLIST,
                  label="Array backend", help=BACKEND_HELP)
    form.addParam("extraParams", params.StringParam, default="", expertLevel=params.LEVEL_ADVANCED,
                  label="Additional gmmcore arguments", help="Passed verbatim to gmmcore.")
    form.addParallelSection(threads=4, mpi=0)


class _GmmFocusedBase(GmmProtRunBase):
    """What the focused and the patch protocol share: alignment options, local resolution, FSCs."""

    def _insertAllSteps(self):
        self._insertFunctionStep(self.convertInputStep, self._inputSignature())
        self._insertFunctionStep(self.runEngineStep)
        if self.localResolution.get():
            self._insertFunctionStep(self.localResolutionStep)
        self._insertFunctionStep(self.createOutputStep)

    def _alignmentOptions(self):
        options = {"iter": self.numberOfIterations.get(), "batch": self.batchSize.get() or "auto",
                   "backend": BACKEND_VALUES[self.arrayBackend.get()],
                   "threads": max(1, self.numberOfThreads.get() or 1),
                   "ngauss": self.numberOfGaussians.get() or None, "maxres": self.maxResolution.get() or None,
                   "reimpose": self.reimposeSymmetry.get() or None}
        if self.priorAngle.get() > 0:
            options["prior_angle"] = self.priorAngle.get()
            if self.priorShift.get() > 0:
                options["prior_shift"] = self.priorShift.get()
        else:
            options["no_prior"] = True
        options.update(self._deviceOptions())
        return options

    def localResolutionStep(self):
        summary = self.getSummary()
        half1, half2 = self._resultHalves(summary)
        mask = self._runDir("fsc_mask.mrc")
        self.runGmmcore("local-resolution", half1=half1, half2=half2,
                        mask=self.abspath(mask) if os.path.exists(mask) else None,
                        out=self.abspath(self._getExtraPath(LOCALRES_DIR)))

    def _resultHalves(self, summary):
        """The half maps the result stands for (the reimposed ones when symmetry was reimposed)."""
        rei = summary.final.extra.get("reimposed") if summary.kind == "focused" else None
        if rei:
            return summary.rel(rei["half1"]), summary.rel(rei["half2"])
        return summary.path("half1"), summary.path("half2")

    def getLocalResolutionFile(self):
        path = self._getExtraPath(LOCALRES_DIR, "local_resolution.mrc")
        return path if os.path.exists(path) else None

    def _registerLocalResolution(self, vol, apix):
        path = self.getLocalResolutionFile()
        if path:
            lr = Volume(location=path)
            lr.setSamplingRate(apix)
            self._defineOutputs(outputLocalResolution=lr)
            self._defineSourceRelation(vol, lr)

    def _comparisonFscs(self, summary):
        """Scipion FSCs of the comparison plot: input poses, global (start), result, focus-mask curves."""
        from pwem.objects import FSC
        from gmmrefine_scipion.plotting.focused import comparison_curves
        fscs = self._createSetOfFSCs()
        for label, freq, curve, res, _ in comparison_curves(summary):
            fsc = FSC(objLabel="%s (%.2f Å)" % (label, res))
            fsc.setData(list(map(float, freq)), list(map(float, curve)))
            fscs.append(fsc)
        return fscs

    def _validateCommon(self):
        errors = []
        sym = self.reimposeSymmetry.get()
        if sym:
            err = validateSymmetry(sym)
            if err:
                errors.append("Reimpose " + err[0].lower() + err[1:])
        errors += self._gpuErrors()
        return errors

    def _citations(self):
        return ["Chen2024"]


class GmmProtFocusedRefine(_GmmFocusedBase, ProtRefine3D):
    """Focused GMM refinement: refine particle poses on one region (Chen, Schmid & Chiu 2024).

    Gaussians of each half's GMM whose centre lies outside the mask are widened (σ/(0.25 + 0.75·M):
    4× where the mask is 0), so the alignment follows the high-resolution features inside the mask
    while the rest constrains it at low resolution.  Starts from a gmm global refinement (its final
    poses and half maps) or from any particles with a volume that has half maps.  The FSC is
    reported unmasked, with the FSC mask and within the focus mask.
    """
    _label = "gmm focused refinement"
    _possibleOutputs = {"outputParticles": SetOfParticles, "outputVolume": Volume, "outputFSCs": SetOfFSCs,
                        "outputLocalResolution": Volume, "outputVolumeSym": Volume}
    VERB = "refine-focused"
    RUN_DIR = FOCUSED_DIR

    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputType", params.EnumParam, choices=["a gmm refinement", "particles + volume"],
                      default=FROM_RUN, display=params.EnumParam.DISPLAY_HLIST, label="Start from",
                      help="A gmm global (or focused) refinement: its final poses, half maps, FSC mask and "
                           "symmetry. Or particles with 3-D poses and half sets plus a volume with half maps "
                           "(e.g. from RELION/cryoSPARC, or symmetry-expanded particles).")
        form.addParam("inputRefinement", params.PointerParam, pointerClass="GmmProtRefine, GmmProtFocusedRefine",
                      condition="inputType == %d" % FROM_RUN, label="GMM refinement", important=True,
                      help="A finished gmm global or focused refinement.")
        form.addParam("inputParticles", params.PointerParam, pointerClass="SetOfParticles",
                      pointerCondition="hasAlignmentProj", condition="inputType == %d" % FROM_PARTICLES,
                      label="Input particles", important=True,
                      help="Particles with 3-D poses and half sets (_rlnRandomSubset).")
        form.addParam("inputVolume", params.PointerParam, pointerClass="Volume",
                      condition="inputType == %d" % FROM_PARTICLES, label="Volume with half maps",
                      help="The map of those particles at those poses; its half maps are the start.")
        form.addParam("focusMask", params.PointerParam, pointerClass="VolumeMask", important=True,
                      label="Focus mask", help="Soft mask (0..1) of the region to focus on; same box and "
                                               "pixel size as the particles.")
        _alignmentParams(form, 3, "Iterations")

    # --------------------------- steps -----------------------------------------
    def _inputSignature(self):
        if self.inputType.get() == FROM_RUN:
            run = self.inputRefinement.get()
            return run.getObjId() if run is not None else None
        return GmmProtRunBase._inputSignature(self)

    def convertInputStep(self, signature=None):
        if self.inputType.get() == FROM_PARTICLES:
            convert.write_particles_star(self.inputParticles.get(), self._getExtraPath(INPUT_STAR),
                                         stackDir=self._getTmpPath("stacks"), requireHalfSets=True)

    def _engineOptions(self):
        options = {"mask": self.volumeFile(self.focusMask.get(), "focus_mask")}
        if self.inputType.get() == FROM_RUN:
            options["from"] = self.abspath(self.inputRefinement.get()._runDir())
        else:
            vol = self.inputVolume.get()
            half1, half2 = vol.getHalfMaps().split(",")
            options.update(particles=self.abspath(self._getExtraPath(INPUT_STAR)),
                           half1=self._mrc(half1, "half1"), half2=self._mrc(half2, "half2"))
        options.update(self._alignmentOptions())
        return options

    def _mrc(self, fn, name):
        vol = Volume(location=convert.strip_format_suffix(fn))
        return self.volumeFile(vol, name)

    def _templateParticles(self):
        if self.inputType.get() == FROM_RUN:
            return self.inputRefinement.get().outputParticles
        return self.inputParticles.get()

    def _registerOutputs(self, summary):
        inputParts = self._templateParticles()
        apix = inputParts.getSamplingRate()
        outParts = self._refinedParticles(inputParts, summary.path("particles"))
        vol = self._volumeWithHalves(summary, apix)
        self._defineOutputs(outputParticles=outParts, outputVolume=vol, outputFSCs=self._comparisonFscs(summary))
        self._defineTransformRelation(inputParts, outParts)
        self._defineSourceRelation(self.focusMask, vol)
        rei = summary.final.extra.get("reimposed")
        if rei:
            sym = Volume(location=summary.rel(rei["map"]))
            sym.setSamplingRate(apix)
            sym.setHalfMaps([summary.rel(rei["half1"]), summary.rel(rei["half2"])])
            self._defineOutputs(outputVolumeSym=sym)
            self._defineSourceRelation(vol, sym)
        self._registerLocalResolution(vol, apix)

    # --------------------------- info -------------------------------------------
    def _validate(self):
        errors = self._validateCommon()
        if self.focusMask.get() is None:
            errors.append("Choose the focus mask.")
        if self.inputType.get() == FROM_RUN:
            run = self.inputRefinement.get()
            if run is None:
                errors.append("Choose a gmm refinement to start from.")
            elif not run.isFinished():
                errors.append("The gmm refinement to start from has not finished.")
        else:
            parts, vol = self.inputParticles.get(), self.inputVolume.get()
            if parts is None or vol is None:
                errors.append("Choose the input particles and their volume.")
            elif not vol.hasHalfMaps():
                errors.append("The volume has no half maps: focused refinement starts from the two "
                              "gold-standard half maps.")
        return errors

    def _summary(self):
        lines = self._runSummaryLines()
        summary = self.getSummary()
        if summary is not None and summary.final is not None:
            ex = summary.final.extra
            lines.append("Within the focus mask: %.2f Å -> %.2f Å" % (ex["resolution_focus_initial"],
                                                                    ex["resolution_focus"]))
            if ex.get("reimposed"):
                lines.append("Symmetry %s reimposed: %.2f Å" % (ex["reimposed"]["sym"], ex["reimposed"]["resolution"]))
        return lines

    def _methods(self):
        summary = self.getSummary()
        if not summary or summary.final is None:
            return []
        return ["Particle poses were refined focused on a masked region for %d iterations with Gaussian "
                "mixture models whose Gaussians outside the mask were widened [Chen2024] (gmmcore); the "
                "gold-standard resolution within the mask went from %.2f Å to %.2f Å."
                % (len(summary.iterations), summary.final.extra["resolution_focus_initial"],
                   summary.final.extra["resolution_focus"])]


class GmmProtPatchRefine(_GmmFocusedBase, ProtRefine3D):
    """Patch-by-patch GMM refinement with composite half maps (Chen, Schmid & Chiu 2024).

    The GMMs of a gmm global refinement are cut into K patches (K-means of the Gaussian centres;
    the same patches for both halves), each refined by focused refinement with a soft spherical
    mask; the composite half maps Σ M_i·Map_i / Σ M_i (the global map filling where the masks sum
    to less than 1) give the final gold-standard FSC.  Each patch keeps its own refined particles
    (one output set per patch, usable in RELION / cryoSPARC).
    """
    _label = "gmm patch refinement"
    _possibleOutputs = {"outputVolume": Volume, "outputFSCs": SetOfFSCs, "outputLocalResolution": Volume}
    VERB = "refine-patches"
    RUN_DIR = PATCHES_DIR

    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputRefinement", params.PointerParam, pointerClass="GmmProtRefine", important=True,
                      label="GMM global refinement",
                      help="A finished gmm global refinement: its final poses, half maps and GMMs.")
        form.addParam("numberOfPatches", params.IntParam, default=8, validators=[params.GE(1)],
                      label="Number of patches",
                      help="K-means clusters of the GMM (the paper's default 8). Keep a patch larger than a "
                           "helix or a sheet.")
        form.addParam("falloff", params.FloatParam, default=5.0, validators=[params.GE(0)],
                      expertLevel=params.LEVEL_ADVANCED, label="Mask fall-off (px)",
                      help="Soft edge added to each spherical patch mask (adjacent masks overlap).")
        _alignmentParams(form, 3, "Iterations per patch")

    def _inputSignature(self):
        run = self.inputRefinement.get()
        return run.getObjId() if run is not None else None

    def _engineOptions(self):
        options = {"from": self.abspath(self.inputRefinement.get()._runDir()),
                   "patches": self.numberOfPatches.get(), "falloff": self.falloff.get()}
        options.update(self._alignmentOptions())
        return options

    def _registerOutputs(self, summary):
        inputParts = self.inputRefinement.get().outputParticles
        apix = inputParts.getSamplingRate()
        vol = self._volumeWithHalves(summary, apix)
        self._defineOutputs(outputVolume=vol, outputFSCs=self._patchFscs(summary))
        self._defineSourceRelation(self.inputRefinement.get().outputVolume, vol)
        for rec in summary.patch_records():
            parts = self._refinedParticles(inputParts, summary.rel(rec.particles))
            parts.setObjComment("patch %d: centre %s Å, radius %.1f Å" % (rec.index, rec.center_A, rec.radius_A))
            mask = VolumeMask(location=summary.rel(rec.mask))
            mask.setSamplingRate(apix)
            self._defineOutputs(**{"outputParticlesPatch%02d" % rec.index: parts,
                                   "outputMaskPatch%02d" % rec.index: mask})
            self._defineTransformRelation(inputParts, parts)
            self._defineSourceRelation(mask, parts)
        self._registerLocalResolution(vol, apix)

    def _patchFscs(self, summary):
        from pwem.objects import FSC
        from gmmrefine_scipion.plotting.focused import patch_runs
        fscs = self._comparisonFscs(summary)
        for rec, s in patch_runs(summary):
            if s is None or not s.iterations:
                continue
            rep = s.iterations[-1].report
            fsc = FSC(objLabel="patch %d, within its mask (%.2f Å)" % (rec.index, rep.extra["resolution_focus"]))
            fsc.setData(list(map(float, rep.fsc["freq"])), list(map(float, rep.extra["fsc_focus"])))
            fscs.append(fsc)
        return fscs

    def _validate(self):
        errors = self._validateCommon()
        run = self.inputRefinement.get()
        if run is None:
            errors.append("Choose a gmm global refinement.")
        elif not run.isFinished():
            errors.append("The gmm global refinement has not finished.")
        return errors

    def _summary(self):
        summary = self.getSummary()
        if summary is None:
            return ["Not started, or no summary yet."]
        lines = []
        if summary.resolution_initial is not None:
            lines.append("Global refinement (start): %.2f Å" % summary.resolution_initial)
        for rec in summary.patch_records():
            if rec.complete:
                lines.append("Patch %d (%d Gaussians): within its mask %.2f Å -> %.2f Å"
                             % (rec.index, rec.n_gaussians, rec.resolution_focus_initial, rec.resolution_focus))
            else:
                lines.append("Patch %d: not finished" % rec.index)
        comp = summary.composite()
        if comp is not None:
            lines.append("Composite map: %.2f Å (masked FSC 0.143)" % comp.resolution)
        return lines

    def _methods(self):
        summary = self.getSummary()
        comp = summary.composite() if summary else None
        if comp is None:
            return []
        return ["Patch-by-patch refinement [Chen2024] (gmmcore): the GMMs were divided into %d patches by "
                "K-means, each refined by %d iterations of focused refinement, and the composite half maps "
                "reached %.2f Å (gold-standard FSC 0.143; %.2f Å before)."
                % (len(summary.patch_records()), self.numberOfIterations.get(), comp.resolution,
                   summary.resolution_initial)]
