"""The import form checks the stacks before it runs: a .cs whose stacks are not where the engine
looks is refused at validation, naming the missing file, the folders searched and the form field
("Particle stacks folder") to set — not a command-line flag.  No engine run (seconds)."""
import os
import tempfile
from pathlib import Path

import numpy as np

from pyworkflow.tests import BaseTest, setupTestProject

from gmmrefine_scipion.protocols import GmmProtImportParticles
from gmmrefine_scipion.protocols.protocol_import import FORM_FIELDS


def cryosparc_project(root):
    """proj/J12/extract/stack{0,1}.mrcs, and a .cs copied out of the project (blob/path relative to it)."""
    from tests.helpers import cs_records, save_cs
    from tests.helpers import random_particles, write_stacks

    P = random_particles(n=6, seed=5, n_stack=2)
    P["half"] = np.arange(6) % 2 + 1
    ext = os.path.join(root, "proj", "J12", "extract")
    os.makedirs(ext)
    write_stacks(Path(ext), P)
    os.makedirs(os.path.join(root, "downloads"))
    return save_cs(os.path.join(root, "downloads", "J20_particles.cs"), cs_records(P))


class TestGmmImportForm(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.root = tempfile.mkdtemp(dir=os.environ["SCIPION_TESTS"])
        cls.cs = cryosparc_project(cls.root)

    def test_cs_stacks_validated_before_running(self):
        prot = self.newProtocol(GmmProtImportParticles, importFrom=1, csFile=self.cs)
        errors = prot.validate()
        self.assertEqual(len(errors), 1, errors)
        msg = errors[0]
        self.assertIn("J12/extract/stack0.mrcs", msg)
        self.assertIn(os.path.dirname(os.path.realpath(self.cs)), msg)  # the folders searched
        self.assertTrue(msg.endswith('set "%s" in the form' % FORM_FIELDS["--stack-root"]), msg)
        self.assertNotIn("use --stack-root", msg)

        prot.stackRoot.set(os.path.join(self.root, "proj"))
        self.assertEqual(prot.validate(), [])

    def test_missing_voltage_names_the_form_field(self):
        from tests.helpers import save_cs
        rec = np.load(self.cs)
        names = [n for n in rec.dtype.names if n != "ctf/accel_kv"]
        cs = save_cs(os.path.join(self.root, "downloads", "no_kv.cs"), rec[names].copy())
        prot = self.newProtocol(GmmProtImportParticles, importFrom=1, csFile=cs,
                                stackRoot=os.path.join(self.root, "proj"))
        errors = prot.validate()
        self.assertTrue(any("ctf/accel_kv" in e and 'set "Voltage (kV)" in the form' in e for e in errors), errors)
        prot.voltage.set(300.0)
        self.assertEqual(prot.validate(), [])
