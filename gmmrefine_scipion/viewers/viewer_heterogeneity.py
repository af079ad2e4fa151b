"""Scipion viewers for GmmProtHeterogeneity and GmmProtConfToPose (matplotlib windows; ChimeraX
when configured)."""
import os

import pyworkflow.protocol.params as params

from gmmrefine_scipion.protocols import GmmProtConfToPose, GmmProtHeterogeneity
from gmmrefine_scipion.plotting import heterogeneity as hplots, refine as plots
from gmmrefine_scipion.protocols.protocol_base import runFscCurves
from .views import GmmSummaryViewer, chimerax_program


class GmmHeterogeneityViewer(GmmSummaryViewer):
    """The latent space (PC1 vs PC2, by density and by half set), the maps along PC1 (montage or a
    ChimeraX volume series) and the training-loss curves."""
    _label = "viewer gmm heterogeneity"
    _targets = [GmmProtHeterogeneity]

    def _defineParams(self, form):
        form.addSection(label="Visualization")
        form.addParam("displayLatent", params.LabelParam, label="Show the latent space",
                      help="PC1 vs PC2 of every particle (PCA within its half), coloured by density and by half set.")
        form.addParam("displayMaps", params.LabelParam, label="Show the maps along PC1",
                      help="Projections of the maps reconstructed from the particles of each PC1 bin, per half.")
        form.addParam("displayChimera", params.LabelParam, label="Open the maps along PC1 in ChimeraX",
                      help="One volume series per half. Needs ChimeraX configured in Scipion.")
        form.addParam("displayLoss", params.LabelParam, label="Show the training loss")

    def _getVisualizeDict(self):
        return {"displayLatent": lambda p=None: self._figure(lambda s, fig: hplots.latent_figure(s, fig=fig),
                                                             (11, 5), "gmmrefine latent space"),
                "displayMaps": lambda p=None: self._figure(lambda s, fig: hplots.pc1_maps_figure(s, fig=fig),
                                                           (12, 5.5), "gmmrefine maps along PC1"),
                "displayLoss": lambda p=None: self._figure(lambda s, fig: hplots.loss_figure(s, fig=fig),
                                                           (6.5, 4.5), "gmmrefine training loss"),
                "displayChimera": self._showChimera}

    def _showChimera(self, paramName=None):
        if chimerax_program() is None:
            return [self.infoMessage("ChimeraX is not configured in this Scipion installation "
                                     "(install the chimera plugin or set CHIMERA_HOME).", "ChimeraX not found")]

        def build():
            from pwem.viewers.viewer_chimera import ChimeraView
            script = os.path.abspath(self.protocol._getExtraPath("chimerax_pc1_series.cxc"))
            return [ChimeraView(hplots.chimerax_series_script(self._summary(), script))]
        return self._guard(build)


class GmmConfToPoseViewer(GmmSummaryViewer):
    """Histogram of the pose changes of the conversion, FSC within the region's mask (consensus,
    converted, focused), the gold-standard FSC of the focused iterations (Scipion's FSC viewer) and
    the angular distribution of the converted and of the refined particles."""
    _label = "viewer gmm conformation to pose"
    _targets = [GmmProtConfToPose]

    def _defineParams(self, form):
        form.addSection(label="Visualization")
        form.addParam("displayPoseChanges", params.LabelParam, label="Show the pose changes of the conversion",
                      help="Angle (degrees) and shift (pixels) between the consensus and the converted pose of "
                           "every particle.")
        form.addParam("displayRegionFsc", params.LabelParam, label="Show the FSC within the region's mask",
                      help="Consensus poses (dashed), converted poses, each focused iteration.")
        form.addParam("displayFsc", params.LabelParam, label="Show the FSC of every iteration",
                      help="Scipion's FSC viewer, masked and unmasked.")
        form.addParam("displayAngDistConverted", params.LabelParam, label="Show the angular distribution: converted",
                      help="Projection directions of the converted particles (Scipion's 2-D polar plot).")
        form.addParam("displayAngDist", params.LabelParam, label="Show the angular distribution: refined",
                      help="Projection directions after the focused refinement.")

    def _getVisualizeDict(self):
        return {"displayPoseChanges": lambda p=None: self._figure(
                    lambda s, fig: plots.pose_change_figure(hplots.conversion_pose_changes(s), fig=fig),
                    (10, 4.5), "gmmrefine conversion pose changes"),
                "displayRegionFsc": lambda p=None: self._figure(
                    lambda s, fig: hplots.region_fsc_figure(s, fig=fig), (6.5, 5), "gmmrefine region FSC"),
                "displayFsc": lambda p=None: self._fscView(runFscCurves),
                "displayAngDistConverted": lambda p=None: self._angularView(
                    self._outputParticles("outputParticlesConverted")),
                "displayAngDist": lambda p=None: self._angularView(self._outputParticles())}
