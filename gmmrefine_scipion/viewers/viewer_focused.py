"""Scipion viewer for focused and patch-by-patch GMM refinement (Scipion's FSC and
angular-distribution viewers, matplotlib; ChimeraX when configured)."""
import os

import pyworkflow.protocol.params as params

from gmmrefine_scipion.protocols import GmmProtFocusedRefine, GmmProtPatchRefine
from gmmrefine_scipion.plotting import focused as plots_focused, refine as plots
from .views import GmmSummaryViewer, chimerax_program


class GmmFocusedViewer(GmmSummaryViewer):
    """FSC of input poses vs global vs focused / composite (and within the masks; Scipion's FSC
    viewer), per-patch FSC within each patch mask, the GMM coloured by patch, the patch masks over
    the map, the angular distribution and pose-change histograms of the refined particles, and the
    local resolution with its colour key (ChimeraX, or slices)."""
    _label = "viewer gmm focused / patch refinement"
    _targets = [GmmProtFocusedRefine, GmmProtPatchRefine]

    def _defineParams(self, form):
        form.addSection(label="Visualization")
        form.addParam("displayComparison", params.LabelParam, label="Show FSC: input, global, focused / composite",
                      help="Gold-standard FSC (masked) of the input poses, the global refinement this run "
                           "started from and its result; for a focused run also the FSC within the focus mask "
                           "at the start and at the end, in Scipion's FSC viewer.")
        if self._isPatches():  # the form is built once the protocol is set (ProtocolViewer.setProtocol)
            form.addParam("displayPatchFsc", params.LabelParam, label="Show FSC within each patch mask")
            form.addParam("displayPatchGmm", params.LabelParam, label="Show the GMM coloured by patch")
            form.addParam("displayPatchMasks", params.LabelParam, label="Show the patch masks over the map")
            form.addParam("patchNumber", params.IntParam, default=1, validators=[params.GE(1)],
                          label="Patch for the particle views")
        form.addParam("displayAngDist", params.LabelParam, label="Show the angular distribution",
                      help="Projection directions of the refined particles (for a patch run: of the chosen "
                           "patch), Scipion's 2-D polar plot: radius = tilt, angle = rot; colour = particles "
                           "per direction.")
        form.addParam("displayPoseChanges", params.LabelParam, label="Show pose changes against the start",
                      help="Histograms of the angle (degrees) and shift (pixels) between the poses the run "
                           "started from and its refined poses (for a patch run: of the chosen patch).")
        form.addParam("displayLocalRes", params.LabelParam, label="Show local resolution",
                      help="In ChimeraX (map coloured by local resolution, with a colour key in Å) when "
                           "configured, else central slices with a colour key in Å.")

    def _isPatches(self):
        return isinstance(self.protocol, GmmProtPatchRefine)

    def _getVisualizeDict(self):
        views = {"displayComparison": self._showComparison, "displayPoseChanges": self._showPoseChanges,
                 "displayAngDist": self._showAngDist, "displayLocalRes": self._showLocalRes}
        if self._isPatches():
            views.update(displayPatchFsc=self._showPatchFsc, displayPatchGmm=self._showPatchGmm,
                         displayPatchMasks=self._showPatchMasks)
        return views

    def _showComparison(self, paramName=None):
        return self._fscView(lambda s: [c[:4] for c in plots_focused.comparison_curves(s)])

    def _showAngDist(self, paramName=None):
        name = "outputParticlesPatch%02d" % self.patchNumber.get() if self._isPatches() else "outputParticles"
        return self._angularView(self._outputParticles(name))

    def _showPatchFsc(self, paramName=None):
        return self._figure(lambda s, fig: plots_focused.patch_fsc_figure(s, fig=fig), (7, 5), "gmmrefine patch FSC")

    def _showPatchGmm(self, paramName=None):
        return self._figure(lambda s, fig: plots_focused.patch_gmm_figure(s, fig=fig), (11, 5.5),
                            "gmmrefine patches")

    def _showPatchMasks(self, paramName=None):
        return self._figure(lambda s, fig: plots_focused.patch_masks_figure(s, fig=fig), (12, 4.5),
                            "gmmrefine patch masks")

    def _poseChangesFile(self, summary):
        if summary.kind != "patches":
            return summary.path("pose_changes")
        for rec, s in plots_focused.patch_runs(summary):
            if rec.index == self.patchNumber.get() and s is not None:
                return s.path("pose_changes")
        raise KeyError("patch %d has no results" % self.patchNumber.get())

    def _showPoseChanges(self, paramName=None):
        return self._figure(lambda s, fig: plots.pose_change_figure(self._poseChangesFile(s), fig=fig), (10, 4.5),
                            "gmmrefine pose changes")

    def _showLocalRes(self, paramName=None):
        path = self.protocol.getLocalResolutionFile()
        if path is None:
            return [self.infoMessage("No local-resolution map (the protocol ran without it).", "gmmrefine")]
        program = chimerax_program()
        if program is not None:
            def chimera():
                from pwem.viewers.viewer_chimera import ChimeraView
                summary = self._summary()
                script = os.path.abspath(self.protocol._getExtraPath("chimerax_localres.cxc"))
                with open(script, "w") as f:
                    f.write("open %s\nopen %s\n" % (os.path.abspath(summary.path("map")), os.path.abspath(path)))
                    f.write("volume #2 hide\ncolor sample #1 map #2 palette rainbow\n")
                    f.write("color sample #1 map #2 palette rainbow key true\n")  # the colour key (last)
                return [ChimeraView(script)]
            return self._guard(chimera)
        return self._figure(lambda s, fig: plots_focused.local_resolution_figure(s.path("map"), path, fig=fig),
                            (13, 4.5), "gmmrefine local resolution")
