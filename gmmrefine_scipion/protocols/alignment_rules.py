"""Where each iteration aligns and what it reconstructs: expert fields shared by the global, focused and patch-by-patch
refinement forms, and the engine options they set (``--band-rule``, ``--align-from``, ``--drop-worst``, ``--gmm-fit``, ``--gmm-start``, ``--gmm-local-res``, ``--gmm-n-scale``, ``--gmm-density``; defaults:
:mod:`gmmcore.defaults`).

The band rule picks the resolution each iteration aligns to from the last half maps' masked FSC
(fsc0143: where it falls below 0.143; fsc01: 0.9 × where it falls below 0.1, the reference
implementation's); "align from" picks where each iteration's local pose search starts (previous:
the last iteration's poses; prior: the pose prior's centre, the poses the run started from);
"drop worst" leaves that fraction of each half's lowest-scoring particles out of its half map;
"GMM fit" picks how the fit of each half map's GMM computes its transform (fourier, or hermitian: faster);
"GMM start" picks where each half map's GMM starts in iterations >= 2 (seed: K-means; warm: its previous GMM, faster);
"GMM local resolution" blurs each GMM where the half maps' local resolution is coarser;
"GMM size" multiplies the estimated number of Gaussians of each seeded GMM, everywhere or ("GMM size applies":
local) only where the half maps are sharp.
"""
import pyworkflow.protocol.params as params

from gmmcore import defaults

from .protocol_base import addExpertChoice

BAND_RULES = tuple(defaults.BAND_RULES)  # the engine's names, in the form's order
ALIGN_FROMS = tuple(defaults.ALIGN_FROMS)
GMM_FITS = tuple(defaults.GMM_FITS)
GMM_STARTS = tuple(defaults.GMM_STARTS)
GMM_LOCAL_RES = tuple(defaults.GMM_LOCAL_RES_CHOICES)
GMM_DENSITIES = tuple(defaults.GMM_DENSITIES)


def defineAlignmentRuleParams(form):
    """Add "Band rule", "Align from", "Drop worst fraction", "GMM fit", "GMM start", "GMM local resolution",
    "GMM size" and "GMM size applies" (expert) to the current section of ``form``."""
    addExpertChoice(form, "bandRule", BAND_RULES, defaults.BAND_RULE, "Band rule",
                    "The resolution each iteration aligns to, from the masked FSC of the last half maps (never "
                    "finer than 'Highest resolution used'). fsc01: 0.9 x where the FSC falls below 0.1 (the "
                    "reference implementation's rule; default). fsc0143: where it falls below 0.143, coarser.")
    addExpertChoice(form, "alignFrom", ALIGN_FROMS, defaults.ALIGN_FROM, "Align from",
                    "Where each iteration's local pose search starts. previous: the last iteration's poses "
                    "(default). prior: the centre of the pose prior, the poses this run started from, so the "
                    "scatter of early, coarse iterations does not carry over.")
    form.addParam("dropWorst", params.FloatParam, default=defaults.DROP_WORST, expertLevel=params.LEVEL_ADVANCED,
                  label="Drop worst fraction",
                  validators=[params.Range(0.0, 0.49, error="Drop worst fraction must be between 0 and 0.49")],
                  help="Fraction of each half set's particles with the lowest alignment score left out of its half "
                       "map, 0 to 0.49 (default 0: every particle; the reference implementation drops 0.1). Every "
                       "particle keeps its refined pose in the output.")
    addExpertChoice(form, "gmmFit", GMM_FITS, defaults.GMM_FIT, "GMM fit",
                    "How the fit of each half map's GMM computes the GMM's transform. fourier: on the whole "
                    "band (default). hermitian: from its kz >= 0 half, the same transform with about half the "
                    "work: 1.7-3.2x faster GMM fits, more with more Gaussians; the numbers differ at float32 "
                    "rounding.")
    addExpertChoice(form, "gmmStart", GMM_STARTS, defaults.GMM_START, "GMM start",
                    "Where each half map's GMM starts from in iterations 2 and later. seed: K-means seeds, the "
                    "number of Gaussians estimated by K-means (default). warm: the previous iteration's GMM of the "
                    "same half, split or merged to the new band's number of Gaussians, with fewer fit steps: "
                    "several times faster GMM building on large particles. Iteration 1 is always seeded.")
    addExpertChoice(form, "gmmLocalRes", GMM_LOCAL_RES, defaults.GMM_LOCAL_RES, "GMM local resolution",
                    "on (default): blur each Gaussian of a half map's GMM where the local resolution (windowed FSC "
                    "of the half maps) is coarser than the median at the Gaussians, as the reference "
                    "implementation filters each half map by its local resolution (measured slightly better). "
                    "off: one resolution for the whole GMM.")
    lo, hi = defaults.GMM_N_SCALE_RANGE
    form.addParam("gmmNScale", params.FloatParam, default=defaults.GMM_N_SCALE, expertLevel=params.LEVEL_ADVANCED,
                  label="GMM size (x the estimate)",
                  validators=[params.Range(lo, hi, error="GMM size must be between %g and %g" % (lo, hi))],
                  help="The number of Gaussians of each half map's seeded GMM: the estimate (Gaussians spaced by "
                       "about the band's resolution) times this, %g to %g (default 1). 2 packs them 1.26x closer: "
                       "measured better poses of the rigid part on RELION-made particles, with alignment and GMM "
                       "fits about twice as slow. Ignored when 'Number of Gaussians' is set." % (lo, hi))
    addExpertChoice(form, "gmmDensity", GMM_DENSITIES, defaults.GMM_DENSITY, "GMM size applies",
                    "Where 'GMM size' adds Gaussians. uniform: everywhere (default). local: where the half maps' "
                    "local resolution is as sharp as their median, fading to the estimate where it is coarser "
                    "(e.g. a domain blurred by motion).")


def alignmentRuleOptions(prot):
    """The engine options of the eight fields of ``prot`` (its form has them)."""
    return {"band_rule": BAND_RULES[prot.bandRule.get()], "align_from": ALIGN_FROMS[prot.alignFrom.get()],
            "drop_worst": prot.dropWorst.get(), "gmm_fit": GMM_FITS[prot.gmmFit.get()],
            "gmm_start": GMM_STARTS[prot.gmmStart.get()],
            "gmm_local_res": GMM_LOCAL_RES[prot.gmmLocalRes.get()], "gmm_n_scale": prot.gmmNScale.get(),
            "gmm_density": GMM_DENSITIES[prot.gmmDensity.get()]}
