"""Executors: run work units here (in order) or on a Dask cluster; results always in unit order.

See :mod:`gmmcore.parallel` for the concepts.  Both executors have the same interface:

* ``run(units, on_done=None) -> list`` — results in the order of ``units``; ``on_done(i, result,
  info)`` is called in this process as each unit finishes (completion order: progress, logging);
* ``map_reduce(groups, combine, finish=None) -> list`` — per group of units,
  ``finish(combine(...combine(r0, r1)...))`` over its units' results, combined in a fixed pairwise
  tree on the workers (in-process: left to right); one result per group;
* ``in_process`` (units run here, may share memory with the caller), ``workers`` (units that run
  at once), ``describe()``, ``close()``; both are context managers.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence

from .worker import UnitInfo, WorkerSetup, run_unit

OnDone = Optional[Callable[[int, Any, UnitInfo], None]]


@dataclass
class Unit:
    """One independent piece of work: ``fn(*args, **kwargs)``.  ``fn`` must be importable by name
    (a module-level function) and the arguments picklable when the unit runs on a cluster."""

    label: str
    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    uses_device: bool = True  # False: the worker need not set up its array backend for this unit


class ExecutorLost(RuntimeError):
    """The cluster went away (scheduler lost, or a unit's workers kept dying).  Everything finished
    before is checkpointed: re-running the same command continues."""


class _Base:
    in_process = False
    workers = 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        pass


class LocalExecutor(_Base):
    """Runs units in this process, one after the other, in order — the single-device default."""

    in_process = True
    workers = 1

    def describe(self) -> str:
        return "in-process"

    def run(self, units: Sequence[Unit], on_done: OnDone = None) -> List[Any]:
        out = []
        for i, u in enumerate(units):
            t0 = time.perf_counter()
            r = u.fn(*u.args, **u.kwargs)
            if on_done is not None:
                on_done(i, r, UnitInfo(u.label, "main", "", time.perf_counter() - t0))
            out.append(r)
        return out

    def map_reduce(self, groups: Sequence[Sequence[Unit]], combine: Callable[[Any, Any], Any],
                   finish: Optional[Callable[[Any], Any]] = None) -> List[Any]:
        out = []
        for units in groups:
            acc = None
            for i, u in enumerate(units):
                r = u.fn(*u.args, **u.kwargs)
                acc = r if i == 0 else combine(acc, r)
            out.append(finish(acc) if finish is not None else acc)
        return out


_LOCAL = LocalExecutor()


def local_executor() -> LocalExecutor:
    """The shared in-process executor (stateless)."""
    return _LOCAL


# ------------------------------------------------------------------------------------------------
# Dask


def _timed(label, fn, *args):
    from .worker import worker_name

    started, t0, c0 = time.time(), time.perf_counter(), time.process_time()
    r = fn(*args)
    return r, UnitInfo(label, worker_name(), "", time.perf_counter() - t0, started, time.time(),
                       time.process_time() - c0)


def _combine_pair(combine, a, b):
    """Worker side of one reduction step: (result, [infos]) × 2 → (combined, infos + this step's)."""
    r, info = _timed("add partial results", combine, a[0], b[0])
    return r, a[1] + b[1] + [info]


def _as_reducible(pair):
    r, info = pair
    return r, [info]


def _finish(finish, acc):
    r, info = _timed("finish", finish, acc[0]) if finish is not None else (acc[0], None)
    return r, acc[1] + ([info] if info else [])


def _lost_errors():
    import asyncio
    import concurrent.futures

    from distributed import KilledWorker
    from distributed.comm import CommClosedError

    return (KilledWorker, CommClosedError, asyncio.CancelledError, concurrent.futures.CancelledError, OSError,
            asyncio.TimeoutError)


class DaskExecutor(_Base):
    """Runs units on the workers of a ``distributed.Client``.

    ``setup`` tells each worker how to choose its device (see :mod:`.worker`).  ``cluster`` (owned:
    closed with the executor) is the cluster object when this process started it.  Every finished
    unit is logged on ``log`` with the worker and device that ran it.  A unit whose worker dies is
    rescheduled by Dask (up to its ``allowed-failures``); a lost scheduler raises
    :class:`ExecutorLost`.
    """

    in_process = False

    def __init__(self, client, setup: WorkerSetup = WorkerSetup(), cluster=None, expected_workers: Optional[int] = None,
                 description: str = "", log: Optional[logging.Logger] = None):
        self.client = client
        self.setup = setup
        self.cluster = cluster
        self._expected = expected_workers
        self._description = description
        self.log = log or logging.getLogger("gmmcore.parallel")
        # per unit (and reduction step): label, worker, device, compute seconds; epoch times submitted
        # (here), started / finished (worker), received (here)
        self.stats: List[dict] = []

    @property
    def workers(self) -> int:
        n = len(self.client.scheduler_info().get("workers", {}))
        return max(n, self._expected or 0, 1)

    def describe(self) -> str:
        names = sorted(str(w.get("name")) for w in self.client.scheduler_info().get("workers", {}).values())
        what = self._description or f"Dask scheduler {self.client.scheduler.address}"
        return f"{what}; workers now: {', '.join(names) if names else 'none yet'}"

    def _submit(self, u: Unit, token: str, i: int):
        # Units of one kind share a key prefix (the function's name): Dask then queues them as one
        # task group and hands them to workers as they free up, with duration estimates per kind.
        key = f"{getattr(u.fn, '__name__', 'unit')}-{token}-{i}"
        return self.client.submit(run_unit, u.fn, u.args, u.kwargs, self.setup if u.uses_device else None, u.label,
                                  key=key, pure=False)

    def run(self, units: Sequence[Unit], on_done: OnDone = None) -> List[Any]:
        from distributed import as_completed

        if not units:
            return []
        token = uuid.uuid4().hex[:8]
        t_submit = time.time()
        futures = [self._submit(u, token, i) for i, u in enumerate(units)]
        where = {f.key: i for i, f in enumerate(futures)}
        out: List[Any] = [None] * len(units)
        try:
            for fut, got in as_completed(futures, with_results=True):
                if isinstance(got, BaseException):  # a cancelled future comes back as its exception
                    raise got
                result, info = got
                i = where[fut.key]
                out[i] = result
                self._record(info, t_submit)
                if on_done is not None:
                    on_done(i, result, info)
                fut.release()
        except _lost_errors() as exc:
            raise ExecutorLost(f"lost the Dask cluster ({type(exc).__name__}: {exc}); re-run the same command to "
                               "continue from the checkpoints") from exc
        finally:
            for f in futures:
                f.release()
        return out

    def map_reduce(self, groups: Sequence[Sequence[Unit]], combine: Callable[[Any, Any], Any],
                   finish: Optional[Callable[[Any], Any]] = None) -> List[Any]:
        """Per group, the units' results added on the workers in a fixed pairwise tree ((0,1), (2,3),
        ...), then ``finish`` on a worker; only the finished results come back here.  All groups
        are submitted at once."""
        if any(not units for units in groups):
            raise ValueError("map_reduce of an empty group")
        token = uuid.uuid4().hex[:8]
        t_submit = time.time()
        tops = []
        for g, units in enumerate(groups):
            level = [self.client.submit(_as_reducible, self._submit(u, f"{token}-{g}", i),
                                        key=f"partial-{token}-{g}-{i}", pure=False) for i, u in enumerate(units)]
            step = 0
            while len(level) > 1:
                nxt = [self.client.submit(_combine_pair, combine, level[i], level[i + 1],
                                          key=f"reduce-{token}-{g}-{step}-{i}", pure=False)
                       for i in range(0, len(level) - 1, 2)]
                if len(level) % 2:
                    nxt.append(level[-1])
                level, step = nxt, step + 1
            tops.append(self.client.submit(_finish, finish, level[0], key=f"finish-{token}-{g}", pure=False))
        out = []
        try:
            for units, fut in zip(groups, tops):
                result, infos = fut.result()
                for info in infos:
                    self._record(info, t_submit, log=not info.label.startswith(("add ", "finish")))
                out.append(result)
                fut.release()
        except _lost_errors() as exc:
            raise ExecutorLost(f"lost the Dask cluster ({type(exc).__name__}: {exc}); re-run the same command to "
                               "continue from the checkpoints") from exc
        return out

    def _record(self, info: UnitInfo, submitted: float, log: bool = True) -> None:
        self.stats.append({"label": info.label, "worker": info.worker, "device": info.device,
                           "seconds": info.seconds, "cpu_seconds": info.cpu_seconds, "submitted": submitted,
                           "started": info.started,
                           "finished": info.finished, "received": time.time()})
        if log:
            self.log.info("    %s: worker %s (%s), %.1f s", info.label, info.worker, info.device, info.seconds)

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()
                self.cluster = None
