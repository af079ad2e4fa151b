"""Making or joining the Dask cluster a run uses, from :class:`ExecutionOptions`.

* local GPUs (``gpus=[0, 1, 2, 3]``): one worker process per GPU on this node, each started with
  ``CUDA_VISIBLE_DEVICES`` = that GPU (ids count the GPUs this process sees: under a batch system
  that already set ``CUDA_VISIBLE_DEVICES=4,5``, ``--gpu 0,1`` means physical 4 and 5), one unit
  at a time per worker;
* local CPU workers (``workers=N``): N worker processes, one unit at a time each;
* a running cluster (``scheduler="tcp://host:8786"``): join it; its workers must see the same
  file system paths (particles, run directory) and have gmmcore installed;
* a batch system (``cluster="slurm" | "pbs" | "sge"``): ``workers`` jobs through dask-jobqueue,
  each with ``worker_gpus`` GPUs (and as many worker processes), ``worker_cores`` cores per GPU,
  ``worker_memory``, ``queue``, ``walltime``; ``job_options`` are extra scheduler directives
  (e.g. ``--account=abc``) and ``worker_setup`` shell lines run before the worker (e.g.
  ``module load cuda``).  Job logs go to ``log_directory``.

All clusters run the workers with the Python of this process unless ``python`` is given.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

from .executor import DaskExecutor, LocalExecutor, local_executor
from .worker import GPUS_PER_JOB_ENV, WORKER_NAME_ENV, WorkerSetup

CLUSTERS = ("slurm", "pbs", "sge")


@dataclass
class ExecutionOptions:
    """Where a run's units execute (see the module notes).  All None/empty: in this process."""

    gpus: Optional[List[int]] = None  # local: one worker per listed GPU when more than one
    cpu: bool = False
    workers: Optional[int] = None  # local CPU worker processes, or batch jobs with ``cluster``
    scheduler: Optional[str] = None  # address of a running Dask scheduler
    cluster: Optional[str] = None  # slurm | pbs | sge
    worker_gpus: int = 1  # GPUs (= worker processes) per batch job
    worker_cores: int = 4  # CPU cores per worker process in a batch job
    worker_memory: str = "32GB"  # memory per worker process in a batch job
    queue: Optional[str] = None
    walltime: str = "24:00:00"
    job_options: List[str] = field(default_factory=list)
    worker_setup: List[str] = field(default_factory=list)
    python: Optional[str] = None
    log_directory: Optional[str] = None
    backend: str = "tf"

    @property
    def distributed(self) -> bool:
        return bool(self.scheduler or self.cluster or (self.gpus and len(self.gpus) > 1) or
                    (self.workers and self.workers > 0))

    def check(self) -> None:
        """Contradictory options → InputError naming the flag."""
        from ..errors import InputError

        if self.cluster and self.cluster not in CLUSTERS:
            raise InputError(f"unknown cluster type {self.cluster!r} (choose from {', '.join(CLUSTERS)})",
                             field="--cluster")
        if self.scheduler and self.cluster:
            raise InputError("give either --dask-scheduler (a running cluster) or --cluster (start one)",
                             field="--cluster")
        if self.scheduler and self.workers:
            raise InputError("--workers starts workers; a running --dask-scheduler has its own", field="--workers")
        if self.cluster and not self.workers:
            raise InputError("--cluster needs --workers N (the number of batch jobs)", field="--workers")
        if self.workers is not None and self.workers < 1:
            raise InputError("must be ≥ 1", field="--workers")
        if self.worker_gpus < 0 or self.worker_cores < 1:
            raise InputError("--worker-gpus must be ≥ 0 and --worker-cores ≥ 1", field="--worker-gpus")
        multi = self.gpus is not None and len(self.gpus) > 1
        if multi and (self.scheduler or self.cluster):
            raise InputError("several --gpu ids start local workers; on a cluster the batch system gives each "
                             "worker its GPUs (use --worker-gpus)", field="--gpu")
        if multi and self.cpu:
            raise InputError("--cpu and several --gpu ids contradict each other", field="--gpu")
        if self.gpus is not None and len(self.gpus) == 1 and self.workers and not self.cluster:
            raise InputError("--workers alone starts CPU worker processes; for GPU workers list the GPUs "
                             "(--gpu 0,1,...: one worker each)", field="--workers")
        if multi and self.workers and self.workers != len(self.gpus):
            raise InputError(f"--gpu lists {len(self.gpus)} GPUs (one worker each) but --workers is {self.workers}",
                             field="--workers")
        if self.gpus is not None and len(set(self.gpus)) != len(self.gpus):
            raise InputError("a GPU id is listed twice", field="--gpu")


def _physical_ids(gpus: List[int]) -> List[str]:
    """Ids as this process counts them → ids for a child's CUDA_VISIBLE_DEVICES."""
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not seen:
        return [str(g) for g in gpus]
    visible = [s.strip() for s in seen.split(",") if s.strip()]
    from ..errors import InputError

    bad = [g for g in gpus if g >= len(visible)]
    if bad:
        raise InputError(f"GPU id {bad[0]} but this process sees only {len(visible)} GPU(s) "
                         f"(CUDA_VISIBLE_DEVICES={seen})", field="--gpu")
    return [visible[g] for g in gpus]


def _spec_cluster(names: List[str], envs: List[dict]):
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {name: {"cls": Nanny, "options": {"nthreads": 1, "name": name, "env": env, "memory_limit": 0,
                                                "silence_logs": logging.ERROR}}
               for name, env in zip(names, envs)}
    scheduler = {"cls": Scheduler, "options": {"dashboard": False, "host": "127.0.0.1"}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR)


def local_gpu_cluster(gpus: List[int]):
    """One Dask worker process per GPU of this node (names gpu<id>), each seeing only its GPU."""
    phys = _physical_ids(list(gpus))
    names = [f"gpu{g}" for g in gpus]
    envs = [{"CUDA_VISIBLE_DEVICES": p, WORKER_NAME_ENV: n} for p, n in zip(phys, names)]
    return _spec_cluster(names, envs)


def local_cpu_cluster(n: int):
    """``n`` Dask worker processes on this node's CPUs (names cpu<i>); no GPU visible to them.
    Each keeps the array library's default thread count: limiting it would change how float sums
    are split (measured: poses 4e-5° from the single-process run with 1 thread instead of 2)."""
    names = [f"cpu{i}" for i in range(n)]
    envs = [{"CUDA_VISIBLE_DEVICES": "", WORKER_NAME_ENV: name} for name in names]
    return _spec_cluster(names, envs)


def jobqueue_cluster(o: ExecutionOptions):
    """A dask-jobqueue cluster of ``o.workers`` jobs (not yet scaled: call ``.scale(jobs=...)``)."""
    import dask_jobqueue

    g = int(o.worker_gpus)
    procs = max(1, g)
    cores = int(o.worker_cores) * procs
    mem = _scale_memory(o.worker_memory, procs)
    prologue = [f"export {GPUS_PER_JOB_ENV}={g}"] + list(o.worker_setup)
    directives = list(o.job_options)
    # one Dask thread per worker process (one unit at a time per GPU); the cores are for the array
    # library and image reading, requested from the batch system directly
    kw = dict(cores=procs, processes=procs, memory=mem, walltime=o.walltime, queue=o.queue,
              python=o.python or sys.executable, job_script_prologue=prologue, log_directory=o.log_directory,
              job_name="gmmcore")
    if o.cluster == "slurm":
        kw["job_cpu"] = cores
        if g:
            directives.append(f"--gres=gpu:{g}")
        cls = dask_jobqueue.SLURMCluster
    elif o.cluster == "pbs":
        # PBS Pro style chunk; sites with Torque use job_options ('-l nodes=1:ppn=8:gpus=1') instead
        kw["resource_spec"] = f"select=1:ncpus={cores}:mem={mem.replace('GB', 'gb')}" + (f":ngpus={g}" if g else "")
        cls = dask_jobqueue.PBSCluster
    else:
        # SGE has no standard GPU resource: the common 'gpu' consumable; change it with --cluster-option
        if g:
            directives.append(f"-l gpu={g}")
        kw["resource_spec"] = f"h_vmem={mem}"
        cls = dask_jobqueue.SGECluster
    kw["job_extra_directives"] = directives
    return cls(**kw)


def _scale_memory(per_worker: str, n: int) -> str:
    """'32GB' per worker × n → '64GB' for the job."""
    from dask.utils import format_bytes, parse_bytes

    total = parse_bytes(per_worker) * n
    gb = total / 1e9
    return f"{int(round(gb))}GB" if gb >= 1 else format_bytes(total).replace(" ", "")


def open_executor(o: ExecutionOptions, log: Optional[logging.Logger] = None):
    """The executor for ``o`` (the in-process one when nothing asks for workers).  Close it after
    the run (it is a context manager); clusters it started are closed with it."""
    o.check()
    if not o.distributed:
        return local_executor()
    from distributed import Client

    setup = WorkerSetup(backend=o.backend, cpu_only=bool(o.cpu))
    if o.scheduler:
        client = Client(o.scheduler)  # connect timeout: Dask's config (distributed.comm.timeouts.connect)
        return DaskExecutor(client, setup, description=f"Dask scheduler {o.scheduler}", log=log)
    if o.cluster:
        cluster = jobqueue_cluster(o)
        # adaptive with minimum = maximum: a job that dies (wall time, node failure) is replaced
        cluster.adapt(minimum_jobs=int(o.workers), maximum_jobs=int(o.workers))
        client = Client(cluster)
        n = int(o.workers) * max(1, o.worker_gpus)
        desc = (f"{o.cluster.upper()} through dask-jobqueue: {o.workers} job(s) × {max(1, o.worker_gpus)} worker(s)"
                f", {o.worker_gpus} GPU(s) per job, scheduler {cluster.scheduler_address}")
        return DaskExecutor(client, setup, cluster=cluster, expected_workers=n, description=desc, log=log)
    if o.gpus and len(o.gpus) > 1:
        cluster = local_gpu_cluster(o.gpus)
        desc = f"local Dask cluster: one worker per GPU ({', '.join(f'gpu{g}' for g in o.gpus)})"
        n = len(o.gpus)
    else:
        n = int(o.workers)
        cluster = local_cpu_cluster(n)
        desc = f"local Dask cluster: {n} CPU worker process(es)"
        setup = WorkerSetup(backend=o.backend, cpu_only=True)
    client = Client(cluster)
    client.wait_for_workers(n, timeout=300)
    return DaskExecutor(client, setup, cluster=cluster, expected_workers=n, description=desc, log=log)


__all__ = ["ExecutionOptions", "open_executor", "local_gpu_cluster", "local_cpu_cluster", "jobqueue_cluster",
           "LocalExecutor", "CLUSTERS"]
