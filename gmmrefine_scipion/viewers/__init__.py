"""Viewers: ``plots`` (plain matplotlib functions that write PNGs headless) and the Scipion
viewer classes registered for the gmmrefine protocols."""
from .viewer_refine import GmmRefineViewer
from .viewer_focused import GmmFocusedViewer
from .viewer_heterogeneity import GmmConfToPoseViewer, GmmHeterogeneityViewer
