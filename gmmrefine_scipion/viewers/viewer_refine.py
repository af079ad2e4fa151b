"""Scipion viewers for GmmProtRefine results (matplotlib windows; ChimeraX when configured)."""
import os

import pyworkflow.protocol.params as params
from pyworkflow.viewer import DESKTOP_TKINTER, WEB_DJANGO, ProtocolViewer, View

from gmmrefine_scipion.protocols import GmmProtRefine
from gmmrefine_scipion.plotting import refine as plots

MASKED, UNMASKED, BOTH = 0, 1, 2


class FigureView(View):
    """Shows a matplotlib figure drawn by one of the ``plots`` functions in a Scipion window."""

    def __init__(self, draw, figsize=(10, 5), title="gmmrefine"):
        View.__init__(self)
        self._draw = draw
        self._figsize = figsize
        self._title = title

    def show(self):
        from pyworkflow.gui.plotter import Plotter
        plotter = Plotter(figsize=self._figsize, windowTitle=self._title)
        self._draw(plotter.getFigure())
        plotter.show()


def chimerax_program():
    """ChimeraX executable configured in Scipion (CHIMERA_HOME / chimera plugin), or None."""
    try:
        from pwem.viewers.viewer_chimera import Chimera
        program = Chimera.getProgram()
    except Exception:  # noqa: BLE001 (no chimera plugin, bad configuration)
        return None
    return program if program and os.path.exists(program) else None


class GmmSummaryViewer(ProtocolViewer):
    """What the gmmrefine viewers share: the protocol's run summary, and a viewer error message
    (not a traceback) when a file is missing or unreadable."""

    _environments = [DESKTOP_TKINTER, WEB_DJANGO]

    def _summary(self):
        summary = self.protocol.getSummary()
        if summary is None:
            raise FileNotFoundError("No summary yet: %s" % self.protocol.getSummaryFile())
        return summary

    def _guard(self, build):
        try:
            return build()
        except (OSError, KeyError, ValueError) as exc:
            return [self.errorMessage(str(exc), "gmmrefine viewer")]

    def _figure(self, draw, figsize, title):
        return self._guard(lambda: [FigureView(lambda fig: draw(self._summary(), fig), figsize=figsize, title=title)])


class GmmRefineViewer(GmmSummaryViewer):
    """FSC curves per iteration, resolution per iteration, the GMM of each half (3-D scatter:
    colour = amplitude, size = width), pose-change histograms, and the map / GMMs in ChimeraX."""
    _label = "viewer gmm refinement"
    _targets = [GmmProtRefine]

    def _defineParams(self, form):
        form.addSection(label="Visualization")
        form.addParam("fscMask", params.EnumParam, choices=["masked", "unmasked", "both"], default=BOTH,
                      display=params.EnumParam.DISPLAY_HLIST, label="FSC curves")
        form.addParam("displayFsc", params.LabelParam, label="Show FSC of every iteration",
                      help="Input poses (dashed) and each iteration, final in bold; 0.143 line; "
                           "the legend gives each resolution.")
        form.addParam("displayResolution", params.LabelParam, label="Show resolution per iteration",
                      help="Gold-standard resolution (FSC 0.143, masked and unmasked) of the input poses "
                           "(iteration 0) and after every iteration.")
        form.addParam("displayGmm", params.LabelParam, label="Show the GMM of each half (3-D)",
                      help="One point per Gaussian at its centre: colour = amplitude, size = width.")
        form.addParam("displayPoseChanges", params.LabelParam, label="Show pose changes",
                      help="Histograms of the angle (degrees) and shift (pixels) between input and "
                           "refined poses of every particle.")
        form.addParam("displayChimera", params.LabelParam, label="Open map and GMMs in ChimeraX",
                      help="Needs ChimeraX configured in Scipion (chimera plugin / CHIMERA_HOME).")

    def _getVisualizeDict(self):
        return {"displayFsc": self._showFsc,
                "displayResolution": self._showResolution,
                "displayGmm": self._showGmm,
                "displayPoseChanges": self._showPoseChanges,
                "displayChimera": self._showChimera}

    # ------------------------------------------------------------------ views
    def _showFsc(self, paramName=None):
        masked = {MASKED: True, UNMASKED: False, BOTH: None}[self.fscMask.get()]

        def build():
            summary = self._summary()
            return [FigureView(lambda fig: plots.fsc_figure(summary, fig=fig, masked=masked),
                               figsize=(12 if masked is None else 6.5, 5), title="gmmrefine FSC")]
        return self._guard(build)

    def _showResolution(self, paramName=None):
        def build():
            summary = self._summary()
            return [FigureView(lambda fig: plots.resolution_figure(summary, fig=fig), figsize=(6, 4.5),
                               title="gmmrefine resolution")]
        return self._guard(build)

    def _showGmm(self, paramName=None):
        def build():
            summary = self._summary()
            paths = {h: summary.path("gmm", h) for h in sorted(summary.final.gmm)}
            return [FigureView(lambda fig: plots.gmm_figure(paths, fig=fig), figsize=(11, 5.5),
                               title="gmmrefine GMMs")]
        return self._guard(build)

    def _showPoseChanges(self, paramName=None):
        def build():
            summary = self._summary()
            npz = summary.path("pose_changes")
            return [FigureView(lambda fig: plots.pose_change_figure(npz, fig=fig), figsize=(10, 4.5),
                               title="gmmrefine pose changes")]
        return self._guard(build)

    def _showChimera(self, paramName=None):
        program = chimerax_program()
        if program is None:
            return [self.infoMessage("ChimeraX is not configured in this Scipion installation "
                                     "(install the chimera plugin or set CHIMERA_HOME).",
                                     "ChimeraX not found")]

        def build():
            from pwem.viewers.viewer_chimera import ChimeraView
            summary = self._summary()
            files = [summary.path("map")]
            files += [summary.path("gmm_pdb", h) for h in sorted(summary.final.gmm_pdb)]
            script = os.path.abspath(self.protocol._getExtraPath("chimerax_gmm.cxc"))
            with open(script, "w") as f:
                for fn in files:
                    f.write("open %s\n" % os.path.abspath(fn))
                if len(files) > 1:  # pseudo-atoms: occupancy = amplitude, B-factor = width
                    f.write("volume #1 style mesh\nstyle #2-%d sphere\n"
                            "color byattribute occupancy #2-%d palette viridis\n" % (len(files), len(files)))
            return [ChimeraView(script)]
        return self._guard(build)
