"""Where each iteration aligns: two expert fields shared by the global, focused and patch-by-patch
refinement forms, and the engine options they set (``--band-rule``, ``--align-from``; defaults:
:mod:`gmmcore.defaults`).

The band rule picks the resolution each iteration aligns to from the last half maps' masked FSC
(fsc0143: where it falls below 0.143; fsc01: 0.9 × where it falls below 0.1, the reference
implementation's); "align from" picks where each iteration's local pose search starts (previous:
the last iteration's poses; prior: the pose prior's centre, the poses the run started from).
"""
import pyworkflow.protocol.params as params

from gmmcore import defaults

BAND_RULES = tuple(defaults.BAND_RULES)  # the engine's names, in the form's order
ALIGN_FROMS = tuple(defaults.ALIGN_FROMS)


def defineAlignmentRuleParams(form):
    """Add "Band rule" and "Align from" (expert) to the current section of ``form``."""
    form.addParam("bandRule", params.EnumParam, choices=list(BAND_RULES),
                  default=BAND_RULES.index(defaults.BAND_RULE), expertLevel=params.LEVEL_ADVANCED,
                  display=params.EnumParam.DISPLAY_HLIST, label="Band rule",
                  help="The resolution each iteration aligns to, from the masked FSC of the last half maps (never "
                       "finer than 'Highest resolution used'). fsc0143: where the FSC falls below 0.143 "
                       "(default). fsc01: 0.9 x where it falls below 0.1, finer (the reference implementation's "
                       "rule).")
    form.addParam("alignFrom", params.EnumParam, choices=list(ALIGN_FROMS),
                  default=ALIGN_FROMS.index(defaults.ALIGN_FROM), expertLevel=params.LEVEL_ADVANCED,
                  display=params.EnumParam.DISPLAY_HLIST, label="Align from",
                  help="Where each iteration's local pose search starts. previous: the last iteration's poses "
                       "(default). prior: the centre of the pose prior, the poses this run started from, so the "
                       "scatter of early, coarse iterations does not carry over.")


def alignmentRuleOptions(prot):
    """The engine options of the two fields of ``prot`` (its form has them)."""
    return {"band_rule": BAND_RULES[prot.bandRule.get()], "align_from": ALIGN_FROMS[prot.alignFrom.get()]}
