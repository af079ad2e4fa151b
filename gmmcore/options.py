"""Command-line options of the refinement-like verbs (refine, refine-focused, refine-patches,
heterogeneity, conf2pose): one declaration and one check of each shared flag.

Not a verb: verbs never import each other, so what they share lives here (one layer below
:mod:`gmmcore.commands`).  A verb declares its flags with the ``add_*`` functions (a default that
differs between verbs is a keyword parameter, stated once by that verb; every other default comes
from :mod:`gmmcore.defaults`) and calls :func:`check` first in its ``run``, before anything is
read or written: each flag the verb declared is checked by the one rule of that flag (range, NaN,
infinity, the band order ``--maxres < --minres``).  Errors are :class:`InputError` naming the flag.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Iterable, Optional, Union

from . import defaults
from .errors import InputError


TF_ONLY = "array backend: tf (TensorFlow; the networks of this verb run on TensorFlow only)"


# ---- declarations ---------------------------------------------------------------------------
def add_run_arguments(p: argparse.ArgumentParser, *, seed_help: str = "random seed (GMM seeding)",
                      batch_help: str = "particles per batch on the device: the GPU-memory knob",
                      chunk_help: str = "particles read per chunk",
                      gpu_help: str = "GPU id(s), e.g. 0 or 0,1,2,3 (default: the first GPU the backend sees)",
                      backend_help: str = "array backend: tf (TensorFlow; CPU or GPU) or jax (JAX: GPUs without "
                                          "TensorFlow, also runs on the CPU)", batch_auto: bool = True) -> None:
    """Where and how a run executes: ``--gpu --cpu --backend --threads --batch --chunk --seed
    --continue`` (defaults from :mod:`gmmcore.defaults`).  ``batch_auto``: the verb sizes
    ``--batch auto`` on the device (else it takes a number only: :func:`fixed_batch`)."""
    auto = (", or 'auto': on a GPU the largest power of two whose working memory fits half its free memory, "
            "on a CPU 16 (larger batches are no faster there)"
            if batch_auto else "")
    p.add_argument("--gpu", default=None, help=gpu_help)
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is visible")
    p.add_argument("--backend", choices=defaults.BACKENDS, default=defaults.BACKEND,
                   help=f"{backend_help} (default {defaults.BACKEND})")
    p.add_argument("--threads", type=int, default=None, help="CPU threads to use (default: all cores)")
    p.add_argument("--batch", default=str(defaults.BATCH),
                   help=f"{batch_help} (default {defaults.BATCH}){auto}")
    p.add_argument("--chunk", type=int, default=defaults.CHUNK, help=f"{chunk_help} (default {defaults.CHUNK})")
    p.add_argument("--seed", type=int, default=defaults.SEED, help=f"{seed_help} (default {defaults.SEED})")
    p.add_argument("--continue", dest="cont", action="store_true",
                   help="continue the run in --out (re-running the same command does the same)")


def add_band_arguments(p: argparse.ArgumentParser, *, minres: float = defaults.MINRES_A,
                       maxres_help: str = "finest target resolution used for alignment, Å",
                       minres_help: str = "coarsest resolution in the FRC, Å", res_alias: bool = False) -> None:
    """The resolution band ``--maxres`` (finest, Å) and ``--minres`` (coarsest, Å; default
    ``minres``).  ``res_alias``: also accept ``--res`` for ``--maxres`` (deprecated)."""
    p.add_argument("--maxres", type=float, default=None, help=maxres_help)
    p.add_argument("--minres", type=float, default=minres, help=f"{minres_help} (default {minres:g})")
    if res_alias:
        add_deprecated_alias(p, "--res", "--maxres", dest="maxres")


def add_alignment_arguments(p: argparse.ArgumentParser, *, sym: Optional[str] = None,
                            sym_help: str = "the --from run's, else C1; C1 for expanded particles",
                            prior_help: str = "the poses this run starts from", **run_help: str) -> None:
    """The flags of local pose refinement (``gmmcore refine``, ``refine-focused``, ``refine-patches``):
    symmetry, GMM size, band, Adam steps, ring weights, pose prior, and :func:`add_run_arguments`.
    ``sym``: this verb's default symmetry (None: decided by the run)."""
    p.add_argument("--sym", default=sym, help=f"symmetry: C1, Cn, Dn, T, O, I (default: {sym or sym_help})")
    p.add_argument("--ngauss", type=int, help="Gaussians per GMM (default: estimated from map and resolution)")
    add_band_arguments(p)
    add_step_arguments(p)
    add_ring_weight_argument(p)
    p.add_argument("--band-rule", choices=defaults.BAND_RULES, default=defaults.BAND_RULE,
                   help="the resolution each iteration aligns to: fsc01 (0.9 × where the masked FSC of the last half "
                        "maps falls below 0.1: the reference implementation's rule; default) or fsc0143 (where it falls "
                        "below 0.143: coarser)")
    p.add_argument("--align-from", choices=defaults.ALIGN_FROMS, default=defaults.ALIGN_FROM,
                   help="where each iteration's local pose search starts: previous (the last iteration's poses; "
                        "default) or prior (the pose prior's centre, the poses this run started from: the scatter of "
                        "early, coarse iterations does not carry over)")
    p.add_argument("--drop-worst", type=float, default=defaults.DROP_WORST,
                   help="fraction of each half set's particles with the lowest alignment score left out of its "
                        "half map, 0 ≤ f < 0.5 (default 0: every particle; the reference implementation drops 0.1); "
                        "every particle keeps its refined pose in the output")
    p.add_argument("--gmm-fit", choices=defaults.GMM_FITS, default=defaults.GMM_FIT,
                   help="how the fit of each half map's GMM computes the GMM's transform: fourier (on the whole band; "
                        "default) or hermitian (from its k_z ≥ 0 half: the same transform, about half the work — "
                        "1.7–3.2× faster fits, more with more Gaussians; the numbers differ at float32 rounding)")
    p.add_argument("--gmm-start", choices=defaults.GMM_STARTS, default=defaults.GMM_START,
                   help="where each half map's GMM starts from in iterations ≥ 2: seed (K-means seeds, the number "
                        "of Gaussians estimated by K-means; default) or warm (the previous iteration's GMM of the same "
                        "half, split or merged to the new band's number, and fewer fit steps: several times faster "
                        "GMM building on large particles); iteration 1 is always seeded")
    p.add_argument("--gmm-local-res", choices=defaults.GMM_LOCAL_RES_CHOICES, default=defaults.GMM_LOCAL_RES,
                   help="on (default): blur each Gaussian of a half map's GMM where the local resolution (windowed "
                        "FSC of the half maps) is coarser than the median at the Gaussians, as the reference "
                        "implementation filters each half map by its local resolution (measured slightly better on "
                        "RELION-made particles); off: one resolution for the whole GMM")
    lo, hi = defaults.GMM_N_SCALE_RANGE
    p.add_argument("--gmm-n-scale", type=float, default=defaults.GMM_N_SCALE,
                   help=f"the number of Gaussians of each seeded GMM: the estimate (nearest-neighbour spacing ≈ the "
                        f"band's resolution) × this, {lo:g}–{hi:g} (default {defaults.GMM_N_SCALE:g}; 2 packs them "
                        "1.26× closer: measured better core poses on RELION-made particles, alignment ∝ N slower; "
                        "ignored with --ngauss; a warm-started GMM inherits it)")
    p.add_argument("--gmm-density", choices=defaults.GMM_DENSITIES, default=defaults.GMM_DENSITY,
                   help="where --gmm-n-scale applies: uniform (default: the whole GMM) or local (where the half maps' "
                        "local resolution is as sharp as their median, fading to the estimate itself as (median / "
                        "local)³ where coarser; measured: with --gmm-n-scale 2 the core gain of ×2 on a 145 kDa "
                        "assembly with a fifth fewer Gaussians)")
    add_prior_arguments(p, centred_on=prior_help)
    add_run_arguments(p, **run_help)


def add_step_arguments(p: argparse.ArgumentParser, *, steps: int = defaults.STEPS,
                       lr_angle: float = defaults.LR_ANGLE_DEG, lr_shift: float = defaults.LR_SHIFT_PX,
                       steps_help: str = "gradient steps per particle per iteration", lr_angle_note: str = "") -> None:
    """The Adam pose search: ``--steps``, ``--lr-angle`` (degrees), ``--lr-shift`` (pixels); a verb
    whose search differs passes its own defaults."""
    p.add_argument("--steps", type=int, default=steps, help=f"{steps_help} (default {steps})")
    p.add_argument("--lr-angle", type=float, default=lr_angle,
                   help=f"Adam step for rotations, degrees (default {lr_angle:g}{lr_angle_note})")
    p.add_argument("--lr-shift", type=float, default=lr_shift,
                   help=f"Adam step for shifts, pixels (default {lr_shift:g})")


def add_focus_arguments(p: argparse.ArgumentParser) -> None:
    """How Gaussians outside a focus mask are widened: ``--width-rule``, ``--mask-level``."""
    p.add_argument("--width-rule", choices=defaults.WIDTH_RULES, default=defaults.WIDTH_RULE,
                   help="widening of the Gaussians outside the focus mask, d = L + (1 − L)·M at each centre: "
                        "variance (σ'² = σ²/d, at most 2× wider at L 0.25: the reference implementation's rule; "
                        "default) or sigma (σ' = σ/d, at most 4×: the paper's text)")
    p.add_argument("--mask-level", type=float, default=defaults.MASK_LEVEL,
                   help=f"L above: the weight left outside the focus mask, 0 < L ≤ 1 (default {defaults.MASK_LEVEL:g}; "
                        "1 = no widening)")


def add_ring_weight_argument(p: argparse.ArgumentParser) -> None:
    """``--ring-weight``: how the FRC weighs its rings."""
    p.add_argument("--ring-weight", choices=["ssnr", "uniform"], default="ssnr",
                   help="FRC ring weighting: ssnr (population FRC × ring size, estimated per half; default) or "
                        "uniform (plain average over rings, as in the paper)")


def add_prior_arguments(p: argparse.ArgumentParser, *, centred_on: str = "the poses this run starts from") -> None:
    """The MAP pose prior: ``--prior-angle`` (degrees), ``--prior-shift`` (pixels), ``--no-prior``."""
    p.add_argument("--prior-angle", type=float, default=None,
                   help=f"MAP pose prior centred on {centred_on}: their expected angular error, degrees "
                        f"(default {defaults.PRIOR_ANGLE_DEG:g}). Keeps low-SNR particles from drifting; strong "
                        "data overrides it")
    p.add_argument("--prior-shift", type=float, default=None,
                   help=f"MAP pose prior: expected shift error, pixels (default {defaults.PRIOR_SHIFT_PX:g})")
    p.add_argument("--no-prior", action="store_true",
                   help="no pose prior: plain maximum of the FRC (as in the paper; also what --ring-weight uniform "
                        "means where a verb has it)")


def add_deprecated_alias(p: argparse.ArgumentParser, old: str, new: str, *, dest: str) -> None:
    """``old`` still works as ``new`` (one release), with a one-line note on stderr."""
    class _Deprecated(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"{parser.prog}: note: {old} is deprecated, use {new}", file=sys.stderr)
            setattr(namespace, self.dest, values)

    p.add_argument(old, dest=dest, type=float, action=_Deprecated, help=argparse.SUPPRESS)


# ---- one rule per flag ----------------------------------------------------------------------
def _positive(v) -> bool:
    return math.isfinite(v) and v > 0


def at_least(low: float, note: str = "") -> tuple:
    """The rule "a finite number ≥ ``low``" (for :func:`check`)."""
    return (lambda v: math.isfinite(v) and v >= low), f"must be ≥ {low:g}{note}"


POSITIVE = (_positive, "must be a positive number")
RESOLUTION = (_positive, "must be a positive resolution in Å")
PRIOR = (_positive, "must be > 0 (use --no-prior to switch the prior off)")

# flag -> (test on a given value, what the error says); a flag left out (None) is always fine
RULES = {
    "--iter": at_least(0), "--steps": at_least(1), "--chunk": at_least(1), "--threads": at_least(1),
    "--ngauss": at_least(1, " (leave it out to estimate it)"), "--seed": at_least(0),
    "--lr-angle": POSITIVE, "--lr-shift": POSITIVE, "--minres": RESOLUTION, "--maxres": RESOLUTION,
    "--prior-angle": PRIOR, "--prior-shift": PRIOR,
    "--mask-level": ((lambda v: 0 < v <= 1), "must be in (0, 1]"),
    "--drop-worst": ((lambda v: 0 <= v < 0.5), "must be a fraction in [0, 0.5)"),
    "--gmm-n-scale": ((lambda v: defaults.GMM_N_SCALE_RANGE[0] <= v <= defaults.GMM_N_SCALE_RANGE[1]),
                      "must be between {:g} and {:g}".format(*defaults.GMM_N_SCALE_RANGE)),
}


def check(args: argparse.Namespace, rules: Optional[dict] = None, tf_only: bool = False) -> None:
    """Check every flag of ``args`` that has a rule (:data:`RULES`, plus a verb's own ``rules``),
    the band order, symmetry names, ``--batch``, ``--gpu`` and the pose-prior flags; ``tf_only``:
    the verb runs on TensorFlow only.  Call it first in a verb's ``run``: nothing is read or
    written before it."""
    for flag, (ok, what) in {**RULES, **(rules or {})}.items():
        v = getattr(args, _dest(flag), None)
        if v is not None and not _safe(ok, v):
            raise InputError(f"{what} (got {v!r})", field=flag)
    maxres, minres = getattr(args, "maxres", None), getattr(args, "minres", None)
    if maxres is not None and minres is not None and maxres >= minres:
        raise InputError(f"--maxres {maxres:g} Å must be finer (smaller) than --minres {minres:g} Å",
                         field="--maxres")
    for flag in ("--sym", "--reimpose"):  # point-group names
        if getattr(args, _dest(flag), None):
            _symmetry(getattr(args, _dest(flag)), flag)
    if hasattr(args, "batch"):
        parse_batch(args.batch)
    if hasattr(args, "gpu"):
        from .parallel.flags import parse_gpus

        parse_gpus(args.gpu)
    if hasattr(args, "prior_angle"):
        pose_prior(args)
    if tf_only and getattr(args, "backend", defaults.BACKEND) != "tf":
        raise InputError("runs on TensorFlow only: use --backend tf", field="--backend")


def _symmetry(name: str, flag: str) -> None:
    from .symmetry import parse_symmetry

    try:
        parse_symmetry(name)
    except InputError as exc:
        raise InputError(exc.message, field=flag) from None


def _dest(flag: str) -> str:
    return {"--iter": "iterations", "--continue": "cont"}.get(flag, flag.lstrip("-").replace("-", "_"))


def _safe(ok, v) -> bool:
    try:
        return bool(ok(v))
    except (TypeError, ValueError):
        return False


def check_continue(args: argparse.Namespace, marker: str = "params.json") -> None:
    """``--continue`` needs a run to continue: ``--out``/``marker`` must exist."""
    if getattr(args, "cont", False) and not (Path(args.out) / marker).exists():
        raise InputError(f"nothing to continue (no {marker})", path=args.out, field="--continue")


def alignment_values(args: argparse.Namespace) -> dict:
    """Keyword values for the parameter dataclasses (FocusedParams, PatchParams), after :func:`check`."""
    from .parallel.flags import parse_gpus

    prior_angle, prior_shift = pose_prior(args)
    return dict(sym=args.sym and args.sym.upper(), ngauss=args.ngauss, maxres=args.maxres, minres=args.minres,
                batch=parse_batch(args.batch), chunk=args.chunk, steps=args.steps, lr_angle=args.lr_angle,
                lr_shift=args.lr_shift, ring_weight=args.ring_weight, prior_angle=prior_angle, prior_shift=prior_shift,
                gpu=parse_gpus(args.gpu), cpu=args.cpu, seed=args.seed, backend=args.backend, threads=args.threads,
                width_rule=getattr(args, "width_rule", defaults.WIDTH_RULE),
                mask_level=getattr(args, "mask_level", defaults.MASK_LEVEL),
                band_rule=getattr(args, "band_rule", defaults.BAND_RULE),
                align_from=getattr(args, "align_from", defaults.ALIGN_FROM),
                drop_worst=getattr(args, "drop_worst", defaults.DROP_WORST),
                gmm_fit=getattr(args, "gmm_fit", defaults.GMM_FIT),
                gmm_start=getattr(args, "gmm_start", defaults.GMM_START),
                gmm_local_res=getattr(args, "gmm_local_res", defaults.GMM_LOCAL_RES),
                gmm_n_scale=getattr(args, "gmm_n_scale", defaults.GMM_N_SCALE),
                gmm_density=getattr(args, "gmm_density", defaults.GMM_DENSITY))


def pose_prior(args: argparse.Namespace, angle_deg: float = defaults.PRIOR_ANGLE_DEG,
               shift_px: float = defaults.PRIOR_SHIFT_PX):
    """(prior angle in degrees, prior shift in pixels) from ``--prior-angle/--prior-shift/--no-prior/
    --ring-weight`` (defaults ``angle_deg``, ``shift_px``); (None, None) without a prior.  The prior
    needs SSNR ring weights; given values must be finite and > 0."""
    explicit = args.prior_angle is not None or args.prior_shift is not None
    ring_weight = getattr(args, "ring_weight", "ssnr")
    if explicit and (args.no_prior or ring_weight != "ssnr"):
        raise InputError("a pose prior needs --ring-weight ssnr and no --no-prior", field="--prior-angle")
    for flag in ("--prior-angle", "--prior-shift"):
        v = getattr(args, _dest(flag))
        if v is not None and not _positive(v):
            raise InputError(RULES[flag][1], field=flag)
    if args.no_prior or ring_weight != "ssnr":
        return None, None
    return args.prior_angle or angle_deg, args.prior_shift or shift_px


def warn_without_gpu(backend, args: argparse.Namespace, verb: str) -> None:
    """GPUs asked for (``--gpu``) and none seen by ``backend``: the one warning of every verb
    (:func:`gmmcore.backend.no_gpu_warning`), on stderr; the run goes on on the CPU."""
    from .backend import no_gpu_warning
    from .parallel.flags import parse_gpus

    gpu = parse_gpus(args.gpu)
    if gpu and not args.cpu:
        text = no_gpu_warning(gpu, args.cpu, backend.describe_devices(gpu, cpu_only=args.cpu), backend.name)
        if text:
            print(f"gmmcore {verb}: WARNING: {text}", file=sys.stderr)


def parse_batch(value) -> Union[int, str]:
    """``--batch``: a positive integer or 'auto'."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        b = int(value)
    except ValueError:
        raise InputError(f"not a batch size: {value!r} (a positive integer or 'auto')", field="--batch") from None
    if b < 1:
        raise InputError(f"must be ≥ 1 or 'auto' (got {value!r})", field="--batch")
    return b


def fixed_batch(args: argparse.Namespace) -> int:
    """``--batch`` of a verb whose engine needs a number (heterogeneity, conf2pose): 'auto' is
    refused with one line until that engine sizes its batches on the device."""
    batch = parse_batch(args.batch)
    if batch == "auto":
        raise InputError("'auto' is not available for this verb yet: give a number of particles "
                         f"(default {defaults.BATCH})", field="--batch")
    return batch


def check_band_on_grid(args: argparse.Namespace, apix: float) -> None:
    """The band against the pixel size (before anything is written): ``--minres`` and ``--maxres``
    must be coarser than Nyquist (2·apix, with the 5 % the refinement keeps)."""
    finest = 2.0 * apix * 1.05
    for flag in ("--maxres", "--minres"):
        v = getattr(args, _dest(flag), None)
        if v is not None and v <= finest:
            raise InputError(f"{v:g} Å is not coarser than Nyquist with margin ({finest:.2f} Å at {apix:g} Å/px)",
                             field=flag)


def run_grid(source) -> Optional[tuple]:
    """(box, Å/px, number of Gaussians of the final GMMs or None, average of the final half maps) of
    a finished run directory; None when the run cannot tell (the engine says why later)."""
    try:
        from .io.maps import read_map
        from .summary import RunSummary

        s = RunSummary.load(source)
        m, apix = read_map(s.path("half1"))
        m = 0.5 * (m + read_map(s.path("half2"))[0])
        n = None
        if s.final is not None and s.final.gmm:
            from .gmm.model import GMM

            n = min(len(GMM.load(s.path("gmm", h))) for h in (1, 2))
        return m.shape[0], float(apix), n, m
    except Exception:  # noqa: BLE001 - any unreadable run is reported by the engine with its own words
        return None


def check_user_mask(path, flag: str, box: int, apix: float, density=None) -> None:
    """A mask flag's file: on the grid, 0..1, not empty (:func:`gmmcore.masks.check_mask`) and, with
    ``density``, overlapping the particle (:func:`gmmcore.masks.check_overlap`)."""
    from .io.maps import read_map_on_grid
    from .masks import check_mask, check_overlap

    m = check_mask(read_map_on_grid(path, box, apix, field=flag), path=path, field=flag)
    if density is not None:
        check_overlap(m, density, apix, path=path, field=flag)


def claim_run_output(args: argparse.Namespace, kind: str, verb: str, inputs: Iterable = (),
                     input_runs: Iterable = (), lock_keys: Optional[Iterable[str]] = None) -> None:
    """:func:`gmmcore.safewrite.claim_output` for a run verb's ``--out`` (a run directory of ``kind``)."""
    from .safewrite import claim_output

    claim_output(args.out, kind, verb, inputs, input_runs=input_runs, lock_keys=lock_keys)


def existing(path, flag: str) -> str:
    """The absolute path of an input that must exist (else InputError naming ``flag``)."""
    if not Path(path).exists():
        raise InputError("file not found", path=path, field=flag)
    return str(Path(path).resolve())


def existing_all(args: argparse.Namespace, flags: Iterable[str]) -> dict:
    """{dest: absolute path or None} of the optional input files ``flags`` (each must exist if given)."""
    return {_dest(f): existing(getattr(args, _dest(f)), f) if getattr(args, _dest(f), None) else None for f in flags}
