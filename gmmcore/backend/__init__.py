"""The array-backend seam: every numeric kernel that runs on an accelerator, NumPy in, NumPy out.

Nothing outside this package imports an array library (TensorFlow, JAX); the rest of the engine
asks :func:`get_backend` for a :class:`Backend` and hands it NumPy arrays.  A backend implements:

* ``describe_devices(gpu, cpu_only, threads)`` — choose devices and CPU threads (before first
  use); a one-line description starting "GPU" when a GPU runs; a GPU id that does not exist is an
  InputError;
* ``frc_rings(gmm, grid, particle_ft, rotations, origins_A)`` — per-ring FRC of particles against
  the GMM's projections at given poses;
* ``max_batch(gmm, grid, settings)`` — ``--batch auto``: the largest pose batch whose working
  memory fits the device's free memory (rule: :func:`gmmcore.backend.kernels.batch_for_memory`);
* ``pose_optimizer(objective, settings)`` — a compiled local pose optimiser for one objective
  (:class:`FRCObjective` today): Adam on a rotation-vector update applied to the current rotation
  plus a shift in Å, best pose kept (see :class:`PoseSettings`);
* ``project_images(gmm, rotations, origins_A, apix, box)`` / ``render_map(gmm, box, apix)`` —
  real-space projections and maps of a GMM;
* ``gmm_fit(problem, sigmas0, amp_weight)`` — loss and gradients of the GMM-to-map fit
  (:mod:`gmmcore.gmm.build` runs the optimiser in NumPy).

``gmm`` arguments are anything with ``centers`` (N, 3) Å, ``amplitudes`` (N,) and ``sigmas`` (N,) Å
(e.g. :class:`gmmcore.gmm.model.GMM`); grids are :class:`gmmcore.grids.FourierGrid`.  Conventions
of the maths: :mod:`gmmcore.backend.tf` (projection, FRC, rotation update).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence

import numpy as np

BACKENDS = ("tf", "jax")  # "tf": the CPU default; "jax": GPUs (and CPUs)


@dataclass
class PoseSettings:
    """Local pose optimisation (Adam on a rotation-vector update and a shift update).

    ``lr_angle_deg``: Adam step for the rotation update, degrees; ``lr_shift_px``: for the shift,
    pixels.  The step decays linearly to ``final_lr_fraction`` of its start over ``steps``; the
    best-scoring pose seen is kept.

    Pose prior (MAP; off when ``prior_angle_deg`` is None): the objective becomes
    ``data_scale·S − θ²/(2σ_a²) − |t|²/(2σ_s²)``, where S is the ring-weighted FRC, θ (degrees) and
    t (pixels) the deviation of the pose from the prior centre (the input pose), σ_a =
    ``prior_angle_deg``, σ_s = ``prior_shift_px``.  ``data_scale`` converts S to log-likelihood
    units: for SSNR weights w_r ∝ n_r·f_r, the per-ring profile log-likelihood Σ n_r·FRC_r²
    changes by ≈ 2·Σ_r n_r f_r · ΔS (see :func:`gmmcore.grids.ssnr_data_scale`).
    """

    steps: int = 10
    lr_angle_deg: float = 0.5
    lr_shift_px: float = 0.25
    final_lr_fraction: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.999
    prior_angle_deg: Optional[float] = None
    prior_shift_px: Optional[float] = None

    def step_decay(self) -> list:
        """Multiplier of the Adam step at each of ``steps`` steps (linear to final_lr_fraction)."""
        n = int(self.steps)
        return [(1.0 - (1.0 - self.final_lr_fraction) * t / max(n - 1, 1)) for t in range(n)]


@dataclass
class FRCObjective:
    """Pose objective: the ring-weighted FRC between a particle and the GMM's projection at the
    pose (+ the MAP pose prior of :class:`PoseSettings` when it is on).

    Per-particle inputs of the optimiser: ``particle_ft`` (k, ny, nx) complex (cropped to ``grid``,
    phase-flipped), and the prior centre ``prior_rotations`` (k, 3, 3), ``prior_origins_A`` (k, 2).
    ``ring_weights`` (nrings,) sum to 1; ``data_scale`` puts the FRC in log-likelihood units.
    """

    gmm: Any
    grid: Any
    ring_weights: np.ndarray
    data_scale: float = 1.0


@dataclass
class ProjectionRMSDObjective:
    """Pose objective of conformation-to-pose: minus the RMSD between the masked projection of
    ``gmm`` (the neutral GMM) at the pose being optimised and a per-particle target, the masked
    projection of the particle's conformation GMM at its reference (initial) pose.

    The conformation GMM has the same Gaussians as ``gmm`` (same amplitudes and widths, one to
    one) at other centres.  ``weights`` (N,) in 0..1 is the per-Gaussian mask (1 inside the target
    region): both projections use amplitudes × weights.  The RMSD is over the pixels of the
    difference image band-limited to ``grid`` (all rings from 1 to its resolution; build the grid
    with ``minres_A=0``), in the projections' units (mass per pixel).  No pose prior.

    Per-particle inputs of the optimiser: ``conf_centers`` (k, N, 3) Å, ``ref_rotations``
    (k, 3, 3), ``ref_origins_A`` (k, 2).
    """

    gmm: Any
    grid: Any
    weights: np.ndarray


class PoseOptimizer(Protocol):
    def __call__(self, rotations: np.ndarray, origins_A: np.ndarray, **per_particle: np.ndarray):
        """One padded batch → (rotations (B,3,3), origins_A (B,2), score (B,), start score (B,)), float32."""


class Backend(Protocol):
    name: str

    def describe_devices(self, gpu: Optional[Sequence[int]] = None, cpu_only: bool = False,
                         threads: Optional[int] = None) -> str: ...

    def frc_rings(self, gmm, grid, particle_ft: np.ndarray, rotations: np.ndarray, origins_A: np.ndarray,
                  batch: int = 64) -> np.ndarray: ...

    def pose_optimizer(self, objective: FRCObjective, settings: PoseSettings) -> PoseOptimizer: ...

    def max_batch(self, gmm, grid, settings: PoseSettings, limit: int = 4096) -> int: ...

    def project_images(self, gmm, rotations: np.ndarray, origins_A: np.ndarray, apix: float, box: int,
                       batch: int = 64) -> np.ndarray: ...

    def render_map(self, gmm, box: int, apix: float, z_chunk: int = 16) -> np.ndarray: ...

    def gmm_fit(self, problem, sigmas0: np.ndarray, amp_weight: float, hermitian: bool = False) -> Any: ...


_LOADED = {}


def no_gpu_warning(gpu, cpu: bool, device: str, backend_name: str) -> "str | None":
    """The one warning of every verb when GPUs were asked for (``gpu``: ids) and the backend sees
    none (``device`` is its description): the run goes on on the CPU.  None when nothing to say."""
    if gpu and not cpu and "GPU" not in device:
        return (f"GPU {','.join(map(str, gpu))} requested; the engine sees no GPU: running on the CPU "
                f"({backend_name} backend)")
    return None


def get_backend(name: str = "tf") -> Backend:
    """The backend called ``name`` (imported on first use)."""
    if name not in BACKENDS:
        from ..errors import InputError

        raise InputError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})", field="--backend")
    if name not in _LOADED:
        import importlib

        _LOADED[name] = importlib.import_module(f"{__name__}.{name}").BACKEND
    return _LOADED[name]

