"""What runs inside a worker process: device choice (once per process), unit timing, a small cache.

A worker process chooses its device the first time it runs a unit, through the array backend's
:meth:`~gmmcore.backend.Backend.describe_devices` — never by calling an array library here.  Which
GPU a worker may use is set from outside, before the process starts:

* local multi-GPU (``--gpu 0,1``): each worker process is started with ``CUDA_VISIBLE_DEVICES`` set
  to its one GPU, so the backend sees exactly one device;
* a batch job holding G GPUs with G worker processes (dask-jobqueue, ``--worker-gpus G``): the job
  exports ``GMMCORE_GPUS_PER_JOB=G`` and worker ``i`` of the job (Dask names them ``<job>-i``)
  takes visible GPU ``i``;
* otherwise (a user's own cluster) the backend uses what the worker sees.

``GMMCORE_WORKER_NAME`` (set for local workers) names the worker in the log ("gpu2", "cpu0").
"""
from __future__ import annotations

import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

GPUS_PER_JOB_ENV = "GMMCORE_GPUS_PER_JOB"
WORKER_NAME_ENV = "GMMCORE_WORKER_NAME"


@dataclass(frozen=True)
class WorkerSetup:
    """How every worker of a run prepares its device: the array backend by name and whether to
    stay on the CPU (``--cpu``)."""

    backend: str = "tf"
    cpu_only: bool = False


@dataclass
class UnitInfo:
    """Where and how long one unit ran: ``worker`` name, its ``device`` line, compute ``seconds``
    inside the worker (transfers excluded), ``started`` / ``finished`` (epoch seconds, the worker's
    clock), ``cpu_seconds`` (CPU time of the worker process meanwhile, all threads)."""

    label: str
    worker: str
    device: str
    seconds: float
    started: float = 0.0
    finished: float = 0.0
    cpu_seconds: float = 0.0


_DEVICE: Optional[str] = None


def worker_name() -> str:
    """This worker's name: GMMCORE_WORKER_NAME, else the Dask worker's name, else host:pid."""
    name = os.environ.get(WORKER_NAME_ENV)
    if name:
        return name
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def _job_slot(name: str, per_job: int) -> Optional[int]:
    """Index of this worker within its batch job (names ``<job>-<i>``), or None."""
    tail = name.rsplit("-", 1)[-1]
    return int(tail) % per_job if tail.isdigit() else None


def ensure_device(setup: WorkerSetup) -> str:
    """Choose this process's device once (through the backend) and return its one-line description."""
    global _DEVICE
    if _DEVICE is None:
        from ..backend import get_backend

        gpu = None
        per_job = int(os.environ.get(GPUS_PER_JOB_ENV, "0") or 0)
        if per_job > 1 and not setup.cpu_only:
            slot = _job_slot(worker_name(), per_job)
            gpu = None if slot is None else [slot]
        desc = get_backend(setup.backend).describe_devices(gpu, cpu_only=setup.cpu_only)
        cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
        _DEVICE = desc if cvd is None or setup.cpu_only else f"{desc}, CUDA_VISIBLE_DEVICES={cvd}"
    return _DEVICE


def chosen_device() -> Optional[str]:
    """The description of the device this worker chose (None before its first device unit)."""
    return _DEVICE


def run_unit(fn: Callable[..., Any], args: tuple, kwargs: dict, setup: Optional[WorkerSetup],
             label: str) -> Tuple[Any, UnitInfo]:
    """Worker side of a unit: device ready (unless ``setup`` is None: a unit that uses no device),
    then ``fn(*args, **kwargs)`` timed → (result, info)."""
    device = ensure_device(setup) if setup is not None else (_DEVICE or "no device needed")
    started, t0, c0 = time.time(), time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return result, UnitInfo(label, worker_name(), device, time.perf_counter() - t0, started, time.time(),
                            time.process_time() - c0)


# ------------------------------------------------------------------------------------------------
# a per-process cache for objects that are costly to make and shared by many units of one job
# (e.g. a compiled pose optimiser shared by all chunks of one half): keyed by a job token.

_CACHE: "OrderedDict[str, Any]" = OrderedDict()
CACHE_SIZE = 2  # e.g. the two halves of one iteration


def cached(key: str, make: Callable[[], Any]) -> Any:
    """``make()`` once per process and ``key`` (the ``CACHE_SIZE`` most recent keys are kept)."""
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    value = make()
    _CACHE[key] = value
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return value


def forget(key: str) -> None:
    """Drop ``key`` from this process's cache (frees e.g. device memory of a finished job)."""
    _CACHE.pop(key, None)


def cache_keys() -> Dict[str, type]:
    return {k: type(v) for k, v in _CACHE.items()}
