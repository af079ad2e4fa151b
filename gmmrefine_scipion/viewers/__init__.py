"""The Scipion viewer classes registered for the gmmrefine protocols; what they draw is in
:mod:`gmmrefine_scipion.plotting`."""
from .viewer_refine import GmmRefineViewer
from .viewer_focused import GmmFocusedViewer
from .viewer_heterogeneity import GmmConfToPoseViewer, GmmHeterogeneityViewer
