"""The command-line flags of where a run executes, shared by the refinement verbs (global, focused,
patch): a verb calls ``configure_parser(p)`` in its own ``configure_parser`` and
``execution_options(args, gpus, out)`` and ``run_on_executor`` in its ``run``.

``configure_parser(p)`` adds ``--workers``, ``--dask-scheduler``, ``--cluster`` and the batch-job
flags; :func:`execution_options` turns them (with ``--gpu`` / ``--cpu``) into
:class:`gmmcore.parallel.clusters.ExecutionOptions`; ``gmmcore.parallel.clusters.open_executor``
makes the executor.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

from ..errors import InputError
from .clusters import ExecutionOptions


def configure_parser(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "parallel execution",
        "Default: everything in this process on one device. --gpu 0,1,2,3 starts one worker process per GPU on "
        "this node; --workers N alone starts N CPU worker processes; --dask-scheduler joins a running Dask "
        "cluster; --cluster starts Dask workers as batch jobs. Results are the same in every case; re-running the "
        "same command continues a run whose workers or scheduler were lost.")
    g.add_argument("--workers", type=int, default=None,
                   help="with --cluster: batch jobs to start; alone: local CPU worker processes")
    g.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                   help="address of a running Dask scheduler (e.g. tcp://node12:8786); its workers must see the "
                        "particles and --out on the same paths")
    g.add_argument("--cluster", choices=["slurm", "pbs", "sge"], default=None,
                   help="start the Dask workers as batch jobs (dask-jobqueue); needs --workers")
    g.add_argument("--worker-gpus", type=int, default=1,
                   help="with --cluster: GPUs per job, one worker process each (default 1; 0: CPU jobs)")
    g.add_argument("--worker-cores", type=int, default=4, help="with --cluster: CPU cores per worker process (default 4)")
    g.add_argument("--worker-memory", default="32GB", help="with --cluster: memory per worker process (default 32GB)")
    g.add_argument("--queue", default=None, help="with --cluster: queue / partition of the jobs")
    g.add_argument("--walltime", default="24:00:00", help="with --cluster: wall time of each job (default 24:00:00)")
    g.add_argument("--cluster-option", action="append", default=[], metavar="DIRECTIVE",
                   help="with --cluster: extra batch directive, repeatable (e.g. --cluster-option=--account=abc)")
    g.add_argument("--worker-setup", action="append", default=[], metavar="COMMAND",
                   help="with --cluster: shell line run in each job before its worker, repeatable "
                        "(e.g. 'module load cuda/12')")


def parse_gpus(text: Optional[str]) -> Optional[List[int]]:
    """'0,1, 3' → [0, 1, 3]; None/'' → None; anything else but ids ≥ 0 → InputError naming --gpu."""
    if text in (None, ""):
        return None
    try:
        ids = [int(x) for x in str(text).replace(" ", ",").split(",") if x != ""]
    except ValueError:
        ids = [-1]
    if not ids or min(ids) < 0:
        raise InputError(f"not a list of GPU ids: {text!r} (e.g. 0 or 0,1,2,3)", field="--gpu")
    return ids


def run_on_executor(verb: str, options: ExecutionOptions, work: Callable[[Any], Any]) -> Tuple[int, Any]:
    """``work(executor)`` on the executor ``options`` ask for, a SIGTERM (e.g. from Scipion)
    unwinding like Ctrl-C (no temporaries left) → (exit code 0, its result); a lost cluster → one
    line on stderr and (3, None): re-running the command continues from its checkpoints."""
    import logging
    import sys

    from ..safewrite import sigterm_as_interrupt
    from .clusters import open_executor
    from .executor import ExecutorLost

    try:
        with sigterm_as_interrupt(), open_executor(options, log=logging.getLogger("gmmcore.refine")) as executor:
            return 0, work(executor)
    except ExecutorLost as exc:
        print(f"gmmcore {verb}: {exc}", file=sys.stderr)
        return 3, None


def execution_options(args: argparse.Namespace, gpus: Optional[List[int]], out: Path):
    """The ExecutionOptions of the parsed flags (checked: contradictions → InputError)."""
    o = ExecutionOptions(gpus=gpus, cpu=bool(getattr(args, "cpu", False)), workers=args.workers,
                         scheduler=args.dask_scheduler, cluster=args.cluster, worker_gpus=args.worker_gpus,
                         worker_cores=args.worker_cores, worker_memory=args.worker_memory, queue=args.queue,
                         walltime=args.walltime, job_options=list(args.cluster_option),
                         worker_setup=list(args.worker_setup), log_directory=str(Path(out).resolve() / "dask-jobs"),
                         backend=getattr(args, "backend", None) or "tf")
    o.check()
    return o
