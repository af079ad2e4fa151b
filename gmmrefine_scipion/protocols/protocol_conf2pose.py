"""Conformation to pose, then focused refinement of one region (gmmcore conf2pose)."""

import pyworkflow as pw
import pyworkflow.protocol.params as params
from pwem.objects import SetOfFSCs, SetOfParticles, Volume
from pwem.protocols import ProtRefine3D

from gmmrefine_scipion.constants import CONF2POSE_DIR
from .focus_width import defineFocusWidthParams, focusWidthOptions
from .pose_precision import posePrecisionLine
from .protocol_base import GmmProtRunBase

REGION_MASK_LABEL = "Mask of the target region"


class GmmProtConfToPose(GmmProtRunBase, ProtRefine3D):
    """Turn each particle's conformation (from a gmm heterogeneity analysis) into a change of its
    pose for one region, then refine that region with focused refinement (Chen, Schmid & Chiu 2024).

    Per half set: the decoder gives each particle's GMM; the new pose is where the region of the
    consensus GMM projects as the particle's region does at its original pose (Adam on the pose,
    30 steps).  The map reconstructed at the new poses resolves the region (the rest smears out);
    focused iterations with the same mask follow.  Outputs: the converted particles, the particles
    after focused refinement, the final map with its half maps, and the FSCs (within the mask).
    """
    _label = "conformation to pose"
    _devStatus = pw.BETA
    _possibleOutputs = {"outputParticlesConverted": SetOfParticles, "outputParticles": SetOfParticles,
                        "outputVolume": Volume, "outputFSCs": SetOfFSCs}
    VERB = "conf2pose"
    RUN_DIR = CONF2POSE_DIR

    PARAMS_FILE = ("convert", "params.json")  # the conversion stage writes first
    # another Focused iterations: the engine keeps the conversion and adds them or ends earlier
    CONTINUE_OPTIONS = ("focus_iter",)
    # the focused stage's fields: a change of only these keeps the conversion (convert/, the run's record)
    STAGE_OPTIONS = ("focus_iter", "width_rule", "mask_level", "maxres", "prior_angle", "prior_shift", "no_prior")
    MAXRES_HELP = "Focused refinement: best resolution used in the alignment (0: follow the FSC)."
    PRIOR_LABEL = "Focused refinement: start pose accuracy"
    BACKEND = False  # gmmcore conf2pose runs on TensorFlow
    BATCH_AUTO = True  # gmmcore conf2pose sizes --batch auto on the device
    BATCH_HELP = ("Particles per batch on the device (conversion and focused refinement); lower it if the GPU "
                  "runs out of memory. 0 = automatic: on a GPU the largest batch that fits its free memory, on a CPU 16.")

    # --------------------------- DEFINE param functions ----------------------
    def _defineInputParams(self, form):
        form.addParam("inputHeterogeneity", params.PointerParam,
                      pointerClass="GmmProtHeterogeneity, SetOfParticlesFlex", important=True,
                      label="GMM heterogeneity run",
                      help="A finished gmm heterogeneity analysis (its networks and latent coordinates): the run, "
                           "or its output particles (the Flexibility Hub's SetOfParticlesFlex of that run).")
        form.addParam("regionMask", params.PointerParam, pointerClass="VolumeMask", important=True,
                      label=REGION_MASK_LABEL,
                      help="Around the region to resolve (e.g. a moving domain) at its consensus position; "
                           "the Gaussians inside it define the region's pose, and the focused refinement "
                           "uses it too. Keep it tight: parts that do not move with the region pull the "
                           "converted pose back. Same box and pixel size as the particles.")

    def _defineSettingsParams(self, form):
        form.addParam("steps", params.IntParam, default=30, validators=[params.GE(1)],
                      label="Pose search steps", help="Adam steps per particle (the paper: 30).")
        form.addParam("focusIterations", params.IntParam, default=3, validators=[params.GE(0)],
                      label="Focused iterations", help="Focused refinement iterations after the conversion.")
        defineFocusWidthParams(form)

    # --------------------------- STEPS functions -----------------------------
    def _keptOnChange(self, changed):
        """The conversion, when only the focused stage's fields changed: gmmcore conf2pose reuses it
        and starts its focused stage anew (the conversion is most of the run's time)."""
        return ("convert", "params.json") if set(changed) <= set(self.STAGE_OPTIONS) else ()

    def _heterogeneityRun(self):
        """The gmm heterogeneity run chosen: the pointer's protocol, or the run whose output
        particles (SetOfParticlesFlex) were chosen; None otherwise."""
        from .protocol_heterogeneity import GmmProtHeterogeneity
        pointer = self.inputHeterogeneity
        for obj in (pointer.get(), pointer.getObjValue()):
            if isinstance(obj, GmmProtHeterogeneity):
                return obj
        return None

    def _inputSignature(self):
        prot = self._heterogeneityRun()
        return prot.getObjId() if prot is not None else None

    def _protocolOptions(self):
        het = self._heterogeneityRun()
        return {"from": self.abspath(het.getRunDir()), "mask": self.volumeFile(self.regionMask.get(), "region_mask"),
                "steps": self.steps.get(), "focus_iter": self.focusIterations.get(), **focusWidthOptions(self)}

    def _registerOutputs(self, summary):
        het = self._heterogeneityRun()
        inputParts = het.outputParticles  # the refinement's particles with their latent coordinates
        converted = self._refinedParticles(inputParts, summary.rel(summary.conversion.particles))
        self._defineOutputs(outputParticlesConverted=converted)
        self._defineTransformRelation(het.outputParticles, converted)
        focused = self._refinedParticles(inputParts, summary.path("particles"))
        self._defineOutputs(outputParticles=focused)
        self._defineTransformRelation(het.outputParticles, focused)
        vol = self._volumeWithHalves(summary, inputParts.getSamplingRate())
        self._defineOutputs(outputVolume=vol)
        self._defineSourceRelation(het.outputParticles, vol)
        fscs = self._fscSet(summary)
        self._defineOutputs(outputFSCs=fscs)
        self._defineSourceRelation(vol, fscs)

    # --------------------------- INFO functions ------------------------------
    def _validateInputs(self):
        errors = []
        het = self._heterogeneityRun()
        if het is None:
            if self.inputHeterogeneity.get() is not None:
                return ["GMM heterogeneity run: choose a gmm heterogeneity run or its output particles as they "
                        "are (gmmcore conf2pose converts all the particles of that analysis)."]
            return ["Choose a GMM heterogeneity run."]
        if het.getSummary() is None or not het.hasAttribute("outputParticles"):
            errors.append("The heterogeneity run has not finished.")
        if self.regionMask.get() is None:
            errors.append("Choose the mask of the target region.")
        return errors

    def _inputParticles(self):
        het = self._heterogeneityRun()
        return het.outputParticles if het is not None and het.hasAttribute("outputParticles") else None

    def _volumesOnParticleGrid(self):
        mask = self.regionMask.get()
        return [(REGION_MASK_LABEL, mask)] if mask is not None else []

    def _summaryLines(self, summary):
        lines = []
        cons, conv = summary.consensus, summary.conversion
        if cons is not None:
            lines.append("Region, consensus poses: %.2f Å (FSC in the mask)" % cons.resolution)
        if conv is not None:
            region = ("%.2f Å" % conv.resolution_region) if conv.resolution_region is not None else "?"
            lines.append("Conversion: pose change mean %.2f°, %.2f px; region at the converted poses: %s"
                         % (conv.pose_change.angle_mean, conv.pose_change.shift_mean, region))
        precision = posePrecisionLine(summary, region="target region")
        if precision:
            lines.append(precision)
        for rec in summary.iterations:
            focus = rec.report.resolution_focus
            lines.append("Focused iteration %d: region %.2f Å" % (rec.iteration,
                                                                  rec.resolution if focus is None else focus))
        return lines

    def _methods(self):
        summary = self.getSummary()
        if summary is None or summary.final is None:
            return []
        return ["The particles' conformations were converted into poses of the target region and refined with "
                "%d iterations of focused refinement [Chen2024] using gmmcore." % len(summary.iterations)]

    def _citations(self):
        return ["Chen2024"]
