"""Export particles (e.g. refined by GmmProtRefine) as a RELION star file and/or a cryoSPARC .cs."""
import os
import shutil

import pyworkflow as pw
import pyworkflow.protocol.params as params
from pwem.constants import ALIGN_PROJ
from pwem.protocols import EMProtocol

from gmmrefine_scipion import convert
from gmmrefine_scipion.constants import (EXPORT_BOTH, EXPORT_CRYOSPARC, EXPORT_FORMATS,
                                         EXPORT_RELION, INPUT_STAR, ORIGINAL_IMAGE_ATTR)
from .protocol_base import GmmProtocolMixin


class GmmProtExportParticles(GmmProtocolMixin, EMProtocol):
    """Write particles with their poses, CTF and half sets as a RELION 3.1 star file and/or a
    cryoSPARC .cs file (gmmcore export), e.g. to continue processing outside Scipion."""
    _label = "export particles"
    _devStatus = pw.PROD

    def _defineParams(self, form):
        form.addSection(label="Export")
        form.addParam("inputParticles", params.PointerParam, pointerClass="SetOfParticles",
                      pointerCondition="hasAlignmentProj", important=True,
                      label="Particles", help="Particles with 3-D poses, e.g. the output of "
                                              "'global refinement'.")
        form.addParam("exportFormat", params.EnumParam, choices=EXPORT_FORMATS, default=EXPORT_BOTH,
                      display=params.EnumParam.DISPLAY_HLIST, label="Format",
                      help="RELION: star file with optics block (origins in Å). cryoSPARC: .cs "
                           "file (pose as rotation vector, shift in pixels, split 0/1).")
        form.addParam("referenceStar", params.PathParam, allowsNull=True,
                      condition="exportFormat != %d" % EXPORT_CRYOSPARC,
                      label="Original star file (optional)",
                      help="The star file the particles were imported from: the RELION output then "
                           "keeps its rows, optics and image names (the original, not "
                           "phase-flipped, images) with the new poses and half sets. Without it, "
                           "particles imported by 'import particles (gmm)' still point at their "
                           "original images, and keep their micrograph names and coordinates.")
        form.addParam("referenceCs", params.PathParam, allowsNull=True,
                      condition="exportFormat != %d" % EXPORT_RELION,
                      label="Original cryoSPARC .cs (optional)",
                      help="The .cs the particles came from: its uids and blob paths are kept so "
                           "cryoSPARC can import the result against the original particles.")
        form.addParam("exportDir", params.PathParam, allowsNull=True,
                      label="Copy to folder (optional)",
                      help="Also copy the written files into this folder. They always stay in the "
                           "protocol's extra folder.")
        form.addParam("baseName", params.StringParam, default="particles_gmm",
                      label="File name (no extension)")

    def _insertAllSteps(self):
        self._insertFunctionStep(self.exportStep)

    def _exportFiles(self):
        fmt = self.exportFormat.get()
        out = []
        if fmt in (EXPORT_RELION, EXPORT_BOTH):
            out.append(("relion", self._getExtraPath(self.baseName.get() + ".star")))
        if fmt in (EXPORT_CRYOSPARC, EXPORT_BOTH):
            out.append(("cryosparc", self._getExtraPath(self.baseName.get() + ".cs")))
        return out

    def exportStep(self):
        star = self._getExtraPath(INPUT_STAR)
        convert.write_particles_star(self.inputParticles.get(), star,
                                     stackDir=self._getExtraPath("stacks"))
        for fmt, path in self._exportFiles():
            options = {"particles": self.abspath(star), "format": fmt, "out": self.abspath(path)}
            if fmt == "cryosparc" and self.referenceCs.get():
                options["reference"] = self.abspath(self.referenceCs.get())
            if fmt == "relion" and self.referenceStar.get():
                options["reference"] = self.abspath(self.referenceStar.get())
            elif fmt == "relion" and self._hasOriginalImages():
                options["original_images"] = True  # point at the imported (not phase-flipped) images
            self.runGmmcore("export", **options)
            if self.exportDir.get():
                os.makedirs(self.exportDir.get(), exist_ok=True)
                shutil.copy(path, self.exportDir.get())

    def _hasOriginalImages(self):
        first = self.inputParticles.get().getFirstItem()
        return first is not None and bool(first.getAttributeValue(ORIGINAL_IMAGE_ATTR, None))

    def _validate(self):
        errors = []
        parts = self.inputParticles.get()
        if parts is not None and parts.getAlignment() != ALIGN_PROJ:
            errors.append("The particles need 3-D poses (projection alignment).")
        for ref in (self.referenceCs.get(), self.referenceStar.get()):
            if ref and not os.path.isfile(ref):
                errors.append("File not found: %s" % ref)
        if self.referenceCs.get() and not self.referenceCs.get().endswith(".cs"):
            errors.append("The original cryoSPARC file must be a .cs file.")
        name = self.baseName.get() or ""
        if not name or os.sep in name:
            errors.append("Give a file name without folders.")
        return errors

    def _summary(self):
        lines = []
        for fmt, path in self._exportFiles():
            if os.path.exists(path):
                lines.append("%s: %s" % (fmt, os.path.abspath(path)))
                if self.exportDir.get():
                    lines.append("  copied to %s" % self.exportDir.get())
        return lines or ["Nothing written yet."]

    def _methods(self):
        return []

    def _citations(self):
        return ["Chen2024"]
