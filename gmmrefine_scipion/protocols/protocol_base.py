"""What every gmmrefine protocol shares: running gmmcore, reading its run contract.

* :class:`GmmProtocolMixin` — run ``gmmcore <verb>`` through ``runJob`` (logged, cancellable, on
  the protocol's host); a failure raises the engine's own one-line reason (file, field, remedy).
* :class:`GmmProtRunBase` — a protocol that runs one gmmcore *run directory* (``extra/<RUN_DIR>``)
  and registers its outputs: ``convertInputStep`` → ``runEngineStep`` (``gmmcore <VERB>
  <_engineOptions()> --out DIR``; a rerun continues a killed run) → ``createOutputStep``
  (outputs read through :class:`gmmcore.summary.RunSummary`).  A new protocol supplies its form,
  ``convertInputStep``, ``_engineOptions`` and ``_registerOutputs``.
"""
import os
import re

from gmmcore.summary import SUMMARY_NAME, RunSummary

from gmmrefine_scipion import Plugin

ERROR_FILE = "gmmcore_error.txt"  # the engine writes its one-line error here (GMMCORE_ERROR_FILE)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class GmmProtocolMixin:
    """Mix into an EMProtocol (first: ``class P(GmmProtocolMixin, ProtImport)``):
    ``runGmmcore(verb, **options)``; a failed run's error is plain text."""

    def setFailed(self, msg):
        """The error a user sees is the engine's reason as it is: pyworkflow's colour codes and
        "Protocol failed: " prefix removed."""
        msg = _ANSI.sub("", str(msg or ""))
        if msg.startswith("Protocol failed: "):
            msg = msg[len("Protocol failed: "):]
        super().setFailed(msg)

    def runGmmcore(self, verb, *args, extra="", **options):
        """Run ``gmmcore <verb>``; on failure raise the engine's one-line error, not the command line."""
        errfile = os.path.abspath(self._getExtraPath(ERROR_FILE))
        if os.path.exists(errfile):
            os.remove(errfile)
        env = Plugin.getEnviron()
        env["GMMCORE_ERROR_FILE"] = errfile
        arguments = Plugin.getGmmcoreArgs(verb, *args, **options)
        if extra:
            arguments += " " + extra
        try:
            self.runJob(Plugin.getProgram(), arguments, env=env, numberOfMpi=1, numberOfThreads=1)
        except Exception as exc:  # noqa: BLE001 (runJob raises a bare Exception)
            reason = engineError(errfile)
            if reason:
                raise RuntimeError(reason) from None
            raise RuntimeError("gmmcore %s failed (%s); see the log for details." % (verb, exc)) from None

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


def engineError(errfile):
    """The engine's one-line error (without the ``gmmcore <verb>: error:`` prefix), or None."""
    try:
        with open(errfile) as f:
            line = f.read().strip().splitlines()[-1]
    except (OSError, IndexError):
        return None
    return line.split(": error: ", 1)[-1] if line else None


def validateSymmetry(sym):
    """None if gmmcore accepts the point group ``sym``, else the engine's reason (one line)."""
    from gmmcore.errors import InputError
    from gmmcore.symmetry import parse_symmetry
    try:
        parse_symmetry(sym or "")
    except InputError as exc:
        return "Symmetry: %s" % exc.message
    return None


class GmmProtRunBase(GmmProtocolMixin):
    """A protocol that runs one gmmcore run directory (see the module notes).  Mix in before the
    Scipion protocol class: ``class P(GmmProtRunBase, ProtRefine3D)`` (first, so its steps win)."""

    VERB = "refine"
    RUN_DIR = "refine"

    # --------------------------- steps ----------------------------------------
    def _insertAllSteps(self):
        self._insertFunctionStep(self.convertInputStep, self._inputSignature())
        self._insertFunctionStep(self.runEngineStep)
        self._insertFunctionStep(self.createOutputStep)

    def _inputSignature(self):
        """What the convert step depends on (Scipion reruns it when this changes)."""
        pointer = getattr(self, "inputParticles", None)
        return pointer.get().getObjId() if pointer is not None and pointer.get() is not None else None

    def convertInputStep(self, signature=None):
        pass

    def _engineOptions(self):
        """``gmmcore <VERB>`` options besides --out (subclasses)."""
        return {}

    def _extraArguments(self):
        """Verbatim extra arguments (the expert field), if the form has one."""
        extra = getattr(self, "extraParams", None)
        return extra.get() if extra is not None and extra.get() else ""

    def _deviceOptions(self):
        """--gpu / --cpu from Scipion's GPU fields (several GPUs: one worker each); with a Dask
        scheduler address (expert field, if the form has one) the cluster's workers choose theirs."""
        scheduler = getattr(self, "daskScheduler", None)
        if scheduler is not None and (scheduler.get() or "").strip():
            options = {"dask_scheduler": scheduler.get().strip()}
            if not (hasattr(self, "usesGpu") and self.usesGpu()):
                options["cpu"] = True
            return options
        if hasattr(self, "usesGpu") and self.usesGpu():
            return {"gpu": ",".join(str(g) for g in self.getGpuList()) or "0"}
        return {"cpu": True}

    def runEngineStep(self):
        options = dict(self._engineOptions())
        options["out"] = self.abspath(self._runDir())
        # a run killed earlier (Scipion 'Continue' mode) goes on from where it stopped
        options["continue"] = os.path.exists(self._runDir("params.json"))
        self.runGmmcore(self.VERB, extra=self._extraArguments(), **options)

    def createOutputStep(self):
        self._registerOutputs(RunSummary.load(self.getSummaryFile()))

    def _registerOutputs(self, summary):
        raise NotImplementedError

    # --------------------------- the run directory ---------------------------
    def _runDir(self, *p):
        return self._getExtraPath(self.RUN_DIR, *p)

    def getSummaryFile(self):
        return self._runDir(SUMMARY_NAME)

    def getSummary(self):
        """The run's :class:`RunSummary`, or None before the engine wrote one."""
        path = self.getSummaryFile()
        return RunSummary.load(path) if os.path.exists(path) else None

    # --------------------------- shared outputs ------------------------------
    def _volumeWithHalves(self, summary, apix):
        from pwem.objects import Volume
        vol = Volume()
        vol.setFileName(summary.path("map"))
        vol.setSamplingRate(apix)
        vol.setHalfMaps([summary.path("half1"), summary.path("half2")])
        vol.fixMRCVolume(setSamplingRate=True)
        return vol

    def _fscSet(self, summary):
        """Scipion FSCs: input poses and every iteration, masked and unmasked."""
        from pwem.objects import FSC
        fscs = self._createSetOfFSCs()
        for masked in (True, False):
            for label, freq, curve, res in summary.fsc_curves(masked=masked):
                fsc = FSC(objLabel="%s, %s (%.2f Å)" % (label, "masked" if masked else "unmasked", res))
                fsc.setData(list(map(float, freq)), list(map(float, curve)))
                fscs.append(fsc)
        return fscs

    def _refinedParticles(self, inputParts, starFile):
        """A copy of ``inputParts`` with the poses (and half sets) of ``starFile``."""
        from pwem.constants import ALIGN_PROJ
        from gmmrefine_scipion import convert
        refined, byId = convert.read_refined_alignment(starFile, apix=inputParts.getSamplingRate())
        inputIds = [p.getObjId() for p in inputParts.iterItems(orderBy="id")]
        if not byId:
            if len(refined) != len(inputIds):
                raise RuntimeError("The refined star file has %d particles, the input %d, and no "
                                   "rlnImageId to match them." % (len(refined), len(inputIds)))
            refined = {pid: v for pid, v in zip(inputIds, refined.values())}

        def updateParticle(particle, _row=None):
            value = refined.get(particle.getObjId())
            if value is None:
                particle._appendItem = False
                return
            matrix, half, _ = value
            particle.getTransform().setMatrix(matrix)
            if half is not None:
                convert.set_half(particle, half)

        outParts = self._createSetOfParticles()
        outParts.copyInfo(inputParts)
        outParts.setAlignment(ALIGN_PROJ)
        outParts.copyItems(inputParts, updateItemCallback=updateParticle)
        return outParts

    # --------------------------- info ----------------------------------------
    def _gpuErrors(self):
        """The form's GPU fields: GPU use asked for without GPU ids is an error (as a list)."""
        if self.usesGpu() and not self.getGpuList():
            return ["Give the GPU ids or set 'Use GPU' to No."]
        return []

    def _runSummaryLines(self):
        """Resolution of the input poses, of every iteration (with pose changes) and the final one."""
        summary = self.getSummary()
        if summary is None:
            return ["Not started, or no summary yet."]
        lines = ["Warning: %s" % w for w in summary.extra.get("warnings", [])]
        if summary.resolution_initial is not None:
            lines.append("Input poses: %.2f Å (masked FSC 0.143)" % summary.resolution_initial)
        for rec in summary.iterations:
            pc = rec.pose_change
            lines.append("Iteration %d: %.2f Å; pose change median %.2f°, %.2f px"
                         % (rec.iteration, rec.resolution, pc.angle_median, pc.shift_median))
        if summary.resolution_final is not None:
            lines.append("Final resolution: %.2f Å" % summary.resolution_final)
        return lines
