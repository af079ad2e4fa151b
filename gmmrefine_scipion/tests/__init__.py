"""Scipion tests of the gmmrefine plugin (``scipion3 tests gmmrefine_scipion.tests.<module>``).

The test data are the Scipion DataSet ``gmmrefine`` (folder ``$SCIPION_TESTS/gmmrefine``): not
downloaded but simulated on first use by the engine's own simulator (``gmmcore simulate``, bundled
adenylate-kinase model) run with the plugin's engine interpreter (``Plugin.getProgram()``), one
sub-folder per simulation of :data:`SIMULATIONS` — made when ``getTestData(name)`` finds its
``simulation.json`` (the simulator's last file) missing.  Run with ``SCIPION_TEST_NOSYNC=1``
(pytest's set-up does) so that pyworkflow does not ask Scipion's data server for it first.
pytest-only tests of the plugin live in ``tests/plugin/`` of the checkout.
"""
import os
import subprocess

from pyworkflow.tests import BaseTest, DataSet

#: DataSet name and folder under SCIPION_TESTS.
DATASET = "gmmrefine"
#: The simulations (``gmmcore simulate`` options), each in its own sub-folder of the DataSet (the
#: simulator refuses to write inside another simulation's folder), all small and fast:
#: ``rigid`` one adenylate kinase, poses perturbed by 4° / 1 px (global refinement, import, export);
#: ``domain`` two side by side, the second swinging ±15° (focused, patches, symmetry expansion);
#: ``lid`` one whose lid moves ±20°, box 32 (heterogeneity, conformation to pose).
SIMULATIONS = {
    "rigid": dict(n=400, box=48, apix=2.0, snr=1.0, perturb_angle=4.0, perturb_shift=1.0, seed=3),
    "domain": dict(n=300, box=48, apix=2.2, snr=2.0, perturb_angle=2.0, perturb_shift=0.5, seed=4, copies="C2",
                   domain="copy:2", domain_angle=15),
    "lid": dict(n=300, box=32, apix=3.0, snr=2.0, domain="lid", domain_angle=20, perturb_angle=2.0,
                perturb_shift=0.5, seed=5),
}
#: The ``rigid`` simulation's options (the short chain's numbers).
SIMULATION = SIMULATIONS["rigid"]
#: What a simulation folder holds (``gmmcore simulate``'s file names), by DataSet key suffix.
_FILES = {"particles": "particles_perturbed.star",  # poses perturbed, half sets
          "truth": "particles_true.star",           # the true poses
          "stack": "particles.mrcs",                # images (CTF applied, not phase flipped)
          "map": "true_map.mrc",                    # the map of the model (unmoved)
          "json": "simulation.json"}                # written last: the simulation is complete
_DOMAIN_FILES = {"mask": "domain_mask.mrc"}         # the moving domain over its range of motion


def _files():
    """DataSet keys: ``particles``, ``truth``, ... of ``rigid``; ``<name>_particles``, ... of the others."""
    files = {}
    for name, options in SIMULATIONS.items():
        prefix = "" if name == "rigid" else name + "_"
        kinds = dict(_FILES, **(_DOMAIN_FILES if options.get("domain") else {}))
        files.update({prefix + key: os.path.join(name, fn) for key, fn in kinds.items()})
    return files


DataSet(name=DATASET, folder=DATASET, files=_files())


def runGmmcore(verb: str, **options) -> None:
    """``gmmcore <verb> ...`` in the plugin's engine environment (what the protocols run), quietly."""
    from gmmrefine_scipion import Plugin
    subprocess.run(Plugin.getGmmcoreCommand(verb, **options), shell=True, check=True, env=Plugin.getEnviron(),
                   stdout=subprocess.DEVNULL)


def getTestData(*names: str) -> DataSet:
    """The ``gmmrefine`` DataSet, after simulating those of ``names`` (default ``rigid``) whose
    folder lacks a complete simulation."""
    import fcntl
    dataset = DataSet.getDataSet(DATASET)
    os.makedirs(dataset.getPath(), exist_ok=True)
    with open(os.path.join(dataset.getPath(), ".simulating.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # test processes side by side (pytest -n) wait for one simulation
        for name in names or ("rigid",):
            marker = dataset.getFile(os.path.join(name, _FILES["json"]))
            if not os.path.exists(marker):
                runGmmcore("simulate", model="builtin:adk-closed", out=os.path.dirname(marker), **SIMULATIONS[name])
    return dataset


def declaredOutputs(prot) -> dict:
    """{name: class} of the outputs a protocol declares (``_possibleOutputs``, a dict, or its
    ``getPossibleOutputs()``: an Enum or (name, class) pairs, as pyworkflow reads them)."""
    declared = prot.getPossibleOutputs() or {}
    if isinstance(declared, dict):
        return dict(declared)
    return {member.name: member.value for member in declared}


def undeclaredOutputs(prot) -> list:
    """What a protocol of this plugin registered but does not declare (or declares with another
    class): one line each; empty for other plugins' protocols."""
    if not type(prot).__module__.startswith("gmmrefine_scipion."):
        return []
    declared = declaredOutputs(prot)
    problems = []
    for name, obj in prot.iterOutputAttributes():
        if name not in declared:
            problems.append("%s registered %s, not among its possible outputs" % (type(prot).__name__, name))
        elif not isinstance(obj, declared[name]):
            problems.append("%s registered %s as %s, declared %s" % (type(prot).__name__, name, type(obj).__name__,
                                                                     declared[name].__name__))
    return problems


class GmmBaseTest(BaseTest):
    """``BaseTest`` whose ``launchProtocol`` also checks that a finished protocol of this plugin
    registered only the outputs it declares (what Scipion offers downstream before it has run)."""

    @classmethod
    def launchProtocol(cls, prot, **kwargs):
        prot = super().launchProtocol(prot, **kwargs)
        problems = undeclaredOutputs(prot) if prot.isFinished() else []
        if problems:
            raise AssertionError("; ".join(problems))
        return prot
