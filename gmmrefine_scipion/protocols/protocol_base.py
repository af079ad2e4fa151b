"""What every gmmrefine protocol shares: running gmmcore, reading its run contract, the form.

* :class:`GmmProtocolMixin` — run ``gmmcore <verb>`` through ``runJob`` (logged, cancellable, on
  the protocol's host; the form's Threads, where it has them, through ``GMMCORE_THREADS``); a
  failure raises the engine's own one-line reason (file, field, remedy), a refused output folder
  in the form's words (:mod:`.output_refusals`).
* :class:`GmmProtRunBase` — a protocol that runs one gmmcore *run directory* (:meth:`getRunDir`,
  ``extra/<RUN_DIR>``) and registers its outputs: ``convertInputStep`` → ``runEngineStep``
  (``gmmcore <VERB> <_engineOptions()> --out DIR``; a rerun continues a killed run) →
  ``createOutputStep`` (outputs read through the run's summary, :mod:`gmmcore.summary`).  The last
  two steps carry the form's signature (:meth:`_formSignature`), so Execute in Scipion's Continue
  mode after a changed field reruns them: with only another CONTINUE_OPTIONS value (global,
  focused and patch refinement: Iterations) the engine continues the finished run (more: it adds
  them; fewer: it ends at that iteration and keeps the later ones on disk), with any other
  change of what the run computes the run directory starts anew (:meth:`_startOrContinue`).  Its form
  holds the fields every compute protocol has (GPU, highest resolution, pose prior, batch size with
  0 = automatic, array backend, extra arguments, Threads); a new protocol supplies its own fields
  through the ``_define*Params`` hooks, ``_protocolOptions``, ``convertInputStep``,
  ``_registerOutputs``, ``_validateInputs`` and ``_summaryLines``.
"""
import json
import os
import re
import shutil

import pyworkflow.protocol.params as params
from pyworkflow.protocol.constants import GPU_LIST, USE_GPU

from gmmcore.summary import SUMMARY_NAME, RunSummary

from gmmrefine_scipion import Plugin
from gmmrefine_scipion.constants import BACKEND_HELP, BACKEND_LABELS, BACKEND_VALUES
from .output_refusals import formMessage, projectFolderError

RUN_RECORD = "gmmrefine_run.json"  # in extra/: what the run directory was last run with (_startOrContinue)
# engine options that change where and how fast a run computes, not what it computes
DEVICE_OPTIONS = ("gpu", "cpu", "dask_scheduler", "batch", "backend", "out", "continue")
# form fields of the same kind (left out of the steps' signature)
DEVICE_FIELDS = ("useGpu", "gpuList", "numberOfThreads", "numberOfMpi", "hostName", "batchSize", "arrayBackend",
                 "daskScheduler")
ERROR_FILE = "gmmcore_error.txt"  # the engine writes its one-line error here (GMMCORE_ERROR_FILE)
THREADS_ENV = "GMMCORE_THREADS"  # the engine's one CPU-threads knob (gmmcore.resources), inherited by its workers
THREADS_HELP = ("CPU threads gmmcore may use (TensorFlow, FFTs, half maps reconstructed in parallel), also "
                "beside a GPU.")


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
        env = self.engineEnviron()
        env["GMMCORE_ERROR_FILE"] = errfile
        arguments = Plugin.getGmmcoreArgs(verb, *args, **options)
        if extra:
            arguments += " " + extra
        try:
            self.runJob(Plugin.getProgram(), arguments, env=env, numberOfMpi=1, numberOfThreads=1)
        except Exception as exc:  # noqa: BLE001 (runJob raises a bare Exception)
            reason = engineError(errfile)
            if reason:  # a refused output folder in the form's words, any other reason as it is
                raise RuntimeError(formMessage(reason) or reason) from None
            raise RuntimeError("gmmcore %s failed (%s); see the log for details." % (verb, exc)) from None

    def validate(self):
        """Scipion's checks and the protocol's (``_validate``), then the refusal every engine run
        would meet: this project inside a gmmcore output folder."""
        errors = super().validate()
        folder = projectFolderError(self.getWorkingDir()) if self.getWorkingDir() else None
        return errors + ([folder] if folder else [])

    def engineEnviron(self):
        """The engine's environment: the plugin's, with the form's Threads (where it has them)."""
        env = Plugin.getEnviron()
        threads = getattr(self, "numberOfThreads", None)
        if threads is not None and threads.get():
            env[THREADS_ENV] = str(max(1, threads.get()))
        return env

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


def addExpertChoice(form, name, choices, default, label, help):
    """An expert-level choice among the engine's names ``choices`` (a horizontal list), ``default``
    being one of them; the form stores its index."""
    form.addParam(name, params.EnumParam, choices=list(choices), default=list(choices).index(default),
                  expertLevel=params.LEVEL_ADVANCED, display=params.EnumParam.DISPLAY_HLIST, label=label, help=help)


def validateSymmetry(sym):
    """None if gmmcore accepts the point group ``sym``, else the engine's reason (one line)."""
    from gmmcore.errors import InputError
    from gmmcore.symmetry import parse_symmetry
    try:
        parse_symmetry(sym or "")
    except InputError as exc:
        return "Symmetry: %s" % exc.message
    return None


def fscObjects(curves, withResolution=True):
    """pwem FSC objects of ``curves`` [(label, freq 1/Å, FSC, resolution Å)]; each one's label is
    the curve's, with its resolution unless ``withResolution`` is False (FscViewer adds its own)."""
    from pwem.objects import FSC
    out = []
    for label, freq, curve, res in curves:
        fsc = FSC(objLabel="%s (%.2f Å)" % (label, res) if withResolution else label)
        fsc.setData(list(map(float, freq)), list(map(float, curve)))
        out.append(fsc)
    return out


def runFscCurves(summary, masked=(True, False)):
    """[(label, freq, FSC, resolution)] of the input poses and every iteration of a run summary,
    masked and / or unmasked (labels say which)."""
    return [("%s, %s" % (label, "masked" if m else "unmasked"), freq, curve, res)
            for m in masked for label, freq, curve, res in summary.fsc_curves(masked=m)]


class GmmProtRunBase(GmmProtocolMixin):
    """A protocol that runs one gmmcore run directory (see the module notes).  Mix in before the
    Scipion protocol class: ``class P(GmmProtRunBase, ProtRefine3D)`` (first, so its steps win).

    The form is shared (:meth:`_defineParams`): a subclass adds its own fields through the hooks
    ``_defineInputParams``, ``_defineSettingsParams`` and ``_defineExpertParams``, and says through
    the class attributes below which of the common fields its verb takes."""

    VERB = "refine"
    RUN_DIR = "refine"
    PARAMS_FILE = ("params.json",)  # in the run directory: the engine has started this run
    CONTINUE_OPTIONS = ()  # engine options a finished run continues with another value of (refine: "iter")
    SUMMARY_CLASS = RunSummary

    # ---- the common fields, per verb ----------------------------------------
    GPU_HELP = "GPU to use, e.g. '0'. gmmcore uses the first GPU listed."
    SETTINGS_SECTION = "Refinement"
    MAXRES_OPTION = "maxres"  # the engine option the field "Highest resolution used" sets
    MAXRES_LEVEL = params.LEVEL_ADVANCED
    MAXRES_HELP = "Best resolution used when comparing particles to the GMM (0: follow the FSC of each iteration)."
    POSE_PRIOR = True  # the pose-prior fields (verbs that align particles)
    PRIOR_LABEL = "Input pose accuracy"
    PRIOR_HELP = ("Width of the pose prior centred on the poses this run starts from (MAP alignment): their "
                  "expected angular error. It keeps particles with little signal from drifting; strong data "
                  "overrides it. 0: no prior (the paper's plain maximum of the FRC).")
    BACKEND = True  # the array-backend field (verbs that take --backend)
    BATCH_AUTO = True  # the verb takes --batch auto (Batch size 0); else the field asks for at least 1
    BATCH_HELP = ("Particles processed together on the device; lower it if the GPU runs out of memory. "
                  "0 = automatic: on a GPU the largest batch that fits its free memory, on a CPU 16.")

    # --------------------------- the form --------------------------------------
    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addHidden(USE_GPU, params.BooleanParam, default=True, label="Use GPU?",
                       help="Run on the GPU(s); No runs on the CPU (slow, fine for small tests).")
        form.addHidden(GPU_LIST, params.StringParam, default=Plugin.getDefaultGpu(), label="GPU ids",
                       help=self.GPU_HELP)
        self._defineInputParams(form)
        form.addSection(label=self.SETTINGS_SECTION)
        self._defineSettingsParams(form)
        form.addParam("maxResolution", params.FloatParam, default=0.0, validators=[params.GE(0)],
                      expertLevel=self.MAXRES_LEVEL, label="Highest resolution used (Å)", help=self.MAXRES_HELP)
        if self.POSE_PRIOR:
            form.addParam("priorAngle", params.FloatParam, default=3.0, validators=[params.GE(0)],
                          expertLevel=params.LEVEL_ADVANCED, label="%s: angle (deg)" % self.PRIOR_LABEL,
                          help=self.PRIOR_HELP)
            form.addParam("priorShift", params.FloatParam, default=1.0, validators=[params.GE(0)],
                          expertLevel=params.LEVEL_ADVANCED, condition="priorAngle > 0",
                          label="%s: shift (px)" % self.PRIOR_LABEL, help="Expected shift error, pixels.")
        least = 0 if self.BATCH_AUTO else 1
        form.addParam("batchSize", params.IntParam, default=16,
                      validators=[params.GE(least, "must be at least %d%s." % (
                          least, "" if self.BATCH_AUTO else " (this protocol has no automatic batch size)"))],
                      expertLevel=params.LEVEL_ADVANCED, label="Batch size", help=self.BATCH_HELP)
        if self.BACKEND:
            form.addParam("arrayBackend", params.EnumParam, choices=BACKEND_LABELS, default=0,
                          expertLevel=params.LEVEL_ADVANCED, display=params.EnumParam.DISPLAY_HLIST,
                          label="Array backend", help=BACKEND_HELP)
        self._defineExpertParams(form)
        form.addParam("extraParams", params.StringParam, default="", expertLevel=params.LEVEL_ADVANCED,
                      label="Additional gmmcore arguments", help="Passed verbatim to 'gmmcore %s'." % self.VERB)
        form.addParallelSection(threads=4, mpi=0, binThreadsHelp=THREADS_HELP)

    def _defineInputParams(self, form):
        """The protocol's inputs (section "Input", after the GPU fields)."""
        raise NotImplementedError

    def _defineSettingsParams(self, form):
        """The protocol's own settings (section SETTINGS_SECTION, before the common fields)."""

    def _defineExpertParams(self, form):
        """The protocol's own expert fields (after batch size and backend)."""

    # --------------------------- steps ----------------------------------------
    def _insertAllSteps(self):
        signature = self._formSignature()
        self._insertFunctionStep(self.convertInputStep, self._inputSignature())
        self._insertFunctionStep(self.runEngineStep, signature)
        self._insertFunctionStep(self.createOutputStep, signature)

    def _formSignature(self):
        """The form's values that decide what the run computes (JSON text): the inputs chosen
        (:meth:`_pointerSignature`) and every field but the device ones.  A step that carries it
        reruns in Scipion's Continue mode when one of them changed."""
        values = {"input": self._inputSignature(), "pointers": self._pointerSignature()}
        for name, param in self._definition.iterParams():
            if name in DEVICE_FIELDS or isinstance(param, (params.PointerParam, params.LabelParam)):
                continue
            attr = getattr(self, name, None)
            if attr is not None and hasattr(attr, "get"):
                values[name] = attr.get()
        return json.dumps(values, sort_keys=True, default=str)

    def _pointerSignature(self):
        """{field: "protocol id:output"} of the form's input fields (masks included), None when empty."""
        out = {}
        for name, param in self._definition.iterParams():
            if isinstance(param, params.PointerParam):
                pointer = getattr(self, name)
                owner = pointer.getObjValue() if pointer.get() is not None else None
                out[name] = None if owner is None else "%s:%s" % (owner.getObjId(), pointer.getExtended() or "")
        return out

    def _inputSignature(self):
        """What the convert step depends on (Scipion reruns it when this changes)."""
        pointer = getattr(self, "inputParticles", None)
        return pointer.get().getObjId() if pointer is not None and pointer.get() is not None else None

    def convertInputStep(self, signature=None):
        pass

    def _engineOptions(self):
        """``gmmcore <VERB>`` options besides --out: the protocol's own and the common fields'."""
        options = dict(self._protocolOptions())
        options[self.MAXRES_OPTION] = self.maxResolution.get() or None
        options["batch"] = self.batchSize.get() or ("auto" if self.BATCH_AUTO else None)
        if self.POSE_PRIOR:
            if self.priorAngle.get() > 0:
                options["prior_angle"] = self.priorAngle.get()
                if self.priorShift.get() > 0:
                    options["prior_shift"] = self.priorShift.get()
            else:
                options["no_prior"] = True
        if self.BACKEND:
            options["backend"] = BACKEND_VALUES[self.arrayBackend.get()]
        options.update(self._deviceOptions())
        return options

    def _protocolOptions(self):
        """The engine options of the protocol's own fields (subclasses)."""
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

    def runEngineStep(self, signature=None):
        options = dict(self._engineOptions())
        options["out"] = self.abspath(self.getRunDir())
        options["continue"] = self._startOrContinue(options)
        self.runGmmcore(self.VERB, extra=self._extraArguments(), **options)

    def _startOrContinue(self, options):
        """Whether the engine continues the run directory (else it starts anew).  It continues a
        run killed earlier, and a finished run whose only change is a CONTINUE_OPTIONS value (more
        iterations are added; fewer end the run there, the later ones kept on disk); any other
        change of what the run computes (see DEVICE_OPTIONS for what does not count) removes the old
        run directory first.  Records this run in extra/RUN_RECORD."""
        record = {k: v for k, v in options.items() if k not in DEVICE_OPTIONS}
        record.update(input=self._inputSignature(), pointers=self._pointerSignature(), extra=self._extraArguments())
        record = json.loads(json.dumps(record, sort_keys=True, default=str))
        recordFile = self._getExtraPath(RUN_RECORD)
        started = os.path.exists(self.getRunDir(*self.PARAMS_FILE))
        if started and os.path.exists(recordFile):
            with open(recordFile) as f:
                old = json.load(f)
            changed = sorted(k for k in set(old) | set(record) if not self._continuable(k, old.get(k), record.get(k)))
            kept = self._keptOnChange(changed) if changed else ()
            if kept:
                self.info("The form changed since the run in %s was made (%s): keeping %s, the rest starts anew."
                          % (self.getRunDir(), ", ".join(changed), ", ".join(kept)))
                for name in os.listdir(self.getRunDir()):
                    if name not in kept:
                        path = self.getRunDir(name)
                        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            elif changed:
                self.info("The form changed since the run in %s was made (%s): starting it anew."
                          % (self.getRunDir(), ", ".join(changed)))
                shutil.rmtree(self.getRunDir())
                started = False
            elif old != record:
                self.info("Continuing the run in %s with %s." % (self.getRunDir(), ", ".join(
                    "%s %s -> %s" % (k, old.get(k), record.get(k)) for k in self.CONTINUE_OPTIONS
                    if old.get(k) != record.get(k))))
        os.makedirs(os.path.dirname(recordFile), exist_ok=True)
        with open(recordFile, "w") as f:
            json.dump(record, f, sort_keys=True, indent=1)
        return started

    def _keptOnChange(self, changed):
        """Names in the run directory a run keeps when the form's ``changed`` engine options start it
        anew (a finished stage they do not affect); () — the default — removes the whole directory."""
        return ()

    def _continuable(self, key, old, new):
        """A run made with ``old`` goes on with ``new`` for the engine option ``key``."""
        if old == new:
            return True
        return (key in self.CONTINUE_OPTIONS and isinstance(old, (int, float)) and isinstance(new, (int, float))
                and new >= 0)

    def createOutputStep(self, signature=None):
        self._registerOutputs(self.SUMMARY_CLASS.load(self.getSummaryFile()))

    def _registerOutputs(self, summary):
        raise NotImplementedError

    # --------------------------- the run directory ---------------------------
    def getRunDir(self, *p):
        """The gmmcore run directory of this protocol (``extra/RUN_DIR``), or a path inside it:
        what a later protocol passes to ``gmmcore ... --from``."""
        return self._getExtraPath(self.RUN_DIR, *p)

    def getSummaryFile(self):
        return self.getRunDir(SUMMARY_NAME)

    def getSummary(self):
        """The run's summary (:attr:`SUMMARY_CLASS`), or None before the engine wrote one."""
        path = self.getSummaryFile()
        return self.SUMMARY_CLASS.load(path) if os.path.exists(path) else None

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
        fscs = self._createSetOfFSCs()
        for fsc in fscObjects(runFscCurves(summary)):
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
    def _validate(self):
        """The protocol's input checks, then the maps that must sit on the particles' grid, then the
        GPU fields; messages name the form's fields."""
        errors = self._validateInputs()
        parts = self._inputParticles()
        if parts is not None:
            for label, volume in self._volumesOnParticleGrid():
                errors += gridErrors(label, volume, parts)
        return errors + self._gpuErrors()

    def _validateInputs(self):
        """The protocol's own checks (subclasses); an empty list when its inputs are usable."""
        return []

    def _inputParticles(self):
        """The particles the run works on (a SetOfParticles), None while not chosen (subclasses)."""
        return None

    def _volumesOnParticleGrid(self):
        """[(form label, Volume)]: the chosen maps that must share the particles' box and pixel size."""
        return []

    def _warnings(self):
        """What the user confirms before the run starts (Scipion asks in the form)."""
        if not self.usesGpu() and not self._deviceOptions().get("dask_scheduler"):
            return ["'Use GPU' is No: gmmcore runs on the CPU, much slower (fine for small tests)."]
        return []

    def _gpuErrors(self):
        """The form's GPU fields: GPU use asked for without GPU ids is an error (as a list)."""
        if self.usesGpu() and not self.getGpuList():
            return ["Give the GPU ids or set 'Use GPU' to No."]
        return []

    def _summary(self):
        summary = self.getSummary()
        if summary is None:
            return ["Not started, or no summary yet."]
        return self._warningLines(summary) + self._summaryLines(summary)

    def _summaryLines(self, summary):
        """What the Summary tab shows of a run (subclasses; the warnings come first)."""
        return self._iterationLines(summary)

    def _warningLines(self, summary):
        """The engine's warnings, and a GPU asked for that the run did not use."""
        warnings = list(getattr(summary, "warnings", None) or [])  # a heterogeneity summary has none
        device = summary.device or ""
        usesCluster = bool((self._deviceOptions().get("dask_scheduler")))
        if self.usesGpu() and not usesCluster and device and "GPU" not in device \
                and not any("GPU" in w for w in warnings):
            warnings.append("a GPU was requested (GPU ids %s) but the run used %s."
                            % (" ".join(map(str, self.getGpuList())) or "-", device))
        return ["Warning: %s" % w for w in warnings]

    @staticmethod
    def _iterationLines(summary):
        """Resolution of the input poses, of every iteration (with pose changes) and the final one."""
        lines = []
        if summary.resolution_initial is not None:
            lines.append("Input poses: %.2f Å (masked FSC 0.143)" % summary.resolution_initial)
        for rec in summary.iterations:
            pc = rec.pose_change
            line = ("Iteration %d: %.2f Å; pose change median %.2f°, %.2f px"
                    % (rec.iteration, rec.resolution, pc.angle_median, pc.shift_median))
            if rec.gmm_cross_fsc:  # each GMM against the other half's map (runs of older versions: absent)
                line += ("; GMMs vs the other half map %.2f / %.2f (the truth would score %.2f)"
                         % (rec.gmm_cross_fsc.get("1", float("nan")), rec.gmm_cross_fsc.get("2", float("nan")),
                            rec.gmm_fsc_ceiling))
            lines.append(line)
        if summary.resolution_final is not None:
            lines.append("Final resolution: %.2f Å" % summary.resolution_final)
        return lines


def gridErrors(label, volume, particles):
    """A map that must sit on the particles' grid (a mask, a start map): same box and pixel size
    (within 1 %, as gmmcore checks); the messages name the form field ``label``."""
    errors = []
    first = particles.getFirstItem()
    box, apix = (first.getXDim() if first is not None else None), particles.getSamplingRate()
    vbox, vapix = volume.getXDim(), volume.getSamplingRate()
    if box and vbox and vbox != box:
        errors.append("%s: box %d differs from the particles' box %d." % (label, vbox, box))
    if apix and vapix and abs(vapix - apix) > 0.01 * apix:
        errors.append("%s: pixel size %.3f Å differs from the particles' %.3f Å." % (label, vapix, apix))
    return errors
