"""DNN heterogeneity analysis of a refinement run, independently per half set (GMM encoder/decoder).

Per half set: an encoder maps each particle (the gradient of its FRC with respect to the neutral
GMM's centres at its pose) to a latent vector; a hierarchical decoder maps a latent vector to the
GMM's centres (anchors from K-means drive the full GMM, then the full GMM is trained); latent 0 is
the half's neutral (consensus) GMM.  Loss: the ring-weighted FRC of the decoded GMM's projection at
the particle's pose.  The two halves' networks never see each other's particles or GMM.
Re-running the same command continues a killed run (checkpoint every epoch).

    gmmcore heterogeneity --from refined --latent 4 --anchors 32 --epochs 20 --out heter

Writes DIR/final/latents.csv (rlnImageName, half, z1..zL, pc1, pc2), the networks
(final/network_half{1,2}.npz), per half the PCA and GMMs + maps of --bins bins along PC1
(final/bins/), DIR/summary.json and DIR/run.log.  ``--res`` is the old name of ``--maxres``
(deprecated).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import defaults
from ..errors import InputError
from ..options import (POSITIVE, TF_ONLY, add_band_arguments, add_ring_weight_argument, add_run_arguments,
                       at_least, check, check_band_on_grid, check_continue, claim_run_output, existing_all,
                       fixed_batch, run_grid, warn_without_gpu)
from ..parallel.flags import parse_gpus
from ..resources import set_cpu_threads


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, help="a finished gmmcore refine run directory")
    p.add_argument("--out", required=True, help="run directory (re-running the same command continues it)")
    p.add_argument("--latent", type=int, default=4, help="latent dimensions (default 4)")
    p.add_argument("--anchors", type=int, default=32,
                   help="anchor Gaussians of the hierarchical decoder (K-means of the GMM; default 32; 0 = none)")
    p.add_argument("--mask", help="focus the analysis on a region (MRC): only Gaussians inside it move")
    p.add_argument("--epochs", type=int, default=20, help="epochs of the first (anchor) round (default 20)")
    p.add_argument("--full-epochs", type=int, default=10,
                   help="epochs of the second round, where every Gaussian is trained (default 10)")
    add_band_arguments(p, minres=defaults.HETEROGENEITY_MINRES_A, res_alias=True,
                       maxres_help="finest resolution in the FRC, Å (default: 7, as the reference implementation, or the "
                                   "run's final resolution where that is coarser)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, first round (default 1e-3)")
    p.add_argument("--lr-full", type=float, default=3e-4, help="Adam learning rate, second round (default 3e-4)")
    p.add_argument("--latent-noise", type=float, default=0.0,
                   help="σ of noise added to the latents in training (default 0: none; see gmmcore.heter.training)")
    p.add_argument("--latent-penalty", type=float, default=0.0,
                   help="weight of |z|² in the loss (default 0)")
    p.add_argument("--amplitude", choices=defaults.DECODER_AMPLITUDE_CHOICES, default=defaults.DECODER_AMPLITUDE,
                   help="on: the decoder also changes each moving Gaussian's amplitude with the latent (a part "
                        "that fades or appears, as well as moves); off: positions only (default "
                        f"{defaults.DECODER_AMPLITUDE})")
    add_ring_weight_argument(p)
    p.add_argument("--bins", type=int, default=5, help="bins along PC1 for the GMMs and maps (default 5)")
    add_run_arguments(p, seed_help="random seed (network initialisation, anchors, order)",
                      batch_help="particles per training batch", backend_help=TF_ONLY, batch_auto=False,
                      gpu_help="GPU id to use (default: the first GPU TensorFlow sees)")


MAX_BINS = 100

RULES = {"--latent": at_least(1), "--epochs": at_least(1),
         "--bins": ((lambda v: 1 <= v <= MAX_BINS), f"must be between 1 and {MAX_BINS}"), "--anchors": at_least(0),
         "--full-epochs": at_least(0), "--latent-noise": at_least(0), "--latent-penalty": at_least(0),
         "--lr": POSITIVE, "--lr-full": POSITIVE}


def run(args: argparse.Namespace) -> int:
    check(args, RULES, tf_only=True)
    batch = fixed_batch(args)
    src = Path(args.source)
    if not src.is_dir():
        raise InputError("not a run directory", path=src, field="--from")
    check_continue(args)
    mask = existing_all(args, ("--mask",))["mask"]
    grid = run_grid(src)
    if grid is not None:
        check_band_on_grid(args, grid[1])
    claim_run_output(args, "heterogeneity", "heterogeneity", [mask], input_runs=[src])
    from ..backend import get_backend

    backend = get_backend("tf")  # TensorFlow imported with its start-up chatter kept off stderr, before the networks
    warn_without_gpu(backend, args, "heterogeneity")
    from ..heter.analysis import HeterogeneityParams, run_heterogeneity

    if args.threads is not None:  # the networks' thread pools and FFT workers follow it
        set_cpu_threads(args.threads)
    params = HeterogeneityParams(
        source=str(src.resolve()), out=str(args.out), latent=args.latent, anchors=args.anchors,
        mask=mask, epochs=args.epochs, full_epochs=args.full_epochs,
        res=args.maxres, minres=args.minres, batch=batch, chunk=args.chunk, lr=args.lr, lr_full=args.lr_full,
        latent_noise=args.latent_noise, latent_penalty=args.latent_penalty, ring_weight=args.ring_weight,
        amplitude=args.amplitude, bins=args.bins, seed=args.seed, gpu=parse_gpus(args.gpu), cpu=args.cpu)
    run_heterogeneity(params)
    return 0

