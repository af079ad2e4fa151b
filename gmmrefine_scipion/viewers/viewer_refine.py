"""Scipion viewer for GmmProtRefine results (Scipion's FSC and angular-distribution viewers,
matplotlib windows; ChimeraX when configured)."""
import os

import pyworkflow.protocol.params as params

from gmmrefine_scipion.protocols import GmmProtRefine
from gmmrefine_scipion.protocols.protocol_base import runFscCurves
from gmmrefine_scipion.plotting import refine as plots
from .views import FigureView, GmmSummaryViewer, chimerax_program

MASKED, UNMASKED, BOTH = 0, 1, 2


class GmmRefineViewer(GmmSummaryViewer):
    """FSC curves per iteration (Scipion's FSC viewer), resolution per iteration, the angular
    distribution of the output particles, the GMM of each half (3-D scatter: colour = amplitude,
    size = width), pose-change histograms, and the map / GMMs in ChimeraX."""
    _label = "viewer gmm refinement"
    _targets = [GmmProtRefine]

    def _defineParams(self, form):
        form.addSection(label="Visualization")
        form.addParam("fscMask", params.EnumParam, choices=["masked", "unmasked", "both"], default=BOTH,
                      display=params.EnumParam.DISPLAY_HLIST, label="FSC curves")
        form.addParam("displayFsc", params.LabelParam, label="Show FSC of every iteration",
                      help="Scipion's FSC viewer: the input poses and each iteration, the 0.143 line, the "
                           "legend gives each resolution; 'create FSC' keeps the curves as a Scipion object.")
        form.addParam("displayResolution", params.LabelParam, label="Show resolution (and GMM fidelity) per iteration",
                      help="Gold-standard resolution (FSC 0.143, masked and unmasked) of the input poses "
                           "(iteration 0) and after every iteration; beside it, for runs that recorded it, "
                           "each half's GMM against its own and the other half map and what the truth "
                           "would score.")
        form.addParam("displayAngDist", params.LabelParam, label="Show the angular distribution",
                      help="Projection directions of the refined particles (Scipion's 2-D polar plot: "
                           "radius = tilt, angle = rot; colour = particles per direction).")
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
                "displayAngDist": lambda p=None: self._angularView(self._outputParticles()),
                "displayGmm": self._showGmm,
                "displayPoseChanges": self._showPoseChanges,
                "displayChimera": self._showChimera}

    # ------------------------------------------------------------------ views
    def _showFsc(self, paramName=None):
        masked = {MASKED: (True,), UNMASKED: (False,), BOTH: (True, False)}[self.fscMask.get()]
        return self._fscView(lambda summary: runFscCurves(summary, masked))

    def _showResolution(self, paramName=None):
        def build():
            summary = self._summary()
            wide = bool(plots.fidelity_records(summary))  # the GMM fidelity panel beside the resolution
            return [FigureView(lambda fig: plots.resolution_figure(summary, fig=fig),
                               figsize=(11, 4.5) if wide else (6, 4.5), title="gmmrefine resolution")]
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
