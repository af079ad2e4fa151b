"""Training one half set's encoder/decoder pair (streamed, checkpointed, resumable, deterministic).

Loss per particle: 1 − S(decoded GMM) + λ_z·|z|² + λ_f·mean|F|², S the ring-weighted FRC
(:mod:`gmmcore.heter.score`) of the GMM decoded from the particle's latent, projected at the
particle's pose, against the phase-flipped particle; z the latent, F the residual-head
displacements (Å; zero in round 1).  Optionally (``latent_noise`` σ_ε > 0) the decoder sees
z + ε, ε ~ N(0, σ_ε²), in training — with λ_z > 0 a bound on what each latent dimension carries.
Defaults λ_z = 0, σ_ε = 0, from a sweep on the simulator's hinge motion (ADK lid ±15°, SNR 2,
200 particles per half, 2 seeds × 2 halves): Spearman ρ(PC1, true angle) 0.87–0.91 with the
defaults, 0.89–0.91 with σ_ε = 0.5, λ_z = 1e-3 — but the decoded motion then shrinks to 0.43–0.49
of the true angle instead of 0.65–0.68 (regression to the mean of noisy latents), and
conformation-to-pose needs the amplitude.  Ring weights: the SSNR weights of :mod:`gmmcore.grids`
(population FRC × ring size) measured on a sample of the half's particles against the neutral GMM
(``ring_weight="uniform"``: the paper's plain average).

Rounds: "anchors" (``epochs`` epochs: encoder, decoder trunk and anchor head) then "full"
(``full_epochs`` epochs: everything, the residual head too).  Adam (β = 0.9, 0.999), written out
here on ``tf.Variable``s, fresh at the start of each round.

Streaming: each epoch visits the half's particles in an order drawn from
``default_rng([seed, half, round, epoch])``, ``chunk`` particles at a time (images read, phase
flipped and cropped per chunk; memory is bounded by the chunk), in fixed-size batches (the last
padded and masked), so one compiled step serves the whole run.

Checkpoint after every epoch (``checkpoint.npz`` in the half's folder, written atomically): the
network's arrays, Adam's state, the input scale and ring weights, the round/epoch reached and the
loss history.  A killed run resumes from its last checkpoint and — the order of every epoch being a
function of the seed, and the compiled functions traced afresh for every trainer — ends
bit-identical to an uninterrupted run.

Determinism: training and encoding turn on TensorFlow's op determinism
(:func:`deterministic_ops`; process-wide, irreversible), so one seed gives bit-identical networks
and latents on one machine — GPU kernels that would use atomics switch to deterministic ones, and
a GPU op without one raises instead of silently varying.  Not covered, each changing float32
rounding that 30 epochs amplify: oneDNN on/off (``TF_ENABLE_ONEDNN_OPTS=0`` moved latents by
≈ 3e-6 after 9 small epochs), the CPU's instruction set (oneDNN and Eigen pick AVX2 / AVX-512 /
AMX kernels per CPU), the TensorFlow/CUDA version, the GPU model, CPU vs GPU.  The CPU thread
count (``--threads``) gave bit-identical latents (1 vs 2 threads) but TensorFlow does not promise it.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from ..backend import get_backend
from ..gmm.align import particle_transforms
from ..grids import FourierGrid, ssnr_ring_weights
from ..io.stacks import iter_images
from ..particles import ParticleTable
from ..progress import progress
from ..safewrite import atomic_path
from .decoder import Decoder, DecoderLayout
from .encoder import Encoder, FeatureMaker
from .pair import HalfNetwork
from .score import GridTensors, weighted_frc

log = logging.getLogger("gmmcore.refine.heter")
F32 = tf.float32
ROUNDS = ("anchors", "full")


def deterministic_ops() -> None:
    """Turn on TensorFlow's op determinism for this process (idempotent).  No TF random op is used
    here (all randomness is NumPy from the seed), so its seed requirement does not apply."""
    tf.config.experimental.enable_op_determinism()


@dataclass(frozen=True)
class TrainSettings:
    """Network sizes and the training schedule (module notes)."""

    latent_dim: int = 4
    anchors: int = 32
    epochs: int = 20  # round 1 (anchors)
    full_epochs: int = 10  # round 2 (full GMM)
    batch: int = 16
    chunk: int = 20000
    lr: float = 1e-3
    lr_full: float = 3e-4
    latent_penalty: float = 0.0
    residual_penalty: float = 1e-3  # per Å²
    latent_noise: float = 0.0  # σ of Gaussian noise added to the latents while training
    amplitude: bool = False  # the decoder's amplitude head (decoder.py)
    ring_weight: str = "ssnr"
    n_sample: int = 1000  # particles for the input scale and the ring weights
    seed: int = 0

    def round_epochs(self, has_anchors: bool) -> List[Tuple[str, int]]:
        """[(round name, epochs)] — without anchors there is only the full round (epochs + full_epochs)."""
        if has_anchors:
            return [("anchors", int(self.epochs)), ("full", int(self.full_epochs))]
        return [("full", int(self.epochs) + int(self.full_epochs))]


# --------------------------------------------------------------------------------------------
# particles, streamed


def stream(table: ParticleTable, rows: np.ndarray, grid: FourierGrid, batch: int, chunk: int,
           order: Optional[np.ndarray] = None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield (table rows (≤ batch,), cropped phase-flipped transforms (≤ batch, ny, nx)) in the
    order ``rows[order]`` (default: as given), reading ``chunk`` images at a time."""
    seq = np.asarray(rows, np.int64) if order is None else np.asarray(rows, np.int64)[order]
    for c0 in range(0, len(seq), chunk):
        crows = seq[c0:c0 + chunk]
        F = np.empty((len(crows), *grid.shape), np.complex64)
        place = {int(r): i for i, r in enumerate(crows)}
        for pos, imgs in iter_images(table, crows, chunk=chunk):
            F[[place[int(r)] for r in pos]] = particle_transforms(imgs, table, pos, grid)
        for b0 in range(0, len(crows), batch):
            yield crows[b0:b0 + batch], F[b0:b0 + batch]


def _padded(table: ParticleTable, rows: np.ndarray, F: np.ndarray, batch: int):
    """Tensors of a batch padded to ``batch`` (repeating the last particle) and its 0/1 weights."""
    k = len(rows)
    pad = batch - k
    R, o = table.rotation[rows], table.origin[rows]
    w = np.ones(batch, np.float32)
    if pad:
        R = np.concatenate([R, np.repeat(R[-1:], pad, 0)])
        o = np.concatenate([o, np.repeat(o[-1:], pad, 0)])
        F = np.concatenate([F, np.repeat(F[-1:], pad, 0)])
        w[k:] = 0
    T = lambda x: tf.constant(np.asarray(x, np.float32))  # noqa: E731
    return T(R), T(o), T(F.real), T(F.imag), T(w)


# --------------------------------------------------------------------------------------------
# Adam on tf.Variables


class Adam:
    """Adam (Kingma & Ba) over a list of variables; state as NumPy for checkpoints."""

    def __init__(self, variables, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.b1, self.b2, self.eps = beta1, beta2, eps
        self.m = [tf.Variable(tf.zeros_like(v)) for v in variables]
        self.v = [tf.Variable(tf.zeros_like(v)) for v in variables]
        self.t = tf.Variable(0.0)

    def apply(self, grads, variables, lr) -> None:
        self.t.assign_add(1.0)
        c1 = 1.0 - tf.pow(self.b1, self.t)
        c2 = 1.0 - tf.pow(self.b2, self.t)
        for g, var, m, v in zip(grads, variables, self.m, self.v):
            m.assign(self.b1 * m + (1.0 - self.b1) * g)
            v.assign(self.b2 * v + (1.0 - self.b2) * tf.square(g))
            var.assign_sub(lr * (m / c1) / (tf.sqrt(v / c2) + self.eps))

    def state(self) -> Dict[str, np.ndarray]:
        out = {"adam.t": np.float32(self.t.numpy())}
        for i, (m, v) in enumerate(zip(self.m, self.v)):
            out[f"adam.m.{i}"], out[f"adam.v.{i}"] = m.numpy(), v.numpy()
        return out

    def load(self, a: Dict[str, np.ndarray]) -> None:
        self.t.assign(float(a["adam.t"]))
        for i, (m, v) in enumerate(zip(self.m, self.v)):
            m.assign(a[f"adam.m.{i}"])
            v.assign(a[f"adam.v.{i}"])


# --------------------------------------------------------------------------------------------
# checkpoints


class CheckpointStore:
    """``checkpoint.npz`` in a half's folder: arrays + a JSON ``state`` (round, epoch, history)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / "checkpoint.npz"

    def load(self) -> Optional[Tuple[dict, Dict[str, np.ndarray]]]:
        if not self.path.exists():
            return None
        with np.load(self.path, allow_pickle=False) as z:
            return json.loads(str(z["state"])), {k: z[k] for k in z.files if k != "state"}

    def save(self, state: dict, arrays: Dict[str, np.ndarray]) -> None:
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, state=np.array(json.dumps(state)), **arrays)


# --------------------------------------------------------------------------------------------
# one half's trainer


class HalfTrainer:
    """Trains, and then encodes with, one half set's encoder/decoder pair.

    ``rows``: this half's table rows (the only particles it ever reads); ``layout``: its decoder
    layout (from its own neutral GMM); ``grid``: the comparison band."""

    def __init__(self, table: ParticleTable, rows: np.ndarray, layout: DecoderLayout, grid: FourierGrid,
                 settings: TrainSettings, half: int, store: CheckpointStore, backend=None):
        self.table, self.rows, self.layout, self.grid = table, np.asarray(rows, np.int64), layout, grid
        self.s, self.half, self.store = settings, int(half), store
        self.backend = backend or get_backend()
        deterministic_ops()
        saved = store.load()
        if saved is not None:
            state, arrays = saved
            ring_w, scale = arrays["ring_weights"], float(arrays["input_scale"])
        else:
            state, arrays = None, None
            ring_w, scale = self._calibrate()
        self.ring_weights = np.asarray(ring_w, np.float32)
        self.gt = GridTensors.of(grid, self.ring_weights)
        self.features = FeatureMaker(layout, self.gt)
        rng = np.random.default_rng([settings.seed, self.half, 0])
        self.encoder = Encoder.init(3 * len(layout.moving), settings.latent_dim, scale, rng=rng)
        self.decoder = Decoder.init(layout, settings.latent_dim, rng=rng, amplitude=settings.amplitude)
        self._sigmas = tf.constant(layout.sigmas, F32)
        self.state = state or {"round": 0, "epoch": -1, "history": []}
        self._resume_arrays = arrays

    # ---- before training: ring weights and the encoder's input scale from a sample of this half
    def _sample_rows(self) -> np.ndarray:
        n = min(self.s.n_sample, len(self.rows))
        return np.unique(self.rows[np.linspace(0, len(self.rows) - 1, n).astype(np.int64)])

    def _calibrate(self) -> Tuple[np.ndarray, float]:
        sample = self._sample_rows()
        neutral = self.layout.neutral
        if self.s.ring_weight == "uniform":
            ring_w = np.full(self.grid.nrings, 1.0 / self.grid.nrings, np.float32)
        elif self.s.ring_weight == "ssnr":
            rings = []
            for pos, imgs in iter_images(self.table, sample, chunk=len(sample)):
                F = particle_transforms(imgs, self.table, pos, self.grid)
                rings.append(self.backend.frc_rings(neutral, self.grid, F, self.table.rotation[pos],
                                                    self.table.origin[pos]))
            ring_w = ssnr_ring_weights(np.concatenate(rings), self.grid).astype(np.float32)
        else:
            raise ValueError(f"unknown ring weighting {self.s.ring_weight!r}")
        gt = GridTensors.of(self.grid, ring_w)
        fm = FeatureMaker(self.layout, gt)
        feat = tf.function(fm)
        sq, cnt = 0.0, 0
        for rows, F in stream(self.table, sample, self.grid, self.s.batch, self.s.chunk):
            R, o, pre, pim, w = _padded(self.table, rows, F, self.s.batch)
            x = feat(R, o, pre, pim).numpy()[: len(rows)].astype(np.float64)
            sq += float((x * x).sum())
            cnt += x.size
        rms = np.sqrt(sq / max(cnt, 1))
        return ring_w, (1.0 / rms if rms > 0 else 1.0)

    # ---- variables
    def _net_arrays(self) -> Dict[str, np.ndarray]:
        return {**{f"net.{k}": v for k, v in self.encoder.arrays().items()},
                **{f"net.{k}": v for k, v in self.decoder.arrays().items() if k.startswith("dec.")}}

    def _load_net(self, a: Dict[str, np.ndarray]) -> None:
        for var, name in self._named_variables():
            var.assign(a[f"net.{name}"])

    def _named_variables(self):
        out = []
        for i, l in enumerate(self.encoder.mlp.layers):
            out += [(l.w, f"enc.{i}.w"), (l.b, f"enc.{i}.b")]
        for i, l in enumerate(self.decoder.trunk.layers):
            out += [(l.w, f"dec.trunk.{i}.w"), (l.b, f"dec.trunk.{i}.b")]
        if self.decoder.anchor_head is not None:
            out += [(self.decoder.anchor_head.w, "dec.anchor.w"), (self.decoder.anchor_head.b, "dec.anchor.b")]
        out += [(self.decoder.full_head.w, "dec.full.w"), (self.decoder.full_head.b, "dec.full.b")]
        if self.decoder.amplitude_head is not None:  # trained in both rounds
            out += [(self.decoder.amplitude_head.w, "dec.amp.w"), (self.decoder.amplitude_head.b, "dec.amp.b")]
        return out

    def _trainable(self, round_name: str):
        named = self._named_variables()
        if round_name == "anchors":
            return [v for v, n in named if not n.startswith("dec.full.")]
        return [v for v, _ in named]

    # ---- one round's compiled step (traced afresh per trainer and round)
    def _make_step(self, variables, adam: Adam, lr: float):
        s = self.s
        enc, dec, fm, gt = self.encoder, self.decoder, self.features, self.gt
        sigmas = self._sigmas
        lam_z, lam_f = float(s.latent_penalty), float(s.residual_penalty)

        @tf.function
        def step(R, o, pre, pim, w, noise):
            x = fm(R, o, pre, pim)
            with tf.GradientTape() as tape:
                z = enc(x)
                d, f, a = dec.decode(z + noise)  # one trunk pass for the centres and the amplitudes
                B = tf.shape(z)[0]
                padded = tf.concat([d, tf.zeros([B, 1, 3], F32)], axis=1)
                centers = dec._c0[None] + tf.gather(padded, dec._index, axis=1)
                score = weighted_frc(gt, centers, a, sigmas, R, o, pre, pim)
                wsum = tf.reduce_sum(w)
                data = tf.reduce_sum(w * (1.0 - score)) / wsum
                reg = lam_z * tf.reduce_sum(w * tf.reduce_sum(tf.square(z), 1)) / wsum
                reg += lam_f * tf.reduce_sum(w * tf.reduce_mean(tf.square(f), [1, 2])) / wsum
                loss = data + reg
            grads = tape.gradient(loss, variables)
            adam.apply(grads, variables, lr)
            return data

        return step

    def _checkpoint(self, adam: Adam) -> None:
        arrays = {**self._net_arrays(), **adam.state(), "ring_weights": self.ring_weights,
                  "input_scale": np.float64(self.encoder.input_scale)}
        self.store.save(self.state, arrays)

    # ---- training
    def train(self) -> List[dict]:
        """Train (or finish training) both rounds; returns the loss history
        [{"round", "epoch", "loss", "frc", "seconds"}] (loss = mean 1 − S over the half)."""
        rounds = self.s.round_epochs(len(self.layout.anchors) > 0)
        if self._resume_arrays is not None:
            self._load_net(self._resume_arrays)
            log.info("half %d: resuming after %s epoch %d", self.half, rounds[self.state["round"]][0],
                     self.state["epoch"] + 1)
        n = len(self.rows)
        for ri, (name, n_epochs) in enumerate(rounds):
            if ri < self.state["round"]:
                continue
            variables = self._trainable(name)
            adam = Adam(variables)
            lr = self.s.lr if name == "anchors" or len(rounds) == 1 else self.s.lr_full
            if ri == self.state["round"] and self._resume_arrays is not None and self.state["epoch"] >= 0:
                adam.load(self._resume_arrays)
            start = self.state["epoch"] + 1 if ri == self.state["round"] else 0
            step = self._make_step(variables, adam, lr)
            for epoch in range(start, n_epochs):
                t0 = time.time()
                rng = np.random.default_rng([self.s.seed, self.half, ri, epoch])
                order = rng.permutation(n)
                total, count = 0.0, 0
                bar = progress(total=n, desc=f"half {self.half} {name} {epoch + 1}/{n_epochs}", unit="ptcl")
                for rows, F in stream(self.table, self.rows, self.grid, self.s.batch, self.s.chunk, order):
                    noise = tf.constant((self.s.latent_noise * rng.standard_normal((self.s.batch, self.s.latent_dim)))
                                        .astype(np.float32))
                    data = float(step(*_padded(self.table, rows, F, self.s.batch), noise))
                    total += data * len(rows)
                    count += len(rows)
                    bar.update(len(rows))
                bar.close()
                loss = total / max(count, 1)
                rec = {"round": name, "epoch": epoch + 1, "loss": loss, "frc": 1.0 - loss,
                       "seconds": time.time() - t0}
                self.state = {"round": ri, "epoch": epoch, "history": self.state["history"] + [rec]}
                self._checkpoint(adam)
                log.info("  half %d %s epoch %d/%d: loss %.5f (%d particles, %.1f s)", self.half, name, epoch + 1,
                         n_epochs, loss, count, rec["seconds"])
            self.state = {"round": ri + 1, "epoch": -1, "history": self.state["history"]}
            self._resume_arrays = None
        return self.state["history"]

    def network(self) -> HalfNetwork:
        return HalfNetwork(self.half, self.encoder, self.decoder, self.grid, self.ring_weights)


# --------------------------------------------------------------------------------------------
# encoding with a trained pair


def encode(net: HalfNetwork, table: ParticleTable, rows: np.ndarray, batch: int = 64, chunk: int = 20000,
           with_scores: bool = True) -> Dict[str, np.ndarray]:
    """Latents of particles ``rows`` (this half's!) → {"latent" (k, L), "frc_neutral" (k,),
    "frc_decoded" (k,)} (ring-weighted FRC against the neutral and the decoded GMM)."""
    deterministic_ops()
    gt = GridTensors.of(net.grid, net.ring_weights)
    fm = FeatureMaker(net.decoder.layout, gt)
    enc, dec = net.encoder, net.decoder
    amps = tf.constant(dec.layout.amplitudes, F32)
    sigmas = tf.constant(dec.layout.sigmas, F32)
    c0 = tf.constant(dec.layout.centers, F32)

    @tf.function
    def run(R, o, pre, pim):
        z = enc(fm(R, o, pre, pim))
        if not with_scores:
            return z, tf.zeros([tf.shape(z)[0]]), tf.zeros([tf.shape(z)[0]])
        s0 = weighted_frc(gt, c0, amps, sigmas, R, o, pre, pim)
        s1 = weighted_frc(gt, dec(z), dec.amplitudes(z), sigmas, R, o, pre, pim)
        return z, s0, s1

    rows = np.asarray(rows, np.int64)
    out = {"latent": np.empty((len(rows), enc.latent_dim), np.float32), "frc_neutral": np.empty(len(rows), np.float32),
           "frc_decoded": np.empty(len(rows), np.float32)}
    i = 0
    for r, F in stream(table, rows, net.grid, batch, chunk):
        z, s0, s1 = run(*_padded(table, r, F, batch)[:4])
        k = len(r)
        out["latent"][i:i + k], out["frc_neutral"][i:i + k], out["frc_decoded"][i:i + k] = \
            z.numpy()[:k], s0.numpy()[:k], s1.numpy()[:k]
        i += k
    return out


def settings_json(s: TrainSettings) -> dict:
    return asdict(s)
