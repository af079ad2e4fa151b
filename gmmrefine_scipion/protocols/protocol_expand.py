"""Symmetry expansion of particles (``gmmcore expand-symmetry``) for focused / patch refinement in C1."""
import numpy as np
import pyworkflow as pw
import pyworkflow.protocol.params as params
from pyworkflow.object import Integer
from pwem.constants import ALIGN_PROJ
from pwem.objects import SetOfParticles
from pwem.protocols import ProtParticles

from gmmrefine_scipion import convert
from gmmrefine_scipion.constants import INPUT_STAR, SYMMETRY_HELP
from .protocol_base import GmmProtocolMixin, validateSymmetry

EXPAND_DIR = "expanded"
SOURCE_ATTR = "_gmmSourceParticle"  # the input particle's id
OPERATOR_ATTR = "_gmmSymmetryOperator"  # k (1-based) of the operator S_k


class GmmProtExpandSymmetry(GmmProtocolMixin, ProtParticles):
    """Expand particles by a point group: one copy per particle and symmetry operator, with rotation
    A·S_k (RELION's relion_particle_symmetry_expand convention), half set kept.

    Refine the expanded particles in C1 with 'focused refinement' (particles + volume; the
    volume of the symmetric refinement) and a mask on one asymmetric unit — each copy brings a
    different subunit under the mask — then reimpose the symmetry there.  Every output particle
    records its source particle (_gmmSourceParticle) and operator (_gmmSymmetryOperator).
    """
    _label = "expand symmetry"
    _devStatus = pw.BETA
    _possibleOutputs = {"outputParticles": SetOfParticles}

    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputParticles", params.PointerParam, pointerClass="SetOfParticles",
                      pointerCondition="hasAlignmentProj", important=True, label="Input particles",
                      help="Particles with 3-D poses from a symmetric refinement.")
        form.addParam("symmetryGroup", params.StringParam, default="C1", label="Symmetry",
                      help=SYMMETRY_HELP + " The group the particles were refined with (C1, the default, has "
                                           "nothing to expand: set it).")

    def _insertAllSteps(self):
        self._insertFunctionStep(self.expandStep, self.inputParticles.get().getObjId(), self.symmetryGroup.get())
        self._insertFunctionStep(self.createOutputStep)

    def expandStep(self, inputId=None, sym=None):
        star = self._getExtraPath(INPUT_STAR)
        convert.write_particles_star(self.inputParticles.get(), star, stackDir=self._getTmpPath("stacks"))
        self.runGmmcore("expand-symmetry", particles=self.abspath(star), sym=self.symmetryGroup.get(),
                        out=self.abspath(self._getExtraPath(EXPAND_DIR)))

    def createOutputStep(self):
        from gmmcore.expansion import OPERATOR_COLUMN
        from gmmcore.io.star import read_star
        table = read_star(self._getExtraPath(EXPAND_DIR, "particles.star"))
        ids = table.star_particles["rlnImageId"].to_numpy(np.int64)
        ops = table.star_particles[OPERATOR_COLUMN].to_numpy(np.int64)
        matrices = convert.scipion_matrices(table.rotation, table.origin / table.apix[:, None])
        rows = {}
        for r, pid in enumerate(ids):
            rows.setdefault(int(pid), []).append(r)
        inputParts = self.inputParticles.get()
        outParts = self._createSetOfParticles()
        outParts.copyInfo(inputParts)
        outParts.setAlignment(ALIGN_PROJ)
        for particle in inputParts.iterItems(orderBy="id"):
            source = particle.getObjId()
            for r in rows.get(source, []):
                copy = particle.clone()
                copy.setObjId(None)
                copy.getTransform().setMatrix(matrices[r])
                setattr(copy, SOURCE_ATTR, Integer(source))
                setattr(copy, OPERATOR_ATTR, Integer(int(ops[r])))
                outParts.append(copy)
        self._defineOutputs(outputParticles=outParts)
        self._defineSourceRelation(self.inputParticles, outParts)

    def _validate(self):
        errors = []
        err = validateSymmetry(self.symmetryGroup.get())
        if err:
            errors.append(err)
        elif (self.symmetryGroup.get() or "").strip().upper() == "C1":
            errors.append("C1 has nothing to expand.")
        parts = self.inputParticles.get()
        if parts is not None and parts.getAlignment() != ALIGN_PROJ:
            errors.append("The input particles need 3-D poses (projection alignment).")
        return errors

    def _summary(self):
        if not self.hasAttribute("outputParticles"):
            return ["Not finished yet."]
        return ["%d particles expanded by %s into %d." % (self.inputParticles.get().getSize(),
                                                           self.symmetryGroup.get(), self.outputParticles.getSize())]

    def _methods(self):
        return []

    def _citations(self):
        return ["Chen2024"]
