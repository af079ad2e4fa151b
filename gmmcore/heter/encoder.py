"""The encoder: particle → latent vector.

Input (the reference lineage's): the gradient of the particle's ring-weighted FRC
(:func:`gmmcore.heter.score.weighted_frc`) with respect to the centres of the moving Gaussians of
the neutral GMM, at the particle's pose — (M, 3) numbers in the model frame, i.e. "where the
neutral GMM's Gaussians would have to move to fit this particle better".  For a small
conformational change δ from the neutral GMM the gradient is ≈ H·δ (H the pose-dependent
curvature of the FRC), so a dense network can read the conformation from it.  The input is
multiplied by one global scale (1 / its RMS over a sample of the half's particles, fixed before
training and saved with the network).

Network: dense, ``sizes`` = [3M, 256, 64, L], ReLU, linear output (last layer scaled by 0.1 at
initialisation so that training starts with latents near 0).
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import tensorflow as tf

from .decoder import DecoderLayout
from .nets import MLP, mlp_from_arrays
from .score import GridTensors, weighted_frc

F32 = tf.float32


class FeatureMaker:
    """The encoder's input for a batch of particles (call inside a ``tf.function``)."""

    def __init__(self, layout: DecoderLayout, grid: GridTensors):
        self.grid = grid
        self.c0 = tf.constant(layout.centers, F32)
        self.amps = tf.constant(layout.amplitudes, F32)
        self.sigmas = tf.constant(layout.sigmas, F32)
        self.moving = tf.constant(layout.moving.astype(np.int32))
        self.M = len(layout.moving)

    def __call__(self, rotations, origins, part_re, part_im):
        """(B, 3M) FRC gradients (unscaled)."""
        B = tf.shape(rotations)[0]
        c = tf.broadcast_to(self.c0[None], [B, *self.c0.shape])  # one copy per particle: per-particle gradients
        with tf.GradientTape() as tape:
            tape.watch(c)
            s = tf.reduce_sum(weighted_frc(self.grid, c, self.amps, self.sigmas, rotations, origins, part_re, part_im))
        g = tape.gradient(s, c)
        return tf.reshape(tf.gather(g, self.moving, axis=1), [B, 3 * self.M])


class Encoder(tf.Module):
    """features (B, 3M) → latents (B, L)."""

    def __init__(self, mlp: MLP, input_scale: float):
        super().__init__(name="encoder")
        self.mlp = mlp
        self.input_scale = float(input_scale)
        self.latent_dim = int(mlp.layers[-1].w.shape[1])

    @classmethod
    def init(cls, n_in: int, latent_dim: int, input_scale: float, hidden=(256, 64),
             rng: np.random.Generator = None) -> "Encoder":
        rng = rng or np.random.default_rng(0)
        return cls(MLP.init([n_in, *hidden, latent_dim], "relu", rng, out_scale=0.1, name="mlp"), input_scale)

    def __call__(self, features):
        return self.mlp(features * self.input_scale)

    def spec(self) -> dict:
        return {"mlp": self.mlp.spec(), "input_scale": self.input_scale, "latent_dim": self.latent_dim}

    def arrays(self) -> Dict[str, np.ndarray]:
        return self.mlp.arrays("enc")

    @classmethod
    def from_arrays(cls, spec: dict, a: Dict[str, np.ndarray]) -> "Encoder":
        return cls(mlp_from_arrays(spec["mlp"], a, "enc"), spec["input_scale"])
