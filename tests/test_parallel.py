"""Runs on several worker processes give the single-process result (``gmmcore.parallel``).

On ``sim_small`` (400 particles, box 48; 1 iteration at a fixed 12 Å target, chunks of 25
particles → 16 alignment chunks, 16 reconstruction parts):

* ``test_local_cluster_same_result``: a ``dask.distributed.LocalCluster`` of 2 worker processes
  (``--dask-scheduler``) gives the single-process poses (≤ 1e-5°, 1e-5 Å) and half maps
  (CC > 0.99999); both workers did alignment chunks.
* ``test_worker_killed_mid_chunk``: one worker is killed (SIGKILL) while it aligns a chunk; the
  run finishes with the same result, and no finished chunk was written twice.  (This test and the
  next continue a run directory holding the reference's iteration 0 and GMMs.)
* ``test_scheduler_lost_rerun_continues``: the cluster disappears during alignment → one-line error
  (exit 3); re-running the command continues from the saved chunks to the same result.
* ``test_multi_gpu_simulated``: ``--gpu 0,1`` on a machine without GPUs: one worker process per
  "GPU" (each sees only CUDA_VISIBLE_DEVICES=its id and falls back to its CPU); same result; the
  log names the GPU worker of every chunk.
* Cheap checks: batch job scripts for SLURM / PBS / SGE, contradictory flags, a batch job's worker
  picks its own GPU, map_reduce adds in a fixed order.

The single-process reference and the four worker runs take ≈ 3 min on 2 idle cores (8 min with
the machine shared at load 10).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

pytest.importorskip("distributed")

from gmmcore.cli import main  # noqa: E402
from gmmcore.geometry import angular_distance  # noqa: E402

ARGS = ["--iter", "1", "--maxres", "12", "--steps", "3", "--chunk", "25"]


def refine(star, out, *extra) -> int:
    return main(["refine", "--particles", str(star), "--out", str(out), *ARGS, *[str(a) for a in extra]])


@pytest.fixture(scope="module")
def reference(sim_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel_ref") / "run"
    assert refine(sim_small["perturbed_star"], out, "--cpu") == 0
    return out


@pytest.fixture(scope="module")
def local_cluster():
    from dask.distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                           memory_limit=0)
    yield cluster
    cluster.close()


def assert_same_result(ref: Path, run: Path) -> None:
    with np.load(ref / "iter001" / "poses.npz") as a, np.load(run / "iter001" / "poses.npz") as b:
        dang = angular_distance(a["rotation"], b["rotation"])
        dsh = np.abs(a["origin"] - b["origin"])
        assert a["rotation"].shape == b["rotation"].shape == (400, 3, 3)
    # (angular_distance of two identical rotations is ~3e-6° from arccos rounding)
    assert dang.max() <= 1e-5 and dsh.max() <= 1e-5, (dang.max(), dsh.max())
    for it in ("iter000", "iter001"):
        for h in (1, 2):
            m1, m2 = mrcfile.read(ref / it / f"half{h}.mrc"), mrcfile.read(run / it / f"half{h}.mrc")
            cc = np.corrcoef(m1.ravel().astype(np.float64), m2.ravel().astype(np.float64))[0, 1]
            assert cc > 0.99999, (it, h, cc)
    with np.load(ref / "iter001" / "gmm_half2.gmm.npz") as a, np.load(run / "iter001" / "gmm_half2.gmm.npz") as b:
        np.testing.assert_allclose(a["centers"], b["centers"], atol=1e-4)


def seeded_run(reference: Path, out: Path) -> Path:
    """A run directory holding the reference's iteration 0 and its iteration-1 GMMs, as a killed run
    would: the command continues from them (the resilience tests then exercise the alignment and
    reconstruction units without refitting the GMMs)."""
    out.mkdir(parents=True)
    for name in ("params.json", "mask_auto.mrc"):
        shutil.copy(reference / name, out / name)
    shutil.copytree(reference / "iter000", out / "iter000")
    (out / "iter001").mkdir()
    for f in (reference / "iter001").glob("gmm_half*"):
        shutil.copy(f, out / "iter001" / f.name)
    return out


def chunk_workers(run: Path) -> dict:
    """{chunk label: worker name} from the run's log lines of finished units."""
    text = (run / "run.log").read_text()
    return dict(re.findall(r"(iter 1 half \d(?: alignment)? chunk \d+) \(\d+ ptcl\): worker (\S+)", text))


def test_local_cluster_same_result(sim_small, reference, local_cluster, tmp_path):
    out = tmp_path / "run"
    assert refine(sim_small["perturbed_star"], out, "--cpu", "--dask-scheduler", local_cluster.scheduler_address) == 0
    assert_same_result(reference, out)
    done = chunk_workers(out)
    assert len(done) == 16 and len(set(done.values())) == 2, done  # every chunk once, both workers used


class Killer(threading.Thread):
    """Kills (SIGKILL) the first worker seen executing an alignment chunk; meanwhile records when each
    chunk checkpoint file first appears (inode, mtime) to show none is written twice."""

    def __init__(self, address: str, folder: Path):
        super().__init__(daemon=True)
        self.address, self.folder = address, folder
        self.killed = None
        self.first_seen = {}
        self.stop = threading.Event()

    def _scan(self):
        for f in self.folder.glob("iter001/align_half*_chunk*.npz"):
            st = f.stat()
            self.first_seen.setdefault(f.name, (st.st_ino, st.st_mtime_ns))

    def run(self):
        from dask.distributed import Client

        def executing(dask_worker):
            return [str(ts.key) for ts in dask_worker.state.executing]

        with Client(self.address, timeout=30) as client:
            while not self.stop.is_set():
                self._scan()
                if self.killed is None:
                    for addr, keys in client.run(executing).items():
                        if any(k.startswith("align_chunk-") for k in keys):
                            time.sleep(0.5)  # well inside the chunk (its first one also compiles)
                            pid = client.run(os.getpid, workers=[addr])[addr]
                            os.kill(pid, signal.SIGKILL)
                            self.killed = (addr, keys)
                            break
                time.sleep(0.2)
            self._scan()


def test_worker_killed_mid_chunk(sim_small, reference, local_cluster, tmp_path):
    out = seeded_run(reference, tmp_path / "run")
    killer = Killer(local_cluster.scheduler_address, out)
    killer.start()
    try:
        assert refine(sim_small["perturbed_star"], out, "--cpu", "--dask-scheduler",
                      local_cluster.scheduler_address) == 0
    finally:
        killer.stop.set()
        killer.join(30)
    assert killer.killed is not None, "no worker was killed during alignment"
    assert_same_result(reference, out)
    assert len(chunk_workers(out)) == 16
    # no finished chunk was redone: each checkpoint is the file first written
    files = sorted((out / "iter001").glob("align_half*_chunk*.npz"))
    assert len(files) == 16
    for f in files:
        st = f.stat()
        assert killer.first_seen.get(f.name) == (st.st_ino, st.st_mtime_ns), f.name


def test_scheduler_lost_rerun_continues(sim_small, reference, tmp_path, capsys):
    """The whole Dask cluster disappears during alignment: the command stops with one line (exit 3);
    re-running it (here in-process) continues from the chunks already saved and ends with the same
    result."""
    import dask
    from dask.distributed import LocalCluster

    out = seeded_run(reference, tmp_path / "run")
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit=0)
    closed = {}

    def close_when_chunks_saved():
        deadline = time.time() + 600
        while time.time() < deadline and len(list(out.glob("iter001/align_half*_chunk*.npz"))) < 2:
            time.sleep(0.1)
        closed["saved"] = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns)
                           for f in out.glob("iter001/align_half*_chunk*.npz")}
        cluster.close()

    t = threading.Thread(target=close_when_chunks_saved, daemon=True)
    t.start()
    with dask.config.set({"distributed.comm.timeouts.connect": "5s"}):
        rc = refine(sim_small["perturbed_star"], out, "--cpu", "--dask-scheduler", cluster.scheduler_address)
    t.join(60)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and "re-run the same command" in err[-1], (rc, err[-3:])
    saved = closed["saved"]
    assert 2 <= len(saved) < 16 and not (out / "iter001" / "report.json").exists()

    assert refine(sim_small["perturbed_star"], out, "--cpu") == 0
    assert_same_result(reference, out)
    for name, ident in saved.items():  # the chunks done before the loss were reused, not redone
        f = out / "iter001" / name
        assert (f.stat().st_ino, f.stat().st_mtime_ns) == ident, name


def test_multi_gpu_simulated(sim_small, reference, tmp_path):
    out = tmp_path / "run"
    assert refine(sim_small["perturbed_star"], out, "--gpu", "0,1") == 0
    assert_same_result(reference, out)
    done = chunk_workers(out)
    assert len(done) == 16 and set(done.values()) == {"gpu0", "gpu1"}, done
    log = (out / "run.log").read_text()
    assert "one worker per GPU (gpu0, gpu1)" in log
    for g in (0, 1):  # each worker saw only its own device
        assert re.search(rf"chunk \d+ \(\d+ ptcl\): worker gpu{g} \(.*CUDA_VISIBLE_DEVICES={g}\)", log), g


# ------------------------------------------------------------------------------------------------
# cheap checks


@pytest.mark.parametrize("kind,expect", [
    ("slurm", ["#SBATCH -p gpu", "#SBATCH --gres=gpu:2", "#SBATCH -t 12:00:00", "#SBATCH --cpus-per-task=8",
               "#SBATCH --account=abc"]),
    ("pbs", ["#PBS -q gpu", "ngpus=2", "walltime=12:00:00", "ncpus=8"]),
    ("sge", ["#$ -q gpu", "#$ -l gpu=2", "h_rt=12:00:00"]),
])
def test_batch_job_script(kind, expect, tmp_path):
    from gmmcore.parallel.clusters import ExecutionOptions, jobqueue_cluster

    o = ExecutionOptions(cluster=kind, workers=3, worker_gpus=2, worker_cores=4, queue="gpu", walltime="12:00:00",
                         job_options=["--account=abc"] if kind == "slurm" else [],
                         worker_setup=["module load cuda/12"], log_directory=str(tmp_path))
    cluster = jobqueue_cluster(o)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in expect + ["export GMMCORE_GPUS_PER_JOB=2", "module load cuda/12", sys.executable,
                          "--nworkers 2", "--nthreads 1"]:
        assert line in script, (line, script)


def test_job_worker_takes_its_own_gpu(monkeypatch):
    from gmmcore.parallel import worker

    seen = {}

    class FakeBackend:
        name = "fake"

        def describe_devices(self, gpu=None, cpu_only=False):
            seen["gpu"], seen["cpu_only"] = gpu, cpu_only
            return f"GPU {gpu}"

    monkeypatch.setattr("gmmcore.backend.get_backend", lambda name="tf": FakeBackend())
    monkeypatch.setattr(worker, "_DEVICE", None)
    monkeypatch.setenv(worker.GPUS_PER_JOB_ENV, "4")
    monkeypatch.setenv(worker.WORKER_NAME_ENV, "SLURMCluster-7-2")
    assert worker.ensure_device(worker.WorkerSetup("fake")) .startswith("GPU [2]")
    assert seen == {"gpu": [2], "cpu_only": False}
    monkeypatch.setattr(worker, "_DEVICE", None)


@pytest.mark.parametrize("argv,field", [
    (["--cluster", "slurm"], "--workers"),
    (["--dask-scheduler", "tcp://127.0.0.1:1", "--workers", "2"], "--workers"),
    (["--gpu", "0,1", "--cpu"], "--gpu"),
    (["--gpu", "0,1", "--cluster", "slurm", "--workers", "2"], "--gpu"),
    (["--gpu", "0,0"], "--gpu"),
    (["--gpu", "0", "--workers", "2"], "--workers"),
])
def test_contradictory_flags(sim_small, tmp_path, capsys, argv, field):
    out = tmp_path / "run"
    assert refine(sim_small["perturbed_star"], out, *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0], err
    assert not (out / "iter000").exists()


def test_map_reduce_fixed_order(local_cluster):
    """Float sums are combined in the same tree whatever order the parts finish in."""
    from operator import add

    from dask.distributed import Client

    from gmmcore.parallel import DaskExecutor, LocalExecutor, Unit

    vals = [1e16, 1.0, -1e16, 1.0, 3.0]
    groups = [[Unit(f"part {i}", float, (v,), uses_device=False) for i, v in enumerate(vals)]]
    with DaskExecutor(Client(local_cluster.scheduler_address)) as ex:
        got = {ex.map_reduce(groups, add)[0] for _ in range(3)}
    assert got == {((1e16 + 1.0) + (-1e16 + 1.0)) + 3.0}
    assert LocalExecutor().map_reduce(groups, add) == [(((1e16 + 1.0) - 1e16) + 1.0) + 3.0]
