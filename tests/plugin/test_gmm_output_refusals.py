"""The engine's refusals of its output folder reach the user in the form's words: a global
refinement launched in a project (the real protocol, the real engine, which refuses before it
computes anything: seconds) on a run folder in use by another command, holding another kind of
run, or inside a gmmcore output folder fails with a message that names the form's "Run mode" (or
the project's folder) and says what to do — no ``--out``, no command line, no traceback — and
``validate`` foresees the last one.  The other refusals are made by the engine's own code and
their wording checked."""
import json
import os
import socket
import time

from pyworkflow.protocol.constants import MODE_RESTART
from pyworkflow.tests import BaseTest, setupTestProject

import gmm_fakes
from gmmrefine_scipion.protocols import GmmProtImportParticles, GmmProtRefine
from gmmrefine_scipion.protocols.output_refusals import formMessage


def assertFormWords(test, message):
    """No command-line words in a message the form shows."""
    for raw in ("--out", "--continue", "gmmcore refine:", "error:", "Traceback", "non-zero exit status",
                "choose another output"):
        test.assertNotIn(raw, message)


class TestGmmOutputRefusals(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        star, _ = gmm_fakes.write_star_stack(cls.getOutputPath("fake"), n=24, box=16, apix=2.0)
        cls.imp = cls.newProtocol(GmmProtImportParticles, objLabel="gmm import (fake)", importFrom=0, starFile=star)
        cls.launchProtocol(cls.imp)

    def _refine(self, label):
        refine = self.newProtocol(GmmProtRefine, objLabel=label, numberOfIterations=1, fewParticles=True,
                                  useGpu=False, numberOfThreads=1)
        refine.inputParticles.set(self.imp)
        refine.inputParticles.setExtended("outputParticles")
        self.proj.saveProtocol(refine)
        os.makedirs(refine.getRunDir(), exist_ok=True)
        return refine

    def _failed(self, prot):
        self.proj.launchProtocol(prot, wait=True)
        self.assertTrue(prot.isFailed(), prot.getStatus())
        message = prot.getErrorMessage()
        assertFormWords(self, message)
        return message

    def test_run_folder_in_use_by_another_command(self):
        refine = self._refine("gmm refine, folder in use")
        lock = refine.getRunDir(".gmmcore.lock")
        with open(lock, "w") as f:  # this test's process: alive, and not the engine's
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "verb": "refine",
                       "since": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
        message = self._failed(refine)
        self.assertIn("is in use by `gmmcore refine` (PID %d on %s" % (os.getpid(), socket.gethostname()), message)
        self.assertIn("Wait for it to finish or end that process, then press Execute", message)
        self.assertIn('with "Run mode" on "Continue" the run goes on', message)

    def test_run_folder_holds_another_kind_of_run(self):
        refine = self._refine("gmm refine, another run's folder")
        with open(refine.getRunDir("params.json"), "w") as f:
            json.dump({"kind": "heterogeneity"}, f)
        message = self._failed(refine)
        self.assertIn("holds a `gmmcore heterogeneity` run, not one of this protocol", message)
        self.assertIn('set "Run mode" to "Restart" and press Execute', message)
        # what the message says to do is what the form does: Restart empties the folder and the engine
        # takes it (it refines; on these noise images it may stop later, at its first GMM fit)
        refine.runMode.set(MODE_RESTART)
        self.proj.launchProtocol(refine, wait=True)
        self.assertNotIn("folder of this run", refine.getErrorMessage() or "")
        with open(refine.getLogPaths()[0]) as f:
            self.assertIn("refine: 24 particles (half 1: 12, half 2: 12)", f.read())

    def test_project_inside_a_gmmcore_output_folder(self):
        refine = self._refine("gmm refine, project inside a run")
        marker = os.path.join(self.proj.getPath(), "summary.json")
        with open(marker, "w") as f:  # the project's folder now holds a gmmcore global run
            json.dump({"kind": "global"}, f)
        try:
            errors = refine.validate()
            self.assertEqual(len(errors), 1, errors)
            self.assertIn("This project lies inside %s, the output of gmmcore refine" % os.path.realpath(
                self.proj.getPath()), errors[0])
            self.assertIn("SCIPION_USER_DATA", errors[0])
            assertFormWords(self, errors[0])
            message = self._failed(refine)  # launched anyway (as a script would): the same advice
            self.assertIn("This project lies inside %s" % os.path.realpath(self.proj.getPath()), message)
            self.assertIn("keep Scipion projects outside gmmcore output folders", message)
        finally:
            os.remove(marker)
        self.assertEqual(refine.validate(), [])

    def _refusal(self, call, *args, **kwargs):
        """The one-line reason of the engine's InputError (as the plugin reads it, after ``error:``)."""
        from gmmcore.errors import InputError
        try:
            call(*args, **kwargs)
        except InputError as exc:
            return exc.render()
        self.fail("not refused: %s" % call.__name__)

    def _runFolder(self, name, params=None, files=()):
        folder = self.getOutputPath(name)
        os.makedirs(folder)
        if params is not None:
            with open(os.path.join(folder, "params.json"), "w") as f:
                json.dump(params, f)
        for fn in files:
            open(os.path.join(folder, fn), "w").close()
        return folder

    def test_engine_refusals_in_form_words(self):
        """The refusals the project tests above do not stage, made by the engine's own code (its run
        directory and output claim) and put in the form's words."""
        from gmmcore.refine.rundir import RunDir
        from gmmcore.safewrite import check_output_path, claim_output
        run = self._runFolder("changed", {"kind": "focused", "start_fingerprint": "a", "focus_mask_fingerprint": "m"})
        changed = formMessage(self._refusal(RunDir.create_or_continue, run, {
            "start_fingerprint": "b", "focus_mask_fingerprint": "n"}, ("start_fingerprint", "focus_mask_fingerprint"),
            kind="focused"))
        self.assertIn("made from other input than the form's now (the run it starts from, the focus mask changed",
                      changed)
        self.assertIn('set "Run mode" to "Restart"', changed)
        run = self._runFolder("content", {"kind": "global", "particles_hash": "a"})
        content = formMessage(self._refusal(RunDir.create_or_continue, run, {"particles_hash": "b"},
                                            ("particles_hash",), kind="global"))
        self.assertIn("(the particles changed since", content)
        run = self._runFolder("kind", {"kind": "global"})
        kind = formMessage(self._refusal(RunDir.create_or_continue, run, {}, (), kind="focused"))
        self.assertIn("holds a `gmmcore refine` run, not one of this protocol", kind)
        run = self._runFolder("stray", files=("notes.txt",))
        stray = formMessage(self._refusal(RunDir.create_or_continue, run, {}, (), kind="global"))
        self.assertIn("holds files that are not a usable gmmcore run", stray)
        run = self._runFolder("remote")
        with open(os.path.join(run, ".gmmcore.lock"), "w") as f:
            json.dump({"pid": 7, "host": "node3-elsewhere", "verb": "refine-patches",
                       "since": "2026-01-02 10:00:00"}, f)
        remote = formMessage(self._refusal(claim_output, run, "patches", "refine-patches"))
        self.assertIn("is in use by `gmmcore refine-patches` (PID 7 on node3-elsewhere", remote)
        self.assertIn("if it no longer runs on node3-elsewhere, delete %s first" % os.path.join(run, ".gmmcore.lock"),
                      remote)
        notFolder = self.getOutputPath("a_file")
        open(notFolder, "w").close()
        other = formMessage(self._refusal(check_output_path, notFolder, "--out"))
        self.assertEqual(other, "The folder of this run (%s) cannot be used: exists and is a file, not a folder."
                         % notFolder)
        for message in (changed, content, kind, stray, remote, other):
            self.assertTrue(message[0].isupper(), message)
            assertFormWords(self, message)
        # not a refusal of the output folder: shown as the engine words it
        self.assertIsNone(formMessage("/p/a.star: rlnRandomSubset: 3 / 4 particles in half sets 1 / 2"))
