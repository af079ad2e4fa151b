"""What the gmmrefine viewers share: the base viewer (on pwem's :class:`EmProtocolViewer`), a view
that draws one of :mod:`gmmrefine_scipion.plotting`'s figures, Scipion's own FSC viewer fed
with our curves, Scipion's angular-distribution plot of output particles, and ChimeraX."""
import os

from pwem.viewers import EmProtocolViewer
from pyworkflow.viewer import DESKTOP_TKINTER, WEB_DJANGO, View

from gmmrefine_scipion.plotting.refine import FSC_THRESHOLD
from gmmrefine_scipion.protocols.protocol_base import fscObjects


class FigureView(View):
    """Shows a matplotlib figure drawn by one of the ``plotting`` functions in a Scipion window."""

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


class GmmSummaryViewer(EmProtocolViewer):
    """The gmmrefine viewers' base: the protocol's run summary, a viewer error message (not a
    traceback) when a file is missing or unreadable, and the views built on Scipion's own viewers."""

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

    def _fscView(self, curves):
        """pwem's FscViewer (its "create FSC" button included) showing ``curves(summary)``:
        [(label, freq 1/Å, FSC, resolution Å)], each as a pwem FSC object."""
        def build():
            from pwem.viewers import FscViewer
            viewer = FscViewer(project=self.getProject(), protocol=self.protocol, threshold=FSC_THRESHOLD,
                               figure=None, addButton=True)
            viewer.fscList = []
            for fsc in fscObjects(curves(self._summary()), withResolution=False):
                viewer.plotFsc(fsc, label=fsc.getObjLabel())  # FscViewer adds the resolution it reads
                viewer.fscList.append(fsc)
            return [viewer]
        return self._guard(build)

    def _angularView(self, particles, title="gmmrefine angular distribution"):
        """Scipion's 2-D polar plot of the projection directions of ``particles`` (angle: rot,
        radius: tilt; colour: particles per direction), or a message when there are none yet."""
        if particles is None:
            return [self.infoMessage("No output particles yet.", "gmmrefine")]

        def build():
            from matplotlib import cm
            from pwem.viewers import EmPlotter
            from pwem.viewers.plotter import PLOT_PROJ_ANGLES
            plotter = EmPlotter(x=1, y=1, windowTitle=title, figsize=(7, 6))
            plotter.plotAngularDistributionFromSet(
                particles, "Projection directions (%d particles)" % particles.getSize(), type=PLOT_PROJ_ANGLES,
                colormap=cm.viridis, subtitle="Radius: tilt, angle: rot (degrees); colour: particles per direction.")
            return [plotter]
        return self._guard(build)

    def _outputParticles(self, name="outputParticles"):
        return getattr(self.protocol, name, None) if self.protocol.hasAttribute(name) else None
