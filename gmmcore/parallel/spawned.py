"""Calls in spawned processes that hold their arguments alone: one process per call, all at once.

:func:`run_spawned` starts one spawned process per call (safe when this process has initialised
TensorFlow or JAX), then makes each call's arguments, sends them through a pipe and drops them
before making the next: while the processes work, this process keeps no copy of what it sent
(a process pool keeps every submitted argument until its result is back), and it gives the heap
pages it has freed back to the system (:func:`release_free_memory`) before the processes start and
once they have their arguments: what a process tree holds at once is what it uses.  Results come
back in call order; an exception raised in a process is raised here, the process's traceback
attached.
"""
from __future__ import annotations

import traceback
from typing import Any, Callable, List, Sequence


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a spawned process (set as its ``__cause__``)."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0]) if self.args else ""


def release_free_memory() -> None:
    """Give the heap memory this process has freed back to the system (glibc's ``malloc_trim``; a
    no-op where there is none).  glibc keeps freed heap pages for reuse, so after a phase of large
    temporaries (the alignment's chunks) they would stay counted in this process's resident memory
    while other processes start."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _serve(conn) -> None:
    """Process side: receive (fn, args), send back (True, result) or (False, exception, traceback)."""
    try:
        fn, args = conn.recv()
        release_free_memory()  # the message the arguments were read from
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
            conn.send((False, exc, traceback.format_exc()))
        else:
            del args
            conn.send((True, result, ""))
    finally:
        conn.close()


def run_spawned(fn: Callable[..., Any], calls: Sequence[Callable[[], tuple]]) -> List[Any]:
    """``[fn(*make()) for make in calls]``, each call in its own spawned process, all at once.

    ``fn`` must be importable by name; ``calls`` are functions making each call's argument tuple
    (made one at a time, sent, and dropped here).  An exception of a call is raised here (its
    process's traceback as ``__cause__``); a process that dies without answering is a
    :class:`RuntimeError`.  On any error (Ctrl-C included) the processes still running are ended.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs, done = [], False
    release_free_memory()
    try:
        for _ in calls:  # start them all first: each imports while the others start
            here, there = ctx.Pipe()
            p = ctx.Process(target=_serve, args=(there,), daemon=True)
            p.start()
            there.close()
            procs.append((p, here))
        for make, (p, conn) in zip(calls, procs):
            conn.send((fn, make()))  # pickled here; nothing of it is kept
        release_free_memory()
        out = []
        for p, conn in procs:
            try:
                ok, value, tb = conn.recv()
            except EOFError:
                p.join()
                raise RuntimeError(f"a worker process ended without a result (exit code {p.exitcode})") from None
            if not ok:
                raise value from RemoteTraceback(tb)
            out.append(value)
        done = True
        return out
    finally:
        for p, conn in procs:
            conn.close()
            if not done and p.is_alive():  # an error here or in another call: end the ones still working
                p.terminate()
            p.join()
