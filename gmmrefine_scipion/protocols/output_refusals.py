"""The engine's refusals of its output folder, in the words of Scipion's form.

Every gmmcore verb claims its ``--out`` before it writes (:func:`gmmcore.safewrite.claim_output`,
:meth:`gmmcore.refine.rundir.RunDir.create_or_continue`) and refuses, in one line, a folder that
holds another kind of run, a run made from other input, files that are no run, a folder another
command is writing, or a folder inside a gmmcore output (an input run among them).  Under Scipion
``--out`` is the protocol's own folder (``extra/<run>``), which the user never typed: "use a new
--out" is no advice there.  :func:`formMessage` says what happened and what to do in the form
(the field "Run mode" of the form's header, Execute, Scipion's Copy) or in the project;
:func:`projectFolderError` is the one such refusal ``_validate`` can foresee (the project lies
inside a gmmcore output folder).
"""
import re
from typing import Optional

RUN_MODE = '"Run mode"'  # the label of the form header's Continue / Restart choice (pyworkflow)
RESTART = 'set %s to "Restart" and press Execute: the run starts anew in an emptied folder' % RUN_MODE
MOVE_PROJECT = ("gmmcore never writes a run inside another one or inside its inputs: keep Scipion projects "
                "outside gmmcore output folders (move this project, or set SCIPION_USER_DATA to a folder "
                "outside it, and run the protocol again)")

# the engine's names of what identifies a run -> words ("holds a run with different parameters (...)")
_IDENTITY_WORDS = {"particles_hash": "the particles", "particles": "the particles", "start_fingerprint":
                   "the run it starts from", "source": "the run it starts from", "focus_mask_fingerprint":
                   "the focus mask", "fsc_mask_fingerprint": "the FSC mask", "fit_mask_fingerprint": "the mask of "
                   "the GMM fit", "mask": "the mask", "ref": "the initial volume"}

# a refusal's reason starts after "<path>: " and, where the error names a field, "--out: " (claim_output)
# or "--continue: "; the run directory's own refusals (RunDir) name no field
_START = r"(?:^|: )(?:--(?:out|continue): )?"
_OUT_FIELD = re.compile(r"(?:^|: )--(?:out|continue): ")


def _lock(m, path):
    text = ("the folder of this run (%s) is in use by %s: another gmmcore command is still writing there "
            "(an engine still working after its protocol was stopped, or the same run started twice). Wait for "
            "it to finish or end that process, then press Execute (with %s on \"Continue\" the run goes on "
            "from where it stopped)" % (path, m.group("who"), RUN_MODE))
    if m.group("lock"):
        host = re.search(r" on ([^,]+),", m.group("who"))
        text += "; if it no longer runs on %s, delete %s first" % (host.group(1) if host else "that machine",
                                                                   m.group("lock"))
    return text + "."


def _kind(m, path):
    return ("the folder of this run (%s) holds a `gmmcore %s` run, not one of this protocol: %s."
            % (path, m.group("other"), RESTART))


def _other_kind(m, path):
    return "the folder of this run (%s) holds another kind of gmmcore run: %s." % (path, RESTART)


def _changed(m, path):
    what = m.group("what")
    names = re.match(r"different parameters \((?P<names>[^)]*)\)", what)
    if names:
        words = [_IDENTITY_WORDS.get(n.strip(), n.strip()) for n in names.group("names").split(",")]
        what = ", ".join(dict.fromkeys(words))
    elif "particles' content" in what:
        what = _IDENTITY_WORDS["particles_hash"]
    return ("this run was made from other input than the form's now (%s changed since, e.g. the protocol it "
            "starts from was run again), so it cannot be continued: %s (or Copy this protocol to keep this run "
            "and run the copy)." % (what, RESTART))


def _no_run(m, path):
    return ("the folder of this run (%s) holds files that are not a usable gmmcore run (left by an interrupted "
            "or copied run): %s." % (path, RESTART))


def _inside_input(m, path):
    return "this project lies inside %s, a gmmcore output folder that holds this run's input; %s." % (
        m.group("run"), MOVE_PROJECT)


def _inside_output(m, path):
    return "this project lies inside %s, the output of gmmcore %s; %s." % (m.group("home"), m.group("what"),
                                                                           MOVE_PROJECT)


# (the engine's reason, as gmmcore.safewrite / gmmcore.refine.rundir word it) -> the form's words
_REFUSALS = tuple((re.compile(_START + reason), words) for reason, words in (
    (r"is in use by (?P<who>.+?)(?: — if it no longer runs there, delete (?P<lock>\S+))?; wait", _lock),
    (r"holds a `gmmcore (?P<other>[^`]+)` run \(kind '[^']*'\)", _kind),
    (r"holds another kind of gmmcore run", _other_kind),
    (r"holds a run with (?P<what>.+?); use a new --out", _changed),
    (r"(?:is not empty and holds no gmmcore run|params\.json is unreadable|nothing to continue)", _no_run),
    (r"(?:is|lies inside) the input run (?P<run>.+?); choose", _inside_input),
    (r"lies inside the gmmcore (?P<what>.+?) output (?P<home>.+?); choose", _inside_output),
))


def formMessage(reason: str) -> Optional[str]:
    """The form's words for the engine's one-line error ``reason`` (without ``gmmcore <verb>:
    error:``) when it refuses its output folder; None for any other error (shown as it is)."""
    text = reason.strip()
    for pattern, words in _REFUSALS:
        m = pattern.search(text)
        if m:
            message = words(m, text[:m.start()] or "?")
            break
    else:  # another refusal of the output folder: the engine's reason, without the command-line field
        field = _OUT_FIELD.search(text)
        if field is None:
            return None
        message = "the folder of this run (%s) cannot be used: %s." % (
            text[:field.start()] or "?", text[field.end():].split("; choose")[0].rstrip("."))
    return message[0].upper() + message[1:]


def projectFolderError(workingDir: str) -> Optional[str]:
    """The refusal every run of this protocol would meet, foreseen: its folder ``workingDir`` lies
    inside a gmmcore output folder (None when it does not)."""
    from gmmcore.safewrite import KIND_VERBS, enclosing_run, folder_kind
    home = enclosing_run(workingDir)
    if home is None:
        return None
    return ("This project lies inside %s, the output of gmmcore %s; %s."
            % (home, KIND_VERBS.get(folder_kind(home), "run"), MOVE_PROJECT))
