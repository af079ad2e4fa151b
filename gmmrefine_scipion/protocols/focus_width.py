"""The widening of the Gaussians outside a focus mask: two expert fields shared by the focused,
patch-by-patch and conformation-to-pose forms, and the engine options they set
(``--width-rule``, ``--mask-level``; defaults: :mod:`gmmcore.defaults`).

At each Gaussian's centre d = L + (1 − L)·M, M the focus mask there and L the mask level; the
rule "variance" widens σ'² = σ²/d (the reference implementation's), "sigma" σ' = σ/d (the paper's
text).
"""
import pyworkflow.protocol.params as params

from gmmcore import defaults

from .protocol_base import addExpertChoice

WIDTH_RULES = tuple(defaults.WIDTH_RULES)  # the engine's names, in the form's order


def defineFocusWidthParams(form):
    """Add "Width rule" and "Mask level" (expert) to the current section of ``form``."""
    addExpertChoice(form, "widthRule", WIDTH_RULES, defaults.WIDTH_RULE, "Width rule",
                    "How the Gaussians outside the focus mask are widened, with d = L + (1 - L)*M at each "
                    "Gaussian's centre (M: the mask there, L: the mask level). variance: sigma'^2 = "
                    "sigma^2/d, at most 2x wider at L 0.25 (the reference implementation's rule; default). "
                    "sigma: sigma' = sigma/d, at most 4x wider (the paper's text).")
    form.addParam("maskLevel", params.FloatParam, default=defaults.MASK_LEVEL, expertLevel=params.LEVEL_ADVANCED,
                  validators=[params.GT(0, "must be above 0."), params.LE(1, "must be at most 1.")],
                  label="Mask level",
                  help="L above: the weight left to the Gaussians outside the focus mask, above 0 and at most 1 "
                       "(default %g; 1: no widening)." % defaults.MASK_LEVEL)


def focusWidthOptions(prot):
    """The engine options of the two fields of ``prot`` (its form has them)."""
    return {"width_rule": WIDTH_RULES[prot.widthRule.get()], "mask_level": prot.maskLevel.get()}
