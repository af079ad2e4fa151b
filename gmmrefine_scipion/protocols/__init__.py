"""gmmrefine protocols (all prefixed GmmProt to avoid clashes with other plugins)."""
from .protocol_export import GmmProtExportParticles
from .protocol_import import GmmProtImportParticles
from .protocol_refine import GmmProtRefine
from .protocol_focused import GmmProtFocusedRefine
from .protocol_patches import GmmProtPatchRefine
from .protocol_expand import GmmProtExpandSymmetry
from .protocol_heterogeneity import GmmProtHeterogeneity
from .protocol_conf2pose import GmmProtConfToPose
