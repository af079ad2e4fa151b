"""Where the work units of a run execute: this process, one worker process per GPU, or a Dask cluster.

A *work unit* (:class:`~.executor.Unit`) is a picklable call ``fn(*args, **kwargs)`` with a
label for the log: the alignment of one chunk of one half's particles, one reconstruction partial
sum, one GMM fit, one whole patch run.  An *executor* runs units; the algorithms decide what a unit
is, the executor only where it runs:

* :class:`~.executor.LocalExecutor` — in this process, one unit after the other, in order (the
  default: exactly today's single-device behaviour).
* :class:`~.executor.DaskExecutor` — on the workers of a ``dask.distributed`` cluster: a local one
  with one worker process per GPU (``--gpu 0,1,2,3``, :func:`.clusters.local_gpu_cluster`) or per
  CPU worker (:func:`.clusters.local_cpu_cluster`), a running cluster (``--dask-scheduler``), or
  one started through dask-jobqueue on SLURM/PBS/SGE (:func:`.clusters.jobqueue_cluster`).  Each
  worker process chooses its device once, through the array backend
  (:meth:`gmmcore.backend.Backend.describe_devices`); the log says which worker/GPU ran each unit.

The API, for any caller (refinement loop, patch refinement, ...)::

    from gmmcore.parallel import Unit
    results = executor.run([Unit(f"patch {i}", refine_patch, (table, start, mask_i, params_i, ...)) ...])
    maps = executor.map_reduce([half1_parts, half2_parts], combine=added, finish=finished)

``run`` returns the results in the order of the units, whatever order they finish in; a unit
whose worker dies is run again by Dask, so units must be idempotent (alignment chunks check their
checkpoint first, so a finished chunk is never redone).  ``map_reduce`` combines each group's partial
results in a fixed pairwise tree, so a result never depends on which unit finished first.

This package imports no array library and no dask at import time (dask is imported when a
cluster is made or joined).
"""
from .executor import DaskExecutor, ExecutorLost, LocalExecutor, Unit, UnitInfo, WorkerSetup, local_executor

__all__ = ["DaskExecutor", "ExecutorLost", "LocalExecutor", "Unit", "UnitInfo", "WorkerSetup", "local_executor"]
