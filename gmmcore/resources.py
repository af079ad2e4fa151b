"""CPU threads a run may use: the one knob (``--threads N`` → ``GMMCORE_THREADS``).

The environment variable is inherited by spawned worker processes (the half-map reconstructions),
so one setting governs TensorFlow's thread pools, the FFT workers and how many halves are
reconstructed in parallel.
"""
from __future__ import annotations

import os
from typing import Optional

ENV = "GMMCORE_THREADS"


def set_cpu_threads(n: Optional[int]) -> None:
    """Limit this process (and its workers) to ``n`` CPU threads; None: all cores."""
    if n is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = str(max(1, int(n)))


def cpu_threads() -> int:
    """CPU threads to use: ``GMMCORE_THREADS`` if set, else every core of the machine."""
    value = os.environ.get(ENV)
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            pass
    return os.cpu_count() or 1


def threads_limited() -> bool:
    """Whether a thread limit was set (otherwise libraries keep their own defaults)."""
    return bool(os.environ.get(ENV))
