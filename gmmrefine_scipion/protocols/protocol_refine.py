"""GMM-based global refinement of particle poses (gold standard, one GMM per half set)."""

import pyworkflow.protocol.params as params
import pyworkflow as pw
from pwem.constants import ALIGN_PROJ
from pwem.objects import AtomStruct, SetOfFSCs, SetOfParticles, Volume
from pwem.protocols import ProtRefine3D

from gmmcore.particles import half_counts_problem, min_particles_per_half

from gmmrefine_scipion import convert
from gmmrefine_scipion.constants import HALF_SET_ATTR, INPUT_STAR, REFINE_DIR, SYMMETRY_HELP
from .alignment_rules import alignmentRuleOptions, defineAlignmentRuleParams
from .protocol_base import GmmProtRunBase, validateSymmetry

NEW_SPLIT_LABEL = "Make a new random half split?"
INITIAL_VOLUME_LABEL = "Initial volume (optional)"
MASK_LABEL = "Mask (optional)"
FEW_PARTICLES_LABEL = "Refine few particles anyway?"


class GmmProtRefine(GmmProtRunBase, ProtRefine3D):
    """Refine the 3-D poses of particles against a Gaussian mixture model (GMM) of each half map
    (Chen, Schmid & Chiu 2024).

    Each iteration reconstructs the two half maps from the current poses, fits one GMM per half,
    refines every particle's orientation and shift against its own half's GMM (gold standard: the
    halves never see each other) and measures the FSC.  Outputs: particles with refined poses,
    the final map with its half maps, the FSC of every iteration, and the GMMs (as .gmm.npz and
    pseudo-atom PDB).  A killed run continues from its last finished iteration when relaunched in
    'Continue' mode; so does a finished run whose Iterations changed (more: they are added; fewer: the
    run ends at that iteration, the later ones kept on disk for a later raise).
    """
    _label = "global refinement"
    _devStatus = pw.PROD
    # a dict, not an Enum: two outputs share a class (an Enum would make the second an alias)
    _possibleOutputs = {"outputParticles": SetOfParticles, "outputVolume": Volume,
                        "outputFSCs": SetOfFSCs, "outputGmmHalf1": AtomStruct,
                        "outputGmmHalf2": AtomStruct}
    VERB = "refine"
    RUN_DIR = REFINE_DIR
    CONTINUE_OPTIONS = ("iter",)  # gmmcore refine --continue with another --iter adds iterations or ends earlier

    GPU_HELP = ("GPUs to use, e.g. '0' or '0 1 2 3': one gmmcore worker process per listed GPU, the particles "
                "shared out between them (same result as one GPU).")
    BATCH_HELP = GmmProtRunBase.BATCH_HELP + " The paper: 16 at box 240 needs ~9 GB; results do not depend on it."

    # --------------------------- DEFINE param functions ----------------------
    def _defineInputParams(self, form):
        form.addParam("inputParticles", params.PointerParam, pointerClass="SetOfParticles",
                      pointerCondition="hasAlignmentProj", important=True, label="Input particles",
                      help="Particles with 3-D poses (projection alignment), e.g. from a RELION/cryoSPARC "
                           "refinement or an import. Their half sets (_rlnRandomSubset) are kept.")
        form.addParam("newSplit", params.BooleanParam, default=False, label=NEW_SPLIT_LABEL,
                      help="Only for particles without (complete) half sets: gmmcore assigns them to two halves "
                           "at random (this is logged and shown in the summary). Note that resolution estimates "
                           "are then not independent of the earlier refinement that produced the poses.")
        form.addParam("initialVolume", params.PointerParam, pointerClass="Volume", allowsNull=True,
                      label=INITIAL_VOLUME_LABEL,
                      help="Starting map, same box and pixel size as the particles. Empty: the half maps are "
                           "reconstructed from the input poses.")
        form.addParam("referenceMask", params.PointerParam, pointerClass="VolumeMask", allowsNull=True,
                      label=MASK_LABEL,
                      help="Soft mask (0..1) for the masked FSC and GMM fitting, same box and pixel size as the "
                           "particles. Empty: automatic mask. Masks are made e.g. by xmipp 'create 3d mask' or "
                           "relion 'create mask', or imported with 'import mask'.")
        form.addParam("symmetryGroup", params.StringParam, default="C1", label="Symmetry", help=SYMMETRY_HELP)

    def _defineSettingsParams(self, form):
        form.addParam("numberOfIterations", params.IntParam, default=5,
                      validators=[params.Range(1, 50, "between 1 and 50")], label="Iterations",
                      help="Global refinement iterations; the paper converges in about 5. To refine a finished "
                           "run further, raise it and press Execute (mode Continue): the run goes on from its "
                           "last iteration.")
        form.addParam("numberOfGaussians", params.IntParam, default=0, validators=[params.GE(0)],
                      label="Number of Gaussians",
                      help="0: estimated from the map (mass and resolution). More Gaussians describe finer "
                           "detail but cost GPU memory and time.")
        form.addParam("minResolution", params.FloatParam, default=0.0, expertLevel=params.LEVEL_ADVANCED,
                      label="Lowest resolution used (Å)",
                      help="Frequencies below this are ignored when aligning (0: engine default).")
        defineAlignmentRuleParams(form)

    def _defineExpertParams(self, form):
        form.addParam("fewParticles", params.BooleanParam, default=False, expertLevel=params.LEVEL_ADVANCED,
                      label=FEW_PARTICLES_LABEL,
                      help="Refine even when a half set holds fewer particles than the views that fill Fourier "
                           "space to Nyquist (π·box/2); the FSC of such half maps is not a resolution.")
        form.addParam("daskScheduler", params.StringParam, default="", expertLevel=params.LEVEL_ADVANCED,
                      label="Dask scheduler address",
                      help="Run the work on a running Dask cluster instead of this protocol's GPUs, e.g. "
                           "tcp://node12:8786 (its workers must see this project's files on the same "
                           "paths). Empty: the GPUs above.")

    # --------------------------- STEPS functions -----------------------------
    def convertInputStep(self, inputId=None):
        parts = self.inputParticles.get()
        star = self._getExtraPath(INPUT_STAR)
        counts = convert.count_half_sets(parts)
        if self.newSplit.get():
            self.info("'Make a new random half split?' is Yes: gmmcore keeps a usable split and assigns "
                      "new random halves when the split is missing, incomplete or lopsided (--new-split).")
        convert.write_particles_star(parts, star, stackDir=self._getTmpPath("stacks"),
                                     requireHalfSets=not self.newSplit.get(),
                                     writeHalfSets=not (self.newSplit.get() and counts[None]))
        self.info("Wrote %s" % star)

    def _protocolOptions(self):
        options = {
            "particles": self.abspath(self._getExtraPath(INPUT_STAR)),
            "iter": self.numberOfIterations.get(),
            "sym": self.symmetryGroup.get() or "C1",
            "ngauss": self.numberOfGaussians.get() or None,
            "minres": self.minResolution.get() or None,
            "new_split": bool(self.newSplit.get()),
            "force": bool(self.fewParticles.get()),
            **alignmentRuleOptions(self),
        }
        if self.initialVolume.get() is not None:
            options["ref"] = self.volumeFile(self.initialVolume.get(), "initial_volume")
        if self.referenceMask.get() is not None:
            options["mask"] = self.volumeFile(self.referenceMask.get(), "mask")
        return options

    def _registerOutputs(self, summary):
        inputParts = self.inputParticles.get()
        outParts = self._refinedParticles(inputParts, summary.path("particles"))
        vol = self._volumeWithHalves(summary, inputParts.getSamplingRate())
        fscs = self._fscSet(summary)

        self._defineOutputs(outputParticles=outParts)
        self._defineTransformRelation(self.inputParticles, outParts)
        self._defineOutputs(outputVolume=vol)
        self._defineSourceRelation(self.inputParticles, vol)
        self._defineOutputs(outputFSCs=fscs)
        self._defineSourceRelation(vol, fscs)

        # GMMs as pseudo-atom PDBs (atomic structures: ChimeraX shows them); the .gmm.npz files
        # beside them are what later gmmcore runs read, through the run directory.
        for half in ("1", "2"):
            if half in summary.final.gmm_pdb:
                pdb = AtomStruct(filename=summary.path("gmm_pdb", half))
                self._defineOutputs(**{"outputGmmHalf%s" % half: pdb})
                self._defineSourceRelation(vol, pdb)

    # --------------------------- INFO functions ------------------------------
    def _inputParticles(self):
        return self.inputParticles.get()

    def _volumesOnParticleGrid(self):
        return [(label, vol) for label, vol in ((INITIAL_VOLUME_LABEL, self.initialVolume.get()),
                                                (MASK_LABEL, self.referenceMask.get())) if vol is not None]

    def _validateInputs(self):
        errors = []
        parts = self.inputParticles.get()
        if parts is None:
            return ["Choose the input particles."]
        if parts.getAlignment() != ALIGN_PROJ:
            errors.append("The input particles need 3-D poses (projection alignment); they have "
                          "'%s'." % parts.getAlignment())
        first = parts.getFirstItem()
        hasHalf = first is not None and convert.get_half_set(first) is not None
        counts = self._halfCounts(parts) if hasHalf else {None: parts.getSize()}
        if not self.newSplit.get():
            if not hasHalf:
                errors.append("The input particles have no half sets (%s). Refinement is gold standard: use "
                              "particles from a refinement/import that kept its split, or set '%s' to Yes."
                              % (HALF_SET_ATTR, NEW_SPLIT_LABEL))
            else:
                problem = half_counts_problem(counts.get(1, 0), counts.get(2, 0), counts.get(None, 0))
                if problem is not None:
                    errors.append("Half sets: %s (half 1: %s, half 2: %s, none: %s). Set '%s' to Yes to redo "
                                  "them." % (problem.message, counts.get(1, 0), counts.get(2, 0),
                                             counts.get(None, 0), NEW_SPLIT_LABEL))
        if first is not None and not self.fewParticles.get():
            errors += self._countErrors(counts, first.getXDim())
        symError = validateSymmetry(self.symmetryGroup.get())
        if symError:
            errors.append(symError)
        if self.maxResolution.get() and self.minResolution.get() \
                and self.maxResolution.get() >= self.minResolution.get():
            errors.append("The highest resolution (Å) must be a smaller number than the lowest.")
        return errors

    def _warnings(self):
        warnings = GmmProtRunBase._warnings(self)
        if self.newSplit.get():
            warnings.append("'%s' is Yes: particles without a usable split get random half sets, and the "
                            "resolution is then not independent of the refinement that made their poses."
                            % NEW_SPLIT_LABEL)
        if self.fewParticles.get():
            warnings.append("'%s' is Yes: with too few particles per half set the FSC is not a resolution."
                            % FEW_PARTICLES_LABEL)
        return warnings

    def _countErrors(self, counts, box):
        """Each half set needs π·box/2 particles (gmmcore's rule); a new split halves the set."""
        fewest = min(counts.get(1, 0), counts.get(2, 0))
        if self.newSplit.get() and (counts.get(None, 0) or not fewest):
            fewest = sum(counts.values()) // 2
        need = min_particles_per_half(box)
        if fewest >= need:
            return []
        return ["Input particles: %d in the smaller half set; a gold-standard refinement at box %d needs at least "
                "%d per set (π·box/2 views fill Fourier space). Use more particles, or set '%s' to Yes."
                % (fewest, box, need, FEW_PARTICLES_LABEL)]

    @staticmethod
    def _halfCounts(parts):
        try:
            rows = parts.aggregate(["COUNT"], HALF_SET_ATTR, [HALF_SET_ATTR])
            counts = {}
            for r in rows:
                key = r[HALF_SET_ATTR]
                key = int(key) if key not in (None, "") else None
                counts[key if key in (1, 2) else None] = counts.get(key if key in (1, 2) else None, 0) + r["COUNT"]
            return counts
        except Exception:  # noqa: BLE001 (mapper without aggregate support)
            return convert.count_half_sets(parts)

    def _summaryLines(self, summary):
        lines = self._iterationLines(summary)
        if summary.split == "new-random":
            lines.append("Half sets were assigned at random by gmmcore (new split).")
        return lines

    def _methods(self):
        summary = self.getSummary()
        if not summary or not self.hasAttribute("outputParticles"):
            return []
        text = ("The poses of %d particles were refined against Gaussian mixture models of the two "
                "independent half maps [Chen2024] with gmmcore for %d iterations (symmetry %s)"
                % (self.outputParticles.getSize(), len(summary.iterations), self.symmetryGroup.get()))
        initial, final = summary.resolution_initial, summary.resolution_final
        if initial and final:
            text += "; the gold-standard resolution (FSC 0.143) went from %.2f Å to %.2f Å" % (initial, final)
        return [text + "."]

    def _citations(self):
        return ["Chen2024"]
