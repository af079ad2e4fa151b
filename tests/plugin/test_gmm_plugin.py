"""Plugin registration and helpers (no engine runs)."""
import os
import sys


def test_plugin_registered_with_protocols_viewers_and_bibtex():
    from pwem import Domain
    plugin = Domain.getPlugin("gmmrefine_scipion")
    assert plugin.Plugin._pathVars == []
    protocols = Domain.getProtocols()
    for name in ("GmmProtImportParticles", "GmmProtRefine", "GmmProtExportParticles", "GmmProtHeterogeneity",
                 "GmmProtConfToPose"):
        assert name in protocols
    assert "GmmRefineViewer" in Domain.getViewers()
    assert "Chen2024" in plugin._bibtex
    assert "10.1038/s41592-023-02082-9" in plugin._bibtex["Chen2024"]["doi"]


def test_protocols_conf_tree():
    from pwem import Domain
    from pyworkflow.gui.project.viewprotocols_extra import ProtocolTreeConfig
    import gmmrefine_scipion
    conf = os.path.join(os.path.dirname(gmmrefine_scipion.__file__), "protocols.conf")
    protocols = ProtocolTreeConfig.load(Domain, conf)
    text = repr({k: str(v) for k, v in protocols.items()})
    found = set()

    def walk(node):
        value = getattr(node, "value", None) or getattr(node, "_value", None)
        if value:
            found.add(str(value))
        for child in getattr(node, "childs", []) or getattr(node, "children", []):
            walk(child)

    for tree in protocols.values():
        walk(tree)
    assert {"GmmProtImportParticles", "GmmProtRefine", "GmmProtExportParticles", "GmmProtHeterogeneity",
            "GmmProtConfToPose"} <= found, (found, text)
    # the Flexibility Hub section (as scipion-em-cryodrgn has one): heterogeneity and conformation to pose
    with open(conf) as f:
        hub = f.read().split('"text": "Flexibility Hub"', 1)[1].split('{"tag": "section"', 1)[0]
    assert '"GmmProtHeterogeneity"' in hub and '"GmmProtConfToPose"' in hub, hub


def test_command_line_and_environment(monkeypatch):
    from gmmrefine_scipion import Plugin
    args = Plugin.getGmmcoreArgs("refine", particles="/a b/p.star", iter=2, cpu=True, gpu=None,
                                 new_split=False, stack_root="/x")
    assert args == "-m gmmcore refine --particles '/a b/p.star' --iter 2 --cpu --stack-root /x"
    assert Plugin.getPython() == os.environ.get("GMMREFINE_PYTHON", sys.executable)
    assert Plugin.getGmmcoreCommand("import", out="d").endswith("-m gmmcore import --out d")
    env = Plugin.getEnviron()
    assert env["TF_CPP_MIN_LOG_LEVEL"]
    assert Plugin.validateInstallation() == []


def test_validate_installation_compares_engine_version(monkeypatch):
    import gmmrefine_scipion
    from gmmrefine_scipion import Plugin
    assert Plugin.getEngineVersion() == gmmrefine_scipion.__version__  # the real `gmmcore --version`
    monkeypatch.setattr(Plugin, "getEngineVersion", classmethod(lambda cls: "0.0.9"))
    errors = Plugin.validateInstallation()
    assert len(errors) == 1 and "0.0.9" in errors[0] and gmmrefine_scipion.__version__ in errors[0], errors
    monkeypatch.setattr(Plugin, "getEngineVersion", classmethod(lambda cls: None))
    assert "gmmcore --version" in Plugin.validateInstallation()[0]


def test_symmetry_names_are_the_engines():
    from gmmrefine_scipion.protocols.protocol_base import validateSymmetry
    for ok in ("C1", "c7", "D2", "T", "O", "I", "I2"):
        assert validateSymmetry(ok) is None, ok
    for bad in ("I1", "I3", "X7", "", "C0"):
        assert validateSymmetry(bad) and "symmetry" in validateSymmetry(bad).lower(), bad


def test_gui_opens_the_demo_project_headless(tmp_path):
    """`make gui`'s command opens a demo project in pyworkflow's project window (on Xvfb)."""
    import shutil
    import subprocess
    import pytest
    if not shutil.which("xvfb-run"):
        pytest.skip("xvfb-run not installed (CI installs Debian's xvfb)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCIPION_", "_GMMREFINE"))}
    out = tmp_path / "demo_out"
    import gmmrefine_scipion
    headless = os.path.join(os.path.dirname(gmmrefine_scipion.__file__), "headless.py")
    make_project = ("import runpy; runpy.run_path(%r)['setup_scipion_env'](%r); "  # env before pyworkflow
                    "from pyworkflow.project import Manager; Manager().createProject('gmmrefine_demo_test')"
                    % (headless, str(out / "scipion")))
    subprocess.run([sys.executable, "-c", make_project], check=True, env=env, cwd=tmp_path, timeout=300,
                   capture_output=True)
    r = subprocess.run(["xvfb-run", "-a", sys.executable, "-m", "gmmrefine_scipion.gui", "--out", str(out),
                        "--close-after", "3"], env=env, cwd=tmp_path, timeout=300, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "GUI started: gmmrefine_demo_test" in r.stdout, r.stdout + r.stderr


def test_protocol_labels_show_the_short_plugin_name():
    from gmmrefine_scipion.protocols import GmmProtRefine
    assert GmmProtRefine.getClassLabel() == "gmmrefine - global refinement"
