"""GMM/DNN heterogeneity analysis of a GMM refinement, independently per half set (gmmcore heterogeneity)."""
import os

import pyworkflow as pw
import pyworkflow.protocol.params as params
from pwem.objects import ParticleFlex, SetOfParticlesFlex, SetOfVolumes, Volume
from pwem.protocols import ProtAnalysis3D

from gmmcore import defaults
from gmmcore.summary import HeterogeneitySummary

from gmmrefine_scipion import convert
from gmmrefine_scipion.constants import HETEROGENEITY_DIR
from .protocol_base import addExpertChoice
from .protocol_base import GmmProtRunBase

DECODER_AMPLITUDE = tuple(defaults.DECODER_AMPLITUDE_CHOICES)  # the engine's names, in the form's order

FOCUS_MASK_LABEL = "Focus mask (optional)"
FLEX_PROGNAME = "gmmrefine"  # the Flexibility Hub's name of the method that made a SetOfParticlesFlex
FLEX_PARTICLES_FILE = "particles_flex.sqlite"


class GmmProtHeterogeneity(GmmProtRunBase, ProtAnalysis3D):
    """Continuous conformational heterogeneity of the particles of a GMM refinement, learned by
    an encoder/decoder pair of dense networks on Gaussian mixture models (Chen & Ludtke 2021;
    Chen, Toader & Lederman 2023), one pair per half set (gold standard: neither sees the other
    half's particles or GMM).

    The decoder turns a latent vector into the GMM of that conformation (latent 0 = the half's
    consensus GMM); the encoder maps each particle to its latent vector.  Outputs: the particles
    with their latent coordinates as the Flexibility Hub's SetOfParticlesFlex (progName
    "gmmrefine", zFlex = the latent vector; also ``_gmmLatent``: the vector, ``_gmmLatentPC1/PC2``:
    the principal components within the particle's half), and maps reconstructed from the particles binned along
    PC1 of each half.  A killed run continues from its last epoch in 'Continue' mode.
    """
    _label = "heterogeneity analysis"
    _devStatus = pw.BETA
    _possibleOutputs = {"outputParticles": SetOfParticlesFlex, "outputVolumes": SetOfVolumes}
    VERB = "heterogeneity"
    RUN_DIR = HETEROGENEITY_DIR

    SUMMARY_CLASS = HeterogeneitySummary
    SETTINGS_SECTION = "Networks"
    MAXRES_LEVEL = params.LEVEL_NORMAL
    MAXRES_HELP = ("Finest frequency compared (0: 7 Å as the reference implementation, or the refinement's final "
                   "resolution where that is coarser; measured better than training at the final resolution on "
                   "domain motions). A finer value is slower.")
    POSE_PRIOR = False
    BACKEND = False  # the networks train with TensorFlow
    BATCH_AUTO = False  # gmmcore heterogeneity takes no --batch auto
    BATCH_HELP = "Particles per training batch (at least 1); lower it if the GPU runs out of memory."

    # --------------------------- DEFINE param functions ----------------------
    def _defineInputParams(self, form):
        form.addParam("inputRefinement", params.PointerParam, pointerClass="GmmProtRefine", important=True,
                      label="GMM refinement run",
                      help="A finished gmm global refinement: its final particles (poses, half sets), "
                           "half maps and GMMs are the input; each half's GMM is its neutral state.")
        form.addParam("focusMask", params.PointerParam, pointerClass="VolumeMask", allowsNull=True,
                      label=FOCUS_MASK_LABEL,
                      help="Only Gaussians inside this mask move: the analysis focuses on that region "
                           "(e.g. a flexible domain); same box and pixel size as the particles. Empty: the "
                           "whole GMM.")

    def _defineSettingsParams(self, form):
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
        form.addParam("bins", params.IntParam, default=5, validators=[params.Range(1, 50, "1 to 50")],
                      label="Maps along PC1", help="Number of bins of particles along PC1 (per half).")
        addExpertChoice(form, "decoderAmplitude", DECODER_AMPLITUDE, defaults.DECODER_AMPLITUDE, "Decoder amplitudes",
                        "off (default): the decoder moves the Gaussians only. on: it also changes each moving "
                        "Gaussian's amplitude with the latent (at most e^3 = 20x up or down), so a part that is "
                        "present in some particles and missing in others (a partly occupied subunit or ligand) "
                        "is described as well as a motion. Where parts only move, leave it off: the amplitudes "
                        "take up part of the motion, and conformation to pose then recovers less of it.")

    # --------------------------- STEPS functions -----------------------------
    def _inputSignature(self):
        prot = self.inputRefinement.get()
        return prot.getObjId() if prot is not None else None

    def _sourceRunDir(self):
        return self.abspath(self.inputRefinement.get().getRunDir())

    def _protocolOptions(self):
        options = {"from": self._sourceRunDir(), "latent": self.latentDim.get(), "anchors": self.anchors.get(),
                   "epochs": self.epochs.get(), "full_epochs": self.fullEpochs.get(), "bins": self.bins.get(),
                   "amplitude": DECODER_AMPLITUDE[self.decoderAmplitude.get()]}
        if self.focusMask.get() is not None:
            options["mask"] = self.volumeFile(self.focusMask.get(), "focus_mask")
        return options

    def createOutputStep(self, signature=None):
        summary = self.SUMMARY_CLASS.load(self.getSummaryFile())
        refine = self.inputRefinement.get()
        inputParts = refine.outputParticles
        star = os.path.join(self._sourceRunDir(), "final", "particles.star")
        latents = convert.read_latents(summary.path(summary.latents), star)

        outParts = self._flexParticles(inputParts, latents, summary)
        self._defineOutputs(outputParticles=outParts)
        self._defineSourceRelation(self.inputRefinement, outParts)

        vols = self._createSetOfVolumes()
        vols.setSamplingRate(inputParts.getSamplingRate())
        for h in ("1", "2"):
            for k, b in enumerate(summary.halves[h].bins):
                vol = Volume(objLabel="half %s, bin %d (PC1 %.2f, %d particles)" % (h, k + 1, b["pc1"], b["n"]))
                vol.setFileName(summary.path(b["map"]))
                vol.setSamplingRate(inputParts.getSamplingRate())
                vols.append(vol)
        self._defineOutputs(outputVolumes=vols)
        self._defineSourceRelation(self.inputRefinement, vols)

    def _flexParticles(self, inputParts, latents, summary):
        """The Flexibility Hub's SetOfParticlesFlex (progName FLEX_PROGNAME): the input particles
        with their latent vector as zFlex, and our columns (the latent, PC1, PC2 within the half);
        the set's FlexInfo names the latent dimension and the run's summary."""
        path = self._getPath(FLEX_PARTICLES_FILE)
        if os.path.exists(path):
            os.remove(path)
        outParts = SetOfParticlesFlex(filename=path, progName=FLEX_PROGNAME)
        outParts.copyInfo(inputParts)
        info = outParts.getFlexInfo()
        info.setAttr("_gmmLatentDim", int(summary.latent_dim))
        info.setAttr("_gmmSummary", self.getSummaryFile())  # relative to the project
        for particle in inputParts.iterItems(orderBy="id"):
            value = latents.get(particle.getObjId())
            if value is None:
                continue
            flex = ParticleFlex(progName=FLEX_PROGNAME)
            flex.copy(particle)
            flex.setZFlex([float(v) for v in value[0]])
            convert.set_latent(flex, *value)
            outParts.append(flex)
        return outParts

    # --------------------------- INFO functions ------------------------------
    def _validateInputs(self):
        prot = self.inputRefinement.get()
        if prot is None:
            return ["Choose a GMM refinement run."]
        if prot.getSummary() is None or not prot.hasAttribute("outputParticles"):
            return ["The GMM refinement run has not finished (no summary or output particles)."]
        return []

    def _inputParticles(self):
        prot = self.inputRefinement.get()
        return prot.outputParticles if prot is not None and prot.hasAttribute("outputParticles") else None

    def _volumesOnParticleGrid(self):
        mask = self.focusMask.get()
        return [(FOCUS_MASK_LABEL, mask)] if mask is not None else []

    def _summaryLines(self, summary):
        lines = ["Latent space: %d dimensions, band %.1f-%.2f Å" % (summary.latent_dim, summary.minres_A or 0,
                                                                   summary.resolution_A or 0)]
        for h, rep in sorted(summary.halves.items()):
            ev = rep.explained_variance_ratio[0] if rep.explained_variance_ratio else float("nan")
            lines.append("Half %s: %d particles, mean FRC %.4f (consensus GMM) -> %.4f (decoded); PC1 holds %.0f %% "
                         "of the latent variance" % (h, rep.n_particles, rep.frc_neutral or 0, rep.frc_decoded or 0,
                                                     100 * ev))
        for h, rep in sorted(summary.halves.items()):
            cov = rep.mask_coverage
            if cov:  # what the consensus GMM held of the focus mask's region (engine: heter.analysis.mask_coverage)
                held = (cov.get("before") or {}).get("gmm_share", 0) if cov.get("region_seeded") else cov["gmm_share"]
                line = ("Half %s, inside the focus mask: %.0f %% of the map's density and %.0f %% of the consensus "
                        "GMM's mass" % (h, 100 * cov["map_share"], 100 * held))
                if cov.get("region_seeded"):
                    line += "; re-seeded on the region: %.0f %% of its mass" % (100 * cov["gmm_share"])
                lines.append(line)
        return lines

    def _warningLines(self, summary):
        """The run's warnings, then each half whose GMM still leaves out the focus mask's region."""
        lines = GmmProtRunBase._warningLines(self, summary)
        for h, rep in sorted(summary.halves.items()):
            if (rep.mask_coverage or {}).get("short"):
                lines.append("Warning: half %s: the GMM leaves out most of the density inside the focus mask (a "
                             "part present in only some particles, or blurred by its motion?); the analysis cannot "
                             "see what the GMM leaves out." % h)
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
