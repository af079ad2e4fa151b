"""Every viewer's form is built and its conditions evaluated the way Scipion's "Analyze results"
does it (pwem's Domain.findViewers for the protocol, ProtocolViewer.setProtocol, then each field's
condition and expert level as pyworkflow's FormWindow evaluates them), for every protocol that has
a viewer; each button of the form has a view, and (for the runs gmm_fakes can forge) draws it
into a PNG: our figures, Scipion's FscViewer fed with our curves, Scipion's angular-distribution
plot of the output particles, the local resolution with its colour key.
No engine run, no display (seconds)."""
import os

from pwem.constants import ALIGN_PROJ
from pwem.objects import SetOfParticles
from pyworkflow import Config
from pyworkflow.protocol.params import LabelParam
from pyworkflow.tests import BaseTest, setupTestProject
from pyworkflow.viewer import DESKTOP_TKINTER

import gmm_fakes
from gmmrefine_scipion import convert
from gmmrefine_scipion.plotting.refine import _new_figure
from gmmrefine_scipion.protocols import (GmmProtConfToPose, GmmProtFocusedRefine, GmmProtHeterogeneity,
                                         GmmProtPatchRefine, GmmProtRefine)

# protocol -> forge its run directory (None: the form only)
FAKE_RUNS = {GmmProtRefine: gmm_fakes.write_refine_run, GmmProtHeterogeneity: gmm_fakes.write_heterogeneity_run,
             GmmProtConfToPose: gmm_fakes.write_conf2pose_run, GmmProtFocusedRefine: gmm_fakes.write_focused_run,
             GmmProtPatchRefine: None}
# the particle outputs each forged protocol gets (for the angular-distribution views)
PARTICLE_OUTPUTS = {GmmProtConfToPose: ("outputParticles", "outputParticlesConverted")}


def _png_of(view, path):
    """Draw a view off screen into ``path`` (our FigureView, pwem's FscViewer, an EmPlotter)."""
    kind = type(view).__name__
    if kind == "FigureView":
        fig = _new_figure((8, 5))
        view._draw(fig)  # what show() draws into its window
        fig.savefig(path)
    elif kind == "FscViewer":
        view.plotter.savefig(path)
    else:
        view.savefig(path)
    return path


class TestGmmViewerForms(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)

    def _protocol(self, protClass):
        prot = self.newProtocol(protClass, objLabel=protClass.__name__)
        self.proj.saveProtocol(prot)  # gives it its working folder
        forge = FAKE_RUNS[protClass]
        if forge is not None:
            forge(prot.getRunDir())
        if forge is not None:
            self._forgeParticles(prot, PARTICLE_OUTPUTS.get(protClass, ("outputParticles",)))
        if hasattr(prot, "getLocalResolutionFile") and forge is not None:  # as gmmcore local-resolution writes it
            import shutil
            os.makedirs(prot._getExtraPath("localres"))
            shutil.copy(prot.getRunDir("final", "map.mrc"), prot._getExtraPath("localres", "local_resolution.mrc"))
        return prot, forge is not None

    def _forgeParticles(self, prot, names):
        star, _ = gmm_fakes.write_star_stack(prot._getExtraPath("fake_particles"), n=60, box=16, apix=2.0)
        for name in names:
            parts = SetOfParticles(filename=prot._getExtraPath(name + ".sqlite"))
            convert.read_particles_star(star, parts, alignType=ALIGN_PROJ, phaseFlipped=False)
            parts.write()
            prot._defineOutputs(**{name: parts})

    def test_every_viewer_form_builds_and_evaluates(self):
        for protClass in FAKE_RUNS:
            prot, forged = self._protocol(protClass)
            viewers = Config.getDomain().findViewers(prot, DESKTOP_TKINTER)
            ours = [v for v in viewers if v.__module__.startswith("gmmrefine_scipion.")]
            self.assertEqual(len(ours), 1, (protClass.__name__, viewers))
            viewer = ours[0](project=self.proj, protocol=prot)
            viewer.setProtocol(prot)  # what visualize() does before the FormWindow is built
            handlers = viewer._getVisualizeDict()
            buttons = []
            for name, param in viewer._definition.iterParams():
                shown = viewer.evalParamCondition(name) and viewer.evalParamExpertLevel(param)
                self.assertIn(shown, (True, False), (protClass.__name__, name))
                if isinstance(param, LabelParam) and shown:
                    buttons.append(name)
            self.assertTrue(buttons, protClass.__name__)
            self.assertEqual(set(buttons), set(handlers), protClass.__name__)
            self.assertEqual(viewer.validate(), [], protClass.__name__)
            if not forged:
                continue
            for name in buttons:
                if "Chimera" in name:
                    continue  # needs ChimeraX configured
                views = handlers[name](name)
                kinds = [type(v).__name__ for v in views]
                expected = ("FscViewer" if name == "displayFsc" or name == "displayComparison" else
                            "EmPlotter" if name.startswith("displayAngDist") else "FigureView")
                self.assertEqual(kinds, [expected], (protClass.__name__, name))
                png = _png_of(views[0], self.getOutputPath("%s_%s.png" % (protClass.__name__, name)))
                self.assertGreater(os.path.getsize(png), 5000, (protClass.__name__, name))
                if name == "displayLocalRes":  # the colour key
                    fig = _new_figure((13, 4.5))
                    views[0]._draw(fig)
                    self.assertIn("local resolution (Å)", [ax.get_ylabel() for ax in fig.axes])

    def test_resolution_view_adds_the_gmm_fidelity_panel_for_runs_that_recorded_it(self):
        """The refine viewer's resolution button, as Scipion presses it: one plot for a run without
        fidelity figures, the GMM fidelity panel beside it (a wider window) once the run has them."""
        from gmmcore.summary import RunSummary

        prot, _ = self._protocol(GmmProtRefine)
        viewer = [v for v in Config.getDomain().findViewers(prot, DESKTOP_TKINTER)
                  if v.__module__.startswith("gmmrefine_scipion.")][0](project=self.proj, protocol=prot)
        viewer.setProtocol(prot)

        def drawn():
            view = viewer._getVisualizeDict()["displayResolution"]("displayResolution")[0]
            fig = _new_figure(view._figsize)  # the window Scipion opens: FigureView.show
            view._draw(fig)
            return fig

        fig = drawn()
        self.assertEqual((len(fig.axes), fig.get_figwidth()), (1, 6))
        summary = RunSummary.load(prot.getRunDir())
        for rec in summary.iterations:
            rec.gmm_cross_fsc, rec.gmm_fsc_ceiling = {"1": 0.58, "2": 0.57}, 0.63
        summary.save(prot.getRunDir())
        fig = drawn()
        self.assertEqual((len(fig.axes), fig.get_figwidth()), (2, 11))
        self.assertEqual(fig.axes[1].get_title(), "GMM fidelity")

    def test_patch_fields_only_for_patch_runs(self):
        focused, _ = self._protocol(GmmProtFocusedRefine)
        patches, _ = self._protocol(GmmProtPatchRefine)
        names = {}
        for prot in (focused, patches):
            viewer = Config.getDomain().findViewers(prot, DESKTOP_TKINTER)[0](project=self.proj, protocol=prot)
            viewer.setProtocol(prot)
            names[prot] = {n for n, _ in viewer._definition.iterParams()}
        self.assertNotIn("displayPatchFsc", names[focused])
        self.assertTrue({"displayPatchFsc", "displayPatchGmm", "displayPatchMasks", "patchNumber"} <= names[patches])
        self.assertTrue(os.path.isdir(self.proj.getPath()))
