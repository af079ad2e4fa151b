"""The engine's refusals of its output folder reach the user in the form's words: a global
refinement launched in a project (the real protocol, the real engine, which refuses before it
computes anything: seconds) on a run folder in use by another command, holding another kind of
run, or inside a gmmcore output folder fails with a message that names the form's "Run mode" (or
the project's folder) and says what to do — no ``--out``, no command line, no traceback — and
``validate`` foresees the last one.  The wording of the other refusals is checked on the engine's
own lines."""
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

    def test_engine_lines_in_form_words(self):
        """The refusals the project tests above cannot stage cheaply, on the engine's own lines."""
        run = "/p/Runs/000012_GmmProtFocusedRefine/extra/focused"
        changed = formMessage("%s: --out: holds a run with different parameters (start_fingerprint, "
                              "focus_mask_fingerprint); use a new --out, or the same parameters and input to "
                              "continue" % run)
        self.assertIn("made from other input than the form's now (the run it starts from, the focus mask changed",
                      changed)
        self.assertIn('set "Run mode" to "Restart"', changed)
        content = formMessage("%s: --out: holds a run with the particles' content changed; use a new --out, or the "
                              "same parameters and input to continue" % run)
        self.assertIn("(the particles changed since", content)
        remote = formMessage("%s: --out: is in use by `gmmcore refine-patches` (PID 7 on node3, since 2026-01-02 "
                             "10:00:00) — if it no longer runs there, delete %s/.gmmcore.lock; wait for it to "
                             "finish, or choose another output" % (run, run))
        self.assertIn("if it no longer runs on node3, delete %s/.gmmcore.lock first" % run, remote)
        empty = formMessage("%s: --out: is not empty and holds no gmmcore run (no params.json); use a new or empty "
                            "--out" % run)
        self.assertIn("holds files that are not a usable gmmcore run", empty)
        other = formMessage("%s: --out: cannot write: no write permission in /p/Runs" % run)
        self.assertEqual(other, "The folder of this run (%s) cannot be used: cannot write: no write permission in "
                                "/p/Runs." % run)
        for message in (changed, content, remote, empty, other):
            assertFormWords(self, message)
        # not an output refusal: shown as the engine words it
        self.assertIsNone(formMessage("/p/a.star: rlnRandomSubset: 3 / 4 particles in half sets 1 / 2"))
