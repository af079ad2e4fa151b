"""Default values shared by the engine's verbs and their parameter dataclasses, each written once.

A leaf module (no imports): the command line (:mod:`gmmcore.options`), the drivers and the
plugin may all read it.  Units: Å for resolutions, degrees for angles, pixels for shifts.
"""

MINRES_A = 25.0  # coarsest resolution of the FRC (and of a GMM fit), Å
HETEROGENEITY_MINRES_A = 40.0  # coarsest resolution of the heterogeneity networks' FRC, Å
HETEROGENEITY_MAXRES_A = 7.0  # finest band of the heterogeneity networks' FRC unless the run's resolution is coarser, Å
# (the reference code's 7 Å; on the realistic assembly set it follows the motion better than the run's
# 3.8 Å: benchmarks/realistic/README.md)
BATCH = 16  # particles per device batch
CHUNK = 20000  # particles (images) read per chunk
STEPS = 10  # gradient steps per particle per refinement iteration
LR_ANGLE_DEG = 0.5  # Adam step for rotations, degrees
LR_SHIFT_PX = 0.25  # Adam step for shifts, pixels
PRIOR_ANGLE_DEG = 3.0  # MAP pose prior: expected angular error of the start poses, degrees
PRIOR_SHIFT_PX = 1.0  # MAP pose prior: expected shift error of the start poses, pixels
SEED = 0  # random seed
BACKEND = "tf"  # array backend
BACKENDS = ("tf", "jax")
SYMMETRY = "C1"
WIDTH_RULE = "variance"  # focused refinement: σ'² = σ²/d outside the mask (the reference code's rule)
WIDTH_RULES = ("variance", "sigma")  # sigma: σ' = σ/d (the paper's text)
PATCH_SHAPE = "tight"  # patch masks: the particle's density shared out by nearest Gaussian (measured: benchmarks/realistic/README.md)
PATCH_SHAPES = ("tight", "sphere")  # tight: the particle's density shared out by nearest Gaussian (gmmcore.refine.patches)
MASK_LEVEL = 0.25  # focused refinement: d = L + (1 − L)·M, L the mask level
BAND_RULE = "fsc01"  # the alignment band: 0.9 × where the masked FSC of the last half maps falls below 0.1
BAND_RULES = ("fsc0143", "fsc01")  # fsc01: the reference code's rule (measured better, benchmarks/realistic); fsc0143: the FSC-0.143 point
ALIGN_FROM = "previous"  # each iteration's local search starts at the last iteration's poses
ALIGN_FROMS = ("previous", "prior")  # prior: at the pose prior's centre (the poses the run started from)
GMM_FIT = "fourier"  # how a half map's GMM transform is computed in the fit: "fourier" (every k_z) or "hermitian"
GMM_LOCAL_RES = "on"  # each half's GMM blurred where the local resolution is coarser (gmmcore.gmm.localwidth); "off"
GMM_LOCAL_RES_CHOICES = ("off", "on")
GMM_FITS = ("fourier", "hermitian")  # hermitian: from its k_z ≥ 0 half (same loss to float32 rounding, 1.7–3.2× faster)
GMM_START = "seed"  # each iteration's GMM from K-means seeds (N estimated); "warm": from the last iteration's GMM of the half
GMM_N_SCALE = 1.0  # the estimated number of Gaussians of a seeded GMM × this (gmmcore.gmm.build.estimate_n_gaussians)
GMM_N_SCALE_RANGE = (0.25, 8.0)  # accepted values of --gmm-n-scale
GMM_DENSITY = "uniform"  # where --gmm-n-scale applies: "uniform" everywhere; "local" where the map is sharp (gmm.localwidth.seed_density)
GMM_DENSITIES = ("uniform", "local")
GMM_STARTS = ("seed", "warm")  # warm: N by the power law, split/merge, WARM_STEPS fit steps (gmmcore.gmm.warm)
DROP_WORST = 0.0  # fraction of each half's particles with the lowest alignment score left out of its reconstruction

# Heterogeneity decoder: an amplitude per moving Gaussian as well as its position (decoder.py).
# Off: on the realistic flexible set (motion only) the head takes part of the motion, and conformation
# → pose recovers less of it (domain-frame error 12.0° vs 10.4°, mean FSC vs truth in the domain 0.805
# vs 0.832); on the occupancy set it is what finds the missing domain (PC1 AUC 0.92–0.96 vs 0.57–0.64).
DECODER_AMPLITUDE = "off"
DECODER_AMPLITUDE_CHOICES = ("on", "off")
