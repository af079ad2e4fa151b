"""What every gmmrefine protocol shares: running gmmcore, reading its summaries."""
import json
import os

from gmmrefine_scipion import Plugin


class GmmProtocolMixin:
    """Mix into an EMProtocol.  gmmcore runs as ``<GMMREFINE_PYTHON> -m gmmcore <verb> ...``
    through ``runJob`` (so it is logged, cancellable and runs on the protocol's host)."""

    def runGmmcore(self, verb, *args, **options):
        self.runJob(Plugin.getProgram(), Plugin.getGmmcoreArgs(verb, *args, **options),
                    env=Plugin.getEnviron(), numberOfMpi=1, numberOfThreads=1)

    @staticmethod
    def readJson(path):
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    @staticmethod
    def abspath(path):
        return os.path.abspath(path)

    def volumeFile(self, volume, name):
        """An MRC file for a Scipion volume: its own file if MRC, else a converted copy in tmp."""
        from gmmrefine_scipion.convert import MRC_EXTENSIONS, strip_format_suffix
        fn = strip_format_suffix(volume.getFileName())
        if fn.lower().endswith(MRC_EXTENSIONS):
            return os.path.abspath(fn)
        from pwem.emlib.image import ImageHandler
        out = self._getTmpPath(name + ".mrc")
        ImageHandler().convert(volume, out)
        return os.path.abspath(out)
