"""Import particles with poses from a RELION star file or a cryoSPARC .cs file."""
import os

import pyworkflow as pw
import pyworkflow.protocol.params as params
from pwem.constants import ALIGN_PROJ
from pwem.objects import SetOfParticles
from pwem.protocols import ProtImport

from gmmrefine_scipion import convert
from gmmrefine_scipion.constants import (IMPORT_DIR, IMPORT_FORMATS,
                                         IMPORT_FROM_CRYOSPARC, IMPORT_FROM_RELION, SUMMARY_JSON)
from .protocol_base import GmmProtocolMixin

# engine option -> the label of the form field that sets it: gmmcore's errors name the field
# ("set \"Particle stacks folder\" in the form"), not a command-line flag the user never sees.
FORM_FIELDS = {
    "--stack-root": "Particle stacks folder",
    "--apix": "Pixel size (Å) override",
    "--voltage": "Voltage (kV)",
    "--cs-mm": "Spherical aberration (mm)",
    "--amp-contrast": "Amplitude contrast",
    "--new-split": "Make a new random half split?",
}


class GmmProtImportParticles(GmmProtocolMixin, ProtImport):
    """Import particles with their 3-D poses, CTF and half sets from a RELION star file
    (3.0, 3.1, 4 or 5) or a cryoSPARC .cs file.

    The images are phase-flipped while they are copied into one stack (gmmcore import), so the
    output set is marked phase-flipped.  Poses become Scipion projection alignment; the half set of
    each particle is kept in _rlnRandomSubset (the attribute the relion plugin uses).
    """
    _label = "import particles"
    _devStatus = pw.PROD
    _possibleOutputs = {"outputParticles": SetOfParticles}

    # --------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        form.addSection(label="Import")
        form.addParam("importFrom", params.EnumParam, choices=IMPORT_FORMATS,
                      default=IMPORT_FROM_RELION, display=params.EnumParam.DISPLAY_HLIST,
                      label="Import from",
                      help="RELION star file (3.0 without optics block; 3.1, 4 or 5 with one) or a "
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
                      help="Folder the image paths in the file are relative to, searched first. RELION: "
                           "the project folder (the one holding Extract/jobNNN/). cryoSPARC: the cryoSPARC "
                           "project folder (blob/path is relative to it). Empty: the file's folder, the "
                           "folders above it and the working folder are searched (also for the paths "
                           "without their leading folders). The form checks that every stack is found.")
        form.addParam("samplingRate", params.FloatParam, default=0.0, expertLevel=params.LEVEL_ADVANCED,
                      label="Pixel size (Å) override",
                      help="0: read it from the file (optics block, rlnImagePixelSize, "
                           "detector pixel size / magnification, or blob/psize_A). Set it only "
                           "when the file has none or a wrong one.")
        form.addParam("voltage", params.FloatParam, allowsNull=True, expertLevel=params.LEVEL_ADVANCED,
                      label=FORM_FIELDS["--voltage"],
                      help="Only for files without rlnVoltage / ctf/accel_kv (empty: from the file; "
                           "a file without one is refused rather than guessed).")
        form.addParam("sphericalAberration", params.FloatParam, allowsNull=True,
                      expertLevel=params.LEVEL_ADVANCED, label=FORM_FIELDS["--cs-mm"],
                      help="Only for files without rlnSphericalAberration / ctf/cs_mm (empty: from "
                           "the file; a file without one is refused rather than guessed).")
        form.addParam("amplitudeContrast", params.FloatParam, allowsNull=True,
                      expertLevel=params.LEVEL_ADVANCED, label=FORM_FIELDS["--amp-contrast"],
                      help="Only for files without rlnAmplitudeContrast (empty: from the file, or "
                           "0.1 as in RELION when the file has none; the log says so).")
        form.addParam("newSplit", params.BooleanParam, default=False, expertLevel=params.LEVEL_ADVANCED,
                      label=FORM_FIELDS["--new-split"],
                      help="A usable half split of the file is always kept. Set this to replace an "
                           "unusable one by a random split (logged and recorded in the output): none, "
                           "particles without a half, a half with fewer than 10% of the particles, or "
                           "an image in both halves. Refining without a usable split is not allowed.")

    # --------------------------- INSERT steps functions ----------------------
    def _insertAllSteps(self):
        self._insertFunctionStep(self.importStep)
        self._insertFunctionStep(self.createOutputStep)

    # --------------------------- STEPS functions -----------------------------
    def _outDir(self, *p):
        return self._getExtraPath(IMPORT_DIR, *p)

    def _inputFile(self):
        return self.csFile.get() if self.importFrom.get() == IMPORT_FROM_CRYOSPARC else self.starFile.get()

    def _constants(self):
        """The form's optional values as gmmcore keywords (None: from the file)."""
        return {"apix": self.samplingRate.get() or None, "voltage": self.voltage.get(),
                "cs": self.sphericalAberration.get(), "amp_contrast": self.amplitudeContrast.get()}

    def importStep(self):
        options = {"out": self.abspath(self._outDir())}
        if self.importFrom.get() == IMPORT_FROM_CRYOSPARC:
            options["cs"] = self.abspath(self.csFile.get())
        else:
            options["star"] = self.abspath(self.starFile.get())
        if self.stackRoot.get():
            options["stack_root"] = self.abspath(self.stackRoot.get())
        c = self._constants()
        options.update(apix=c["apix"], voltage=c["voltage"], cs_mm=c["cs"], amp_contrast=c["amp_contrast"])
        if self.newSplit.get():
            options["new_split"] = True
        # errors name this form's fields instead of the engine's options
        options["form_field"] = ["%s=%s" % (opt.lstrip("-"), label) for opt, label in FORM_FIELDS.items()]
        self.runGmmcore("import", **options)

    def createOutputStep(self):
        star = self._outDir("particles.star")
        parts = self._createSetOfParticles()
        source = self.csFile.get() if self.importFrom.get() == IMPORT_FROM_CRYOSPARC else self.starFile.get()
        parts.setObjComment("Imported by gmmcore from %s (phase-flipped)" % source)
        convert.read_particles_star(star, parts, alignType=ALIGN_PROJ, phaseFlipped=True,
                                    originalRoot=os.path.dirname(os.path.abspath(source)),
                                    originalStackRoot=self.stackRoot.get() or None)
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
            errors.append("%s: folder not found: %s" % (FORM_FIELDS["--stack-root"], self.stackRoot.get()))
        if self.samplingRate.get() < 0:
            errors.append("The pixel size must be positive (0 = from the file).")
        if not errors:
            errors += self._validateStacks()
        return errors

    def _validateStacks(self):
        """Every stack the file names is found (where the engine will look), before anything runs;
        the message names the form field to set."""
        from gmmcore.io.particle_files import missing_stack_error
        root = self.stackRoot.get() or None
        error = missing_stack_error(self._inputFile(), image_root=root, **self._constants())
        return [] if error is None else [error.render(options=(), form_fields=FORM_FIELDS)]

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
