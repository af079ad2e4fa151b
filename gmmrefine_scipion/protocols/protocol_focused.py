"""GMM focused refinement of one masked region (``gmmcore refine-focused``)."""
import pyworkflow as pw
import pyworkflow.protocol.params as params
from pwem.objects import SetOfFSCs, SetOfParticles, Volume
from pwem.protocols import ProtRefine3D

from gmmrefine_scipion import convert
from gmmrefine_scipion.constants import INPUT_STAR
from .protocol_base import GmmProtRunBase
from .pose_precision import posePrecisionLine
from .protocol_focused_base import GmmProtFocusedBase

FOCUSED_DIR = "focused"
FROM_RUN, FROM_PARTICLES = 0, 1
FOCUS_MASK_LABEL = "Focus mask"


class GmmProtFocusedRefine(GmmProtFocusedBase, ProtRefine3D):
    """Focused GMM refinement: refine particle poses on one region (Chen, Schmid & Chiu 2024).

    Gaussians of each half's GMM whose centre lies outside the mask are widened (σ/(0.25 + 0.75·M):
    4× where the mask is 0), so the alignment follows the high-resolution features inside the mask
    while the rest constrains it at low resolution.  Starts from a gmm global refinement (its final
    poses and half maps) or from any particles with a volume that has half maps.  The FSC is
    reported unmasked, with the FSC mask and within the focus mask.
    """
    _label = "focused refinement"
    _devStatus = pw.BETA
    _possibleOutputs = {"outputParticles": SetOfParticles, "outputVolume": Volume, "outputFSCs": SetOfFSCs,
                        "outputLocalResolution": Volume, "outputVolumeSym": Volume}
    VERB = "refine-focused"
    RUN_DIR = FOCUSED_DIR

    def _defineInputParams(self, form):
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
                      label=FOCUS_MASK_LABEL,
                      help="Soft mask (0..1) of the region to focus on; same box and pixel size as the particles. "
                           "Masks are made e.g. by xmipp 'create 3d mask' or relion 'create mask', or imported "
                           "with 'import mask'.")

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

    def _protocolOptions(self):
        options = {"mask": self.volumeFile(self.focusMask.get(), "focus_mask")}
        if self.inputType.get() == FROM_RUN:
            options["from"] = self.abspath(self.inputRefinement.get().getRunDir())
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

    def _inputParticles(self):
        if self.inputType.get() == FROM_RUN:
            run = self.inputRefinement.get()
            return run.outputParticles if run is not None and run.hasAttribute("outputParticles") else None
        return self.inputParticles.get()

    def _volumesOnParticleGrid(self):
        mask = self.focusMask.get()
        return [(FOCUS_MASK_LABEL, mask)] if mask is not None else []

    def _registerOutputs(self, summary):
        inputParts = self._inputParticles()
        apix = inputParts.getSamplingRate()
        outParts = self._refinedParticles(inputParts, summary.path("particles"))
        vol = self._volumeWithHalves(summary, apix)
        self._defineOutputs(outputParticles=outParts, outputVolume=vol, outputFSCs=self._comparisonFscs(summary))
        self._defineTransformRelation(inputParts, outParts)
        self._defineSourceRelation(self.focusMask, vol)
        rei = summary.final.reimposed
        if rei is not None and rei.map:
            sym = Volume(location=summary.rel(rei.map))
            sym.setSamplingRate(apix)
            sym.setHalfMaps([summary.rel(rei.half1), summary.rel(rei.half2)])
            self._defineOutputs(outputVolumeSym=sym)
            self._defineSourceRelation(vol, sym)
        self._registerLocalResolution(vol, apix)

    # --------------------------- info -------------------------------------------
    def _validateStart(self):
        errors = []
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

    def _summaryLines(self, summary):
        lines = self._iterationLines(summary)
        final = summary.final
        if final is not None and final.resolution_focus is not None and final.resolution_focus_initial is not None:
            lines.append("Within the focus mask: %.2f Å -> %.2f Å" % (final.resolution_focus_initial,
                                                                    final.resolution_focus))
            if final.resolution_focus > final.resolution_focus_initial:
                lines.insert(0, "Warning: the region got worse within the focus mask; it may not move relative to "
                                "the rest (a rigid particle): keep the start's result.")
        precision = posePrecisionLine(summary)
        if precision:
            lines.append(precision)
        if final is not None and final.reimposed is not None and final.reimposed.resolution is not None:
            lines.append("Symmetry %s reimposed: %.2f Å" % (final.reimposed.sym, final.reimposed.resolution))
        return lines

    def _methods(self):
        summary = self.getSummary()
        if not summary or summary.final is None or summary.final.resolution_focus is None:
            return []
        return ["Particle poses were refined focused on a masked region for %d iterations with Gaussian "
                "mixture models whose Gaussians outside the mask were widened [Chen2024] (gmmcore); the "
                "gold-standard resolution within the mask went from %.2f Å to %.2f Å."
                % (len(summary.iterations), summary.final.resolution_focus_initial,
                   summary.final.resolution_focus)]
