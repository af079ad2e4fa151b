"""Names shared by the gmmrefine Scipion plugin (variables, labels, file names)."""

# ---- Plugin variables (set in scipion.conf or the environment) ----------------
#: Interpreter of the environment where gmmcore is installed (default: the engine environment's
#: python when GMMREFINE_ENV_ACTIVATION is set, else Scipion's own).
GMMREFINE_PYTHON = "GMMREFINE_PYTHON"
#: Shell command run before gmmcore, e.g. "conda activate gmmcore" (default: the activation of the
#: engine environment gmmrefine-<version> when the installer made one).
GMMREFINE_ENV_ACTIVATION = "GMMREFINE_ENV_ACTIVATION"
#: Default GPU ids for the forms (Scipion syntax, e.g. "0" or "0 1").
GMMREFINE_GPU = "GMMREFINE_GPU"
#: Array backends the installer puts in the engine environment and validation imports there:
#: "tf" (default), "jax" or "tf jax".
GMMREFINE_BACKENDS = "GMMREFINE_BACKENDS"
#: The engine environment Scipion's installer creates: <EM_ROOT>/gmmrefine-<version>.
ENGINE_ENV_NAME = "gmmrefine"

# ---- Particle attributes ------------------------------------------------------
#: Half-set attribute on every particle; the same name the relion plugin reads/writes
#: (relion.constants.PARTICLE_EXTRA_LABELS), so both plugins understand it.
HALF_SET_ATTR = "_rlnRandomSubset"
HALF_SET_LABEL = "rlnRandomSubset"
#: Optics group of a particle, as the relion plugin stores it.
OPTICS_GROUP_ATTR = "_rlnOpticsGroup"
#: Latent coordinates of a particle from GmmProtHeterogeneity: the vector (CsvList of floats, in
#: the latent space of the particle's own half set) and its first two principal components
#: (PCA within that half).
LATENT_ATTR = "_gmmLatent"
LATENT_PC1_ATTR = "_gmmLatentPC1"
LATENT_PC2_ATTR = "_gmmLatentPC2"
#: The image a particle was imported from (absolute path, index@path), when gmmcore import wrote a
#: phase-flipped copy: export can point back at it.
ORIGINAL_IMAGE_ATTR = "_rlnImageOriginalName"
#: The micrograph name exactly as the input star had it (the Coordinate keeps only its base name).
MICROGRAPH_ATTR = "_rlnMicrographName"

# ---- Import formats -----------------------------------------------------------
IMPORT_FROM_RELION = 0
IMPORT_FROM_CRYOSPARC = 1
IMPORT_FORMATS = ["RELION star (3.0 / 3.1 / 4 / 5)", "cryoSPARC .cs"]

# ---- Export formats -----------------------------------------------------------
EXPORT_RELION = 0
EXPORT_CRYOSPARC = 1
EXPORT_BOTH = 2
EXPORT_FORMATS = ["RELION star", "cryoSPARC .cs", "both"]

# ---- Symmetry groups accepted by gmmcore ---------------------------------------
SYMMETRY_HELP = ("Point-group symmetry in RELION notation: C1 (none), Cn, Dn, T, O, I "
                 "(I = I2, RELION's default icosahedral orientation).")

# ---- Files inside protocol folders --------------------------------------------
INPUT_STAR = "input_particles.star"
IMPORT_DIR = "import"
REFINE_DIR = "refine"
HETEROGENEITY_DIR = "heterogeneity"
CONF2POSE_DIR = "conf2pose"
SUMMARY_JSON = "summary.json"

# Scipion form label → gmmcore --backend value
BACKEND_LABELS = ["tensorflow", "jax"]
BACKEND_VALUES = ["tf", "jax"]
BACKEND_HELP = ("tensorflow: the default (CPU or GPU). jax: for GPU machines with JAX and no TensorFlow (also "
                "runs on the CPU). Same results within float precision; the run log names the backend and "
                "device used.")
