"""GMM/DNN heterogeneity analysis of a GMM refinement, independently per half set (gmmcore heterogeneity)."""
import os

import pyworkflow.protocol.params as params
from pyworkflow.protocol.constants import GPU_LIST, USE_GPU
from pwem.objects import SetOfParticles, SetOfVolumes
from pwem.protocols import ProtAnalysis3D

from gmmcore.summary import HeterogeneitySummary

from gmmrefine_scipion import Plugin, convert
from gmmrefine_scipion.constants import HETEROGENEITY_DIR, REFINE_DIR
from .protocol_base import GmmProtRunBase


class GmmProtHeterogeneity(GmmProtRunBase, ProtAnalysis3D):
    """Continuous conformational heterogeneity of the particles of a GMM refinement, learned by
    an encoder/decoder pair of dense networks on Gaussian mixture models (Chen & Ludtke 2021;
    Chen, Toader & Lederman 2023), one pair per half set (gold standard: neither sees the other
    half's particles or GMM).

    The decoder turns a latent vector into the GMM of that conformation (latent 0 = the half's
    consensus GMM); the encoder maps each particle to its latent vector.  Outputs: the particles
    with their latent coordinates (``_gmmLatent``: the vector; ``_gmmLatentPC1/PC2``: the principal
    components within the particle's half), and maps reconstructed from the particles binned along
    PC1 of each half.  A killed run continues from its last epoch in 'Continue' mode.
    """
    _label = "gmm heterogeneity analysis"
    _possibleOutputs = {"outputParticles": SetOfParticles, "outputVolumes": SetOfVolumes}
    VERB = "heterogeneity"
    RUN_DIR = HETEROGENEITY_DIR

    # --------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addHidden(USE_GPU, params.BooleanParam, default=True, label="Use GPU?",
                       help="Train on the GPU; No trains on the CPU (slow, fine for small tests).")
        form.addHidden(GPU_LIST, params.StringParam, default=Plugin.getDefaultGpu(), label="GPU ids",
                       help="GPU to use, e.g. '0'. gmmcore uses the first GPU listed.")
        form.addParam("inputRefinement", params.PointerParam, pointerClass="GmmProtRefine", important=True,
                      label="GMM refinement run",
                      help="A finished gmm global refinement: its final particles (poses, half sets), "
                           "half maps and GMMs are the input; each half's GMM is its neutral state.")
        form.addParam("focusMask", params.PointerParam, pointerClass="VolumeMask", allowsNull=True,
                      label="Focus mask (optional)",
                      help="Only Gaussians inside this mask move: the analysis focuses on that region "
                           "(e.g. a flexible domain). Empty: the whole GMM.")
        form.addSection(label="Networks")
        form.addParam("latentDim", params.IntParam, default=4, validators=[params.Range(1, 64, "1 to 64")],
                      label="Latent dimensions")
        form.addParam("anchors", params.IntParam, default=32, validators=[params.GE(0)],
                      label="Anchor Gaussians",
                      help="Size of the small GMM (K-means of the full GMM) that drives the movement in the "
                           "first training round (the hierarchical decoder). 0: no anchors.")
        form.addParam("epochs", params.IntParam, default=20, validators=[params.GE(1)],
                      label="Epochs (anchor round)")
        form.addParam("fullEpochs", params.IntParam, default=10, validators=[params.GE(0)],
                      label="Epochs (full-GMM round)")
        form.addParam("maxResolution", params.FloatParam, default=0.0, validators=[params.GE(0)],
                      label="Highest resolution used (Å)",
                      help="Finest frequency compared (0: the refinement's final resolution). A coarser "
                           "value (e.g. 6-8 Å) is faster and usually enough for domain motions.")
        form.addParam("bins", params.IntParam, default=5, validators=[params.Range(1, 50, "1 to 50")],
                      label="Maps along PC1", help="Number of bins of particles along PC1 (per half).")
        form.addParam("batchSize", params.IntParam, default=16, expertLevel=params.LEVEL_ADVANCED,
                      validators=[params.GT(0)], label="Batch size")
        form.addParam("extraParams", params.StringParam, default="", expertLevel=params.LEVEL_ADVANCED,
                      label="Additional gmmcore arguments", help="Passed verbatim to 'gmmcore heterogeneity'.")

    # --------------------------- STEPS functions -----------------------------
    def _inputSignature(self):
        prot = self.inputRefinement.get()
        return prot.getObjId() if prot is not None else None

    def _sourceRunDir(self):
        return self.abspath(self.inputRefinement.get()._getExtraPath(REFINE_DIR))

    def _engineOptions(self):
        options = {"from": self._sourceRunDir(), "latent": self.latentDim.get(), "anchors": self.anchors.get(),
                   "epochs": self.epochs.get(), "full_epochs": self.fullEpochs.get(),
                   "res": self.maxResolution.get() or None, "bins": self.bins.get(), "batch": self.batchSize.get()}
        if self.focusMask.get() is not None:
            options["mask"] = self.volumeFile(self.focusMask.get(), "focus_mask")
        options.update(self._deviceOptions())
        return options

    def getSummaryFile(self):
        return self._runDir("summary.json")

    def getSummary(self):
        path = self.getSummaryFile()
        return HeterogeneitySummary.load(path) if os.path.exists(path) else None

    def createOutputStep(self):
        summary = HeterogeneitySummary.load(self.getSummaryFile())
        refine = self.inputRefinement.get()
        inputParts = refine.outputParticles
        star = os.path.join(self._sourceRunDir(), "final", "particles.star")
        latents = convert.read_latents(summary.path(summary.latents), star)

        def addLatent(particle, _row=None):
            value = latents.get(particle.getObjId())
            if value is None:
                particle._appendItem = False
                return
            convert.set_latent(particle, *value)

        outParts = self._createSetOfParticles()
        outParts.copyInfo(inputParts)
        outParts.copyItems(inputParts, updateItemCallback=addLatent)
        self._defineOutputs(outputParticles=outParts)
        self._defineSourceRelation(self.inputRefinement, outParts)

        vols = self._createSetOfVolumes()
        vols.setSamplingRate(inputParts.getSamplingRate())
        for h in ("1", "2"):
            for k, b in enumerate(summary.halves[h].bins):
                from pwem.objects import Volume
                vol = Volume(objLabel="half %s, bin %d (PC1 %.2f, %d particles)" % (h, k + 1, b["pc1"], b["n"]))
                vol.setFileName(summary.path(b["map"]))
                vol.setSamplingRate(inputParts.getSamplingRate())
                vols.append(vol)
        self._defineOutputs(outputVolumes=vols)
        self._defineSourceRelation(self.inputRefinement, vols)

    # --------------------------- INFO functions ------------------------------
    def _validate(self):
        errors = []
        prot = self.inputRefinement.get()
        if prot is None:
            return ["Choose a GMM refinement run."]
        if not os.path.exists(os.path.join(self._sourceRunDir(), "summary.json")) or \
                not prot.hasAttribute("outputParticles"):
            errors.append("The GMM refinement run has not finished (no summary or output particles).")
        errors += self._gpuErrors()
        return errors

    def _summary(self):
        summary = self.getSummary()
        if summary is None:
            return ["Not started, or no summary yet."]
        lines = ["Latent space: %d dimensions, band %.1f-%.2f Å" % (summary.latent_dim, summary.minres_A or 0,
                                                                   summary.resolution_A or 0)]
        for h, rep in sorted(summary.halves.items()):
            ev = rep.explained_variance_ratio[0] if rep.explained_variance_ratio else float("nan")
            lines.append("Half %s: %d particles, mean FRC %.4f (consensus GMM) -> %.4f (decoded); PC1 holds %.0f %% "
                         "of the latent variance" % (h, rep.n_particles, rep.frc_neutral or 0, rep.frc_decoded or 0,
                                                     100 * ev))
        return lines

    def _methods(self):
        summary = self.getSummary()
        if summary is None:
            return []
        return ["The conformational heterogeneity of the particles was analysed with GMM-based deep networks "
                "[Chen2021, Chen2023] using gmmcore, independently for each half set (%d latent dimensions)."
                % summary.latent_dim]

    def _citations(self):
        return ["Chen2021", "Chen2023", "Chen2024"]
