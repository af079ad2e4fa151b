"""Import particles with poses from a RELION star file or a cryoSPARC .cs file."""
import os

import pyworkflow.protocol.params as params
from pwem.constants import ALIGN_PROJ
from pwem.objects import SetOfParticles
from pwem.protocols import ProtImport

from gmmrefine_scipion import convert
from gmmrefine_scipion.constants import (IMPORT_DIR, IMPORT_FORMATS,
                                         IMPORT_FROM_CRYOSPARC, IMPORT_FROM_RELION, SUMMARY_JSON)
from .protocol_base import GmmProtocolMixin


class GmmProtImportParticles(ProtImport, GmmProtocolMixin):
    """Import particles with their 3-D poses, CTF and half sets from a RELION star file
    (3.0, 3.1 or 5) or a cryoSPARC .cs file.

    The images are phase-flipped while they are copied into one stack (gmmcore import), so the
    output set is marked phase-flipped.  Poses become Scipion projection alignment; the half set of
    each particle is kept in _rlnRandomSubset (the attribute the relion plugin uses).
    """
    _label = "import particles (gmm)"
    _possibleOutputs = {"outputParticles": SetOfParticles}

    # --------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        form.addSection(label="Import")
        form.addParam("importFrom", params.EnumParam, choices=IMPORT_FORMATS,
                      default=IMPORT_FROM_RELION, display=params.EnumParam.DISPLAY_HLIST,
                      label="Import from",
                      help="RELION star file (3.0 without optics block, 3.1+ or 5 with one) or a "
                           "cryoSPARC .cs file (e.g. a refinement's particles .cs).")
        form.addParam("starFile", params.PathParam,
                      condition="importFrom == %d" % IMPORT_FROM_RELION,
                      label="Star file",
                      help="Particles star file with rlnImageName, angles, origins and CTF, "
                           "e.g. run_data.star of a RELION 3D refinement.")
        form.addParam("csFile", params.PathParam,
                      condition="importFrom == %d" % IMPORT_FROM_CRYOSPARC,
                      label="cryoSPARC .cs file",
                      help="Particles .cs file with alignments3D (pose, shift, split), ctf and "
                           "blob fields.")
        form.addParam("stackRoot", params.PathParam, allowsNull=True,
                      label="Particle stacks folder",
                      help="Folder the image paths in the file are relative to. RELION: "
                           "the project folder (default: found from the star file's folder). "
                           "cryoSPARC: the cryoSPARC project folder (blob/path is relative to it).")
        form.addParam("samplingRate", params.FloatParam, default=0.0, expertLevel=params.LEVEL_ADVANCED,
                      label="Pixel size (Å) override",
                      help="0: read it from the file (optics block, rlnImagePixelSize, "
                           "detector pixel size / magnification, or blob/psize_A). Set it only "
                           "when the file has none or a wrong one.")
        form.addParam("newSplit", params.BooleanParam, default=False, expertLevel=params.LEVEL_ADVANCED,
                      label="Make a new random half split?",
                      help="The half sets of the file are kept. Only if it has none, and you set "
                           "this, gmmcore assigns particles to halves at random (this is logged and "
                           "recorded in the output). Refining without a split is not allowed.")

    # --------------------------- INSERT steps functions ----------------------
    def _insertAllSteps(self):
        self._insertFunctionStep(self.importStep)
        self._insertFunctionStep(self.createOutputStep)

    # --------------------------- STEPS functions -----------------------------
    def _outDir(self, *p):
        return self._getExtraPath(IMPORT_DIR, *p)

    def importStep(self):
        options = {"out": self.abspath(self._outDir())}
        if self.importFrom.get() == IMPORT_FROM_CRYOSPARC:
            options["cs"] = self.abspath(self.csFile.get())
        else:
            options["star"] = self.abspath(self.starFile.get())
        if self.stackRoot.get():
            options["stack_root"] = self.abspath(self.stackRoot.get())
        if self.samplingRate.get():
            options["apix"] = self.samplingRate.get()
        if self.newSplit.get():
            options["new_split"] = True
        self.runGmmcore("import", **options)

    def createOutputStep(self):
        star = self._outDir("particles.star")
        parts = self._createSetOfParticles()
        source = self.csFile.get() if self.importFrom.get() == IMPORT_FROM_CRYOSPARC else self.starFile.get()
        parts.setObjComment("Imported by gmmcore from %s (phase-flipped)" % source)
        convert.read_particles_star(star, parts, alignType=ALIGN_PROJ, phaseFlipped=True)
        summary = self._importSummary()
        if summary is not None and not summary.phase_flipped:
            parts.setIsPhaseFlipped(False)
        self._defineOutputs(outputParticles=parts)

    # --------------------------- INFO functions ------------------------------
    def _validate(self):
        errors = []
        if self.importFrom.get() == IMPORT_FROM_CRYOSPARC:
            path = self.csFile.get()
            if not path:
                errors.append("Give the cryoSPARC .cs file.")
            elif not os.path.isfile(path):
                errors.append("File not found: %s" % path)
            elif not path.endswith(".cs"):
                errors.append("%s: a cryoSPARC particles file ends in .cs" % path)
        else:
            path = self.starFile.get()
            if not path:
                errors.append("Give the star file.")
            elif not os.path.isfile(path):
                errors.append("File not found: %s" % path)
        if self.stackRoot.get() and not os.path.isdir(self.stackRoot.get()):
            errors.append("Stacks folder not found: %s" % self.stackRoot.get())
        if self.samplingRate.get() < 0:
            errors.append("The pixel size must be positive (0 = from the file).")
        return errors

    def _summary(self):
        source = self.csFile.get() if self.importFrom.get() == IMPORT_FROM_CRYOSPARC else self.starFile.get()
        lines = ["Source: %s (%s)" % (source, IMPORT_FORMATS[self.importFrom.get()])]
        summary = self._importSummary()
        if summary is not None:
            lines.append("%s particles, half 1: %s, half 2: %s" % (summary.n_particles, summary.per_half.get("1"),
                                                                   summary.per_half.get("2")))
            if summary.new_split:
                lines.append("Half sets were assigned at random (new split).")
            lines.append("Images phase-flipped: %s" % ("yes" if summary.phase_flipped else "no"))
            lines.extend("Warning: %s" % w for w in summary.warnings)
        elif not self.hasAttribute("outputParticles"):
            lines.append("Output not ready yet.")
        return lines

    def _importSummary(self):
        """The engine's :class:`gmmcore.summary.ImportSummary`, or None before it exists."""
        from gmmcore.summary import ImportSummary
        path = self._outDir(SUMMARY_JSON)
        return ImportSummary.load(path) if os.path.exists(path) else None

    def _methods(self):
        if not self.hasAttribute("outputParticles"):
            return []
        parts = self.outputParticles
        return ["%d particles (pixel size %.3f Å) with poses, CTF parameters and gold-standard half "
                "sets were imported from %s and phase-flipped with gmmcore [Chen2024]."
                % (parts.getSize(), parts.getSamplingRate(), IMPORT_FORMATS[self.importFrom.get()])]

    def _citations(self):
        return ["Chen2024"]
