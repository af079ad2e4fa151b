"""What focused and patch-by-patch refinement share (:class:`GmmProtFocusedBase`): the alignment
fields of their form, local resolution after the run, the comparison FSCs.

Both run one gmmcore run directory through :class:`GmmProtRunBase` (``gmmcore refine-focused`` /
``gmmcore refine-patches``), then ``gmmcore local-resolution`` on the result, and register
particles, volume with half maps, FSCs (including the FSC within the focus / patch masks), the
local-resolution volume and (patches) the patch masks.
"""
import os

import pyworkflow.protocol.params as params
from pwem.objects import Volume

from gmmrefine_scipion.constants import SYMMETRY_HELP
from .alignment_rules import alignmentRuleOptions, defineAlignmentRuleParams
from .focus_width import defineFocusWidthParams, focusWidthOptions
from .protocol_base import GmmProtRunBase, fscObjects, validateSymmetry

LOCALRES_DIR = "localres"


class GmmProtFocusedBase(GmmProtRunBase):
    """The focused-refinement family (focused, patches); a subclass sets ITERATIONS_LABEL."""

    GPU_HELP = ("GPU(s) to use, e.g. '0' or '0 1 2 3'. Focused refinement uses the first; patch-by-patch "
                "refinement refines one patch per listed GPU at once (one worker process each).")
    PRIOR_LABEL = "Start pose accuracy"
    PRIOR_HELP = ("Width of the pose prior centred on the poses this run starts from. Focused refinement moves "
                  "poses more than global refinement (the region moves relative to the rest): raise it for "
                  "large motions. 0: no prior.")
    BATCH_HELP = GmmProtRunBase.BATCH_HELP + " Results do not depend on it."
    ITERATIONS_LABEL = "Iterations"
    # gmmcore refine-focused / refine-patches --continue with another --iter adds iterations (to every
    # patch) or ends each at an earlier one; the local resolution and (patches) the composite are then
    # made again from the result
    CONTINUE_OPTIONS = ("iter",)

    def _defineSettingsParams(self, form):
        form.addParam("numberOfIterations", params.IntParam, default=3,
                      validators=[params.Range(1, 50, "between 1 and 50")], label=self.ITERATIONS_LABEL,
                      help="The paper runs 3 focused iterations (per patch). To refine a finished run further, "
                           "raise it and press Execute (mode Continue): the run goes on from its last iteration.")
        form.addParam("reimposeSymmetry", params.StringParam, default="", label="Reimpose symmetry (optional)",
                      help="For particles expanded with 'expand symmetry' and refined in C1 with a mask on one "
                           "asymmetric unit: average the symmetry copies of the refined region, weighted by the "
                           "rotated masks, into a symmetric map (e.g. C3). Empty: none. " + SYMMETRY_HELP)
        form.addParam("localResolution", params.BooleanParam, default=True, label="Compute local resolution?",
                      help="Windowed FSC of the two result half maps (gmmcore local-resolution: 16-voxel window, "
                           "FSC 0.5) within the FSC mask.")
        form.addParam("numberOfGaussians", params.IntParam, default=0, validators=[params.GE(0)],
                      expertLevel=params.LEVEL_ADVANCED, label="Number of Gaussians",
                      help="0: estimated from the map (mass and resolution).")
        defineFocusWidthParams(form)
        defineAlignmentRuleParams(form)

    # --------------------------- steps -----------------------------------------
    def _insertAllSteps(self):
        signature = self._formSignature()
        self._insertFunctionStep(self.convertInputStep, self._inputSignature())
        self._insertFunctionStep(self.runEngineStep, signature)
        if self.localResolution.get():
            self._insertFunctionStep(self.localResolutionStep, signature)
        self._insertFunctionStep(self.createOutputStep, signature)

    def _alignmentOptions(self):
        """The engine options of the fields both forms have."""
        return {"iter": self.numberOfIterations.get(), "ngauss": self.numberOfGaussians.get() or None,
                "reimpose": self.reimposeSymmetry.get() or None, **focusWidthOptions(self),
                **alignmentRuleOptions(self)}

    def localResolutionStep(self, signature=None):
        summary = self.getSummary()
        half1, half2 = self._resultHalves(summary)
        mask = self.getRunDir("fsc_mask.mrc")
        self.runGmmcore("local-resolution", half1=half1, half2=half2,
                        mask=self.abspath(mask) if os.path.exists(mask) else None,
                        out=self.abspath(self._getExtraPath(LOCALRES_DIR)))

    def _resultHalves(self, summary):
        """The half maps the result stands for (the reimposed ones when symmetry was reimposed)."""
        rei = summary.final.reimposed if summary.kind == "focused" else None
        if rei is not None and rei.half1:
            return summary.rel(rei.half1), summary.rel(rei.half2)
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
        from gmmrefine_scipion.plotting.focused import comparison_curves
        fscs = self._createSetOfFSCs()
        for fsc in fscObjects([c[:4] for c in comparison_curves(summary)]):
            fscs.append(fsc)
        return fscs

    def _validateInputs(self):
        errors = []
        sym = self.reimposeSymmetry.get()
        if sym:
            err = validateSymmetry(sym)
            if err:
                errors.append("Reimpose " + err[0].lower() + err[1:])
        return errors + self._validateStart()

    def _validateStart(self):
        """Checks of what the run starts from (subclasses)."""
        return []

    def _citations(self):
        return ["Chen2024"]
