"""Patch-by-patch GMM refinement with composite half maps (``gmmcore refine-patches``)."""
from collections import namedtuple

import pyworkflow as pw
import pyworkflow.protocol.params as params
from pwem.objects import SetOfFSCs, SetOfParticles, Volume, VolumeMask
from pwem.protocols import ProtRefine3D

from gmmcore import defaults

from .pose_precision import precisionOf, wholeParticleLine
from .protocol_base import addExpertChoice, fscObjects
from .protocol_focused_base import GmmProtFocusedBase

PATCHES_DIR = "patches"
PATCH_SHAPES = tuple(defaults.PATCH_SHAPES)  # the engine's names, in the form's order
PossibleOutput = namedtuple("PossibleOutput", "name value")  # what pyworkflow reads of an outputs Enum member


class GmmProtPatchRefine(GmmProtFocusedBase, ProtRefine3D):
    """Patch-by-patch GMM refinement with composite half maps (Chen, Schmid & Chiu 2024).

    The GMMs of a gmm global refinement are cut into K patches (K-means of the Gaussian centres;
    the same patches for both halves), each refined by focused refinement with its soft mask; the composite half maps Σ M_i·Map_i / Σ M_i (the global map filling where the masks sum
    to less than 1) give the final gold-standard FSC.  Each patch keeps its own refined particles
    (one output set per patch, usable in RELION / cryoSPARC).
    """
    _label = "patch refinement"
    _devStatus = pw.BETA
    _possibleOutputs = {"outputVolume": Volume, "outputFSCs": SetOfFSCs, "outputLocalResolution": Volume}
    VERB = "refine-patches"
    RUN_DIR = PATCHES_DIR
    ITERATIONS_LABEL = "Iterations per patch"

    def _defineInputParams(self, form):
        form.addParam("inputRefinement", params.PointerParam, pointerClass="GmmProtRefine", important=True,
                      label="GMM global refinement",
                      help="A finished gmm global refinement: its final poses, half maps and GMMs.")
        form.addParam("numberOfPatches", params.IntParam, default=8, validators=[params.GE(1)],
                      label="Number of patches",
                      help="K-means clusters of the GMM (the paper's default 8). Keep a patch larger than a "
                           "helix or a sheet.")
        addExpertChoice(form, "patchShape", PATCH_SHAPES, defaults.PATCH_SHAPE, "Patch shape",
                        "tight: the particle's density shared out by nearest Gaussian, so the patches tile the "
                        "particle and each isolates its own part. sphere: a sphere around each patch's Gaussians "
                        "(on a compact particle each sphere holds most of it; default %s)." % defaults.PATCH_SHAPE)
        form.addParam("falloff", params.FloatParam, default=5.0, validators=[params.GE(0)],
                      expertLevel=params.LEVEL_ADVANCED, label="Mask fall-off (px)",
                      help="Soft edge added to each patch mask (adjacent masks overlap).")

    def getPossibleOutputs(self):
        """Besides the composite: the particles and the mask of every patch (numbered from 1), as
        (name, class) pairs that pyworkflow reads like the members of an outputs Enum."""
        outputs = [PossibleOutput(name, cls) for name, cls in self._possibleOutputs.items()]
        for k in range(1, (self.numberOfPatches.get() or 0) + 1):
            outputs += [PossibleOutput("outputParticlesPatch%02d" % k, SetOfParticles),
                        PossibleOutput("outputMaskPatch%02d" % k, VolumeMask)]
        return outputs

    def _inputSignature(self):
        run = self.inputRefinement.get()
        return run.getObjId() if run is not None else None

    def _protocolOptions(self):
        options = {"from": self.abspath(self.inputRefinement.get().getRunDir())}
        options.update(self._patchOptions())
        options.update(self._alignmentOptions())
        return options

    def _patchOptions(self):
        """The engine options of the patch fields (--patches, --patch-shape, --falloff)."""
        return {"patches": self.numberOfPatches.get(), "patch_shape": PATCH_SHAPES[self.patchShape.get()],
                "falloff": self.falloff.get()}

    def _inputParticles(self):
        run = self.inputRefinement.get()
        return run.outputParticles if run is not None and run.hasAttribute("outputParticles") else None

    def _registerOutputs(self, summary):
        inputParts = self._inputParticles()
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
        from gmmrefine_scipion.plotting.focused import patch_runs
        fscs = self._comparisonFscs(summary)
        for rec, s in patch_runs(summary):
            if s is None or not s.iterations:
                continue
            focus = s.iterations[-1].report.focus_curve()
            if focus is not None:
                for fsc in fscObjects([("patch %d, within its mask" % rec.index, *focus)]):
                    fscs.append(fsc)
        return fscs

    def _validateStart(self):
        errors = []
        run = self.inputRefinement.get()
        if run is None:
            errors.append("Choose a gmm global refinement.")
        elif not run.isFinished():
            errors.append("The gmm global refinement has not finished.")
        return errors

    def _summaryLines(self, summary):
        from gmmrefine_scipion.plotting.focused import patch_runs
        runs = patch_runs(summary)
        lines = []
        if summary.resolution_initial is not None:
            lines.append("Global refinement (start): %.2f Å" % summary.resolution_initial)
        precision = wholeParticleLine(s for _, s in runs)
        if precision:
            lines.append(precision)
        for rec, s in runs:
            if rec.complete:
                line = ("Patch %d (%d Gaussians): within its mask %.2f Å -> %.2f Å"
                        % (rec.index, rec.n_gaussians, rec.resolution_focus_initial, rec.resolution_focus))
            else:
                line = "Patch %d: not finished" % rec.index
            lines.append(line + self._patchPrecision(s))
        comp = summary.composite()
        if comp is not None:
            lines.append("Composite map: %.2f Å (masked FSC 0.143)" % comp.resolution)
        return lines

    @staticmethod
    def _patchPrecision(patchSummary):
        """``; pose precision ±angle° / shift px (mass %)`` of a patch's run, or empty."""
        precision = precisionOf(patchSummary)
        if precision is None:
            return ""
        region = precision["region"]
        return "; pose precision ±%.1f° / %.2f px (%.0f%% of the mass)" % (region.angle_deg, region.shift_px,
                                                                           100.0 * region.region_mass)

    def _warningLines(self, summary):
        """The run's warnings, then those of each patch's run (the patch numbers before the text;
        one line for a text that several patches share)."""
        from gmmrefine_scipion.plotting.focused import patch_runs
        lines = GmmProtFocusedBase._warningLines(self, summary)
        own = set(summary.warnings or [])
        byText = {}
        for rec, s in patch_runs(summary):
            for text in (s.warnings or []) if s is not None else []:
                if text not in own:
                    byText.setdefault(text, []).append(rec.index)
        for text, indices in byText.items():
            lines.append("Warning: patch%s %s: %s" % ("es" if len(indices) > 1 else "",
                                                       ", ".join(map(str, indices)), text))
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
