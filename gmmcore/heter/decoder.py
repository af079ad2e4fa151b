"""The hierarchical GMM decoder: latent z → the centres of a GMM in conformation z.

Layout (:class:`DecoderLayout`, fixed for a half set):

* the neutral GMM (the consensus GMM of the half): centres c⁰ (N, 3) Å, amplitudes, widths;
* per-Gaussian motion weights m_j ∈ [0, 1] (1 everywhere, or a focus mask sampled at c⁰_j): only
  the M Gaussians with m_j > 0 ("moving") are displaced, by m_j × their displacement;
* K anchors: amplitude-weighted K-means of the moving centres (the "small GMM" of the
  hierarchical decoder); each moving Gaussian follows the anchors through fixed interpolation
  weights W_jk ∝ exp(−|c⁰_j − a_k|² / 2ℓ²), rows summing to 1, ℓ = the anchors' mean
  nearest-neighbour distance.

Network: a dense trunk z → h; an anchor head h → A(z) (K, 3) Å; a residual head h → F(z) (M, 3) Å
(zero at initialisation).  Displacement of moving Gaussian j:

    d_j(z) = m_j · ([W·A(z) + F(z)]_j − [W·A(0) + F(0)]_j)

so the decoder at z = 0 *is* the neutral GMM, exactly, whatever the weights (the reference
pre-trains its decoder towards this; here it holds by construction and cannot drift in training).
Round 1 trains the anchor path (the small GMM drives the full GMM); round 2 also trains F (the
full GMM).  Widths are the neutral GMM's; so are the amplitudes, unless the decoder has an
**amplitude head** (``amplitude=True``; off by default): h → G(z) (M,), zero at initialisation, and
moving Gaussian j's amplitude

    a_j(z) = a⁰_j · exp(m_j · 3·tanh((G_j(z) − G_j(0)) / 3))

— the neutral amplitude at z = 0 exactly, at most e^±3 times it anywhere (a Gaussian can fade, as
a partly occupied subunit does, or grow, but never change sign).  It is trained in both rounds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from ..gmm.model import GMM
from .nets import MLP, Dense, mlp_from_arrays

F32 = tf.float32


@dataclass
class DecoderLayout:
    """Constants of a decoder (module notes)."""

    centers: np.ndarray  # (N, 3) Å, the neutral GMM
    amplitudes: np.ndarray  # (N,)
    sigmas: np.ndarray  # (N,) Å
    move: np.ndarray  # (N,) motion weights 0..1
    moving: np.ndarray  # (M,) indices of Gaussians with move > 0
    anchors: np.ndarray  # (K, 3) Å (K = 0: no hierarchy)
    interp: np.ndarray  # (M, K)

    @property
    def neutral(self) -> GMM:
        return GMM(self.centers, self.amplitudes, self.sigmas)

    def arrays(self) -> Dict[str, np.ndarray]:
        return {"neutral_centers": self.centers, "neutral_amplitudes": self.amplitudes,
                "neutral_sigmas": self.sigmas, "move": self.move, "moving": self.moving, "anchors": self.anchors,
                "interp": self.interp}

    @classmethod
    def from_arrays(cls, a: Dict[str, np.ndarray]) -> "DecoderLayout":
        return cls(a["neutral_centers"], a["neutral_amplitudes"], a["neutral_sigmas"], a["move"],
                   a["moving"].astype(np.int64), a["anchors"], a["interp"])


def anchor_interpolation(points: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(M, K) weights exp(−d²/2ℓ²) normalised per row, ℓ = mean nearest-neighbour distance of the
    anchors (module notes)."""
    from scipy.spatial import cKDTree

    p, a = np.asarray(points, np.float64), np.asarray(anchors, np.float64)
    if len(a) == 1:
        return np.ones((len(p), 1), np.float32)
    d_nn, _ = cKDTree(a).query(a, k=2)
    ell = float(np.mean(d_nn[:, 1]))
    d2 = ((p[:, None, :] - a[None, :, :]) ** 2).sum(-1)
    logw = -d2 / (2 * ell * ell)
    logw -= logw.max(axis=1, keepdims=True)
    w = np.exp(logw)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def make_layout(neutral: GMM, move: Optional[np.ndarray], n_anchors: int, seed: int) -> DecoderLayout:
    """Layout for a neutral GMM: motion weights (None: all 1), K-means anchors of the moving
    Gaussians (amplitude × weight weighted; K ≤ M; 0 = no anchors)."""
    from sklearn.cluster import KMeans

    N = len(neutral)
    move = np.ones(N, np.float32) if move is None else np.clip(np.asarray(move, np.float32).reshape(-1), 0, 1)
    moving = np.flatnonzero(move > 0).astype(np.int64)
    pts = neutral.centers[moving].astype(np.float64)
    K = int(min(max(n_anchors, 0), len(moving)))
    if K > 0:
        w = (neutral.amplitudes[moving] * move[moving]).astype(np.float64)
        km = KMeans(n_clusters=K, init="k-means++", n_init=1, max_iter=300, tol=1e-6, random_state=seed)
        km.fit(pts, sample_weight=np.maximum(w, 1e-12))
        anchors = km.cluster_centers_.astype(np.float32)
        interp = anchor_interpolation(pts, anchors)
    else:
        anchors = np.zeros((0, 3), np.float32)
        interp = np.zeros((len(moving), 0), np.float32)
    return DecoderLayout(neutral.centers.copy(), neutral.amplitudes.copy(), neutral.sigmas.copy(), move, moving,
                         anchors, interp)


class Decoder(tf.Module):
    """latent (B, L) → centres (B, N, 3) Å (module notes)."""

    AMPLITUDE_RANGE = 3.0  # |log a_j(z) − log a⁰_j| < 3 (module notes)

    def __init__(self, layout: DecoderLayout, trunk: MLP, anchor_head: Optional[Dense], full_head: Dense,
                 amplitude_head: Optional[Dense] = None):
        super().__init__(name="decoder")
        self.layout = layout
        self.trunk, self.anchor_head, self.full_head = trunk, anchor_head, full_head
        self.amplitude_head = amplitude_head
        self.latent_dim = int(trunk.layers[0].w.shape[0])
        M = len(layout.moving)
        self._c0 = tf.constant(layout.centers, F32)
        self._move = tf.constant(layout.move[layout.moving], F32)
        self._interp = tf.constant(layout.interp, F32)
        # Gaussian j → its row among the moving ones, or M (a zero row) when it does not move
        index = np.full(len(layout.centers), M, np.int32)
        index[layout.moving] = np.arange(M, dtype=np.int32)
        self._index = tf.constant(index)
        self._a0 = tf.constant(layout.amplitudes, F32)
        self.M, self.K = M, len(layout.anchors)

    @classmethod
    def init(cls, layout: DecoderLayout, latent_dim: int, hidden=(64, 256), rng: np.random.Generator = None,
             anchor_scale: float = 0.1, amplitude: bool = False) -> "Decoder":
        rng = rng or np.random.default_rng(0)
        trunk = MLP.init([latent_dim, *hidden], "elu", rng, out_activation="elu", name="trunk")
        h = int(hidden[-1])
        K, M = len(layout.anchors), len(layout.moving)
        anchor = None
        if K:
            from .nets import glorot

            anchor = Dense(glorot(h, 3 * K, rng, anchor_scale), np.zeros(3 * K, np.float32), name="anchor")
        full = Dense(np.zeros((h, 3 * M), np.float32), np.zeros(3 * M, np.float32), name="full")
        amp = Dense(np.zeros((h, M), np.float32), np.zeros(M, np.float32), name="amplitude") if amplitude else None
        return cls(layout, trunk, anchor, full, amp)

    def _raw(self, z):
        """One trunk pass → (displacement (B, M, 3), residual part (B, M, 3), amplitude head (B, M) or None)."""
        h = self.trunk(z)
        B = tf.shape(z)[0]
        f = tf.reshape(self.full_head(h), [B, self.M, 3])
        d = f
        if self.anchor_head is not None:
            a = tf.reshape(self.anchor_head(h), [B, self.K, 3])
            d = d + tf.einsum("mk,bkc->bmc", self._interp, a)
        return d, f, None if self.amplitude_head is None else self.amplitude_head(h)

    def decode(self, z):
        """(moving displacements (B, M, 3) Å, residual-head part (B, M, 3) Å, amplitudes (B, N) — the
        neutral ones (N,) without an amplitude head) at latents z (B, L), from one trunk pass at z and
        one at 0: displacements zero and amplitudes neutral at z = 0."""
        d, f, g = self._raw(z)
        d0, f0, g0 = self._raw(tf.zeros([1, self.latent_dim], F32))
        amps = self._a0
        if g is not None:
            r = self.AMPLITUDE_RANGE
            factor = tf.exp(self._move[None, :] * r * tf.tanh((g - g0) / r))  # (B, M)
            padded = tf.concat([factor, tf.ones([tf.shape(z)[0], 1], F32)], axis=1)
            amps = self._a0[None] * tf.gather(padded, self._index, axis=1)
        return (d - d0) * self._move[None, :, None], f - f0, amps

    def displacements(self, z):
        """(moving displacements (B, M, 3) Å, residual-head part (B, M, 3) Å), both zero at z = 0."""
        d, f, _ = self.decode(z)
        return d, f

    def amplitudes(self, z):
        """Amplitudes (B, N) of the GMMs at latents z (B, L) — the neutral ones (N,) without an
        amplitude head."""
        return self.decode(z)[2]

    def __call__(self, z):
        """Centres (B, N, 3) of the GMMs at latents z (B, L)."""
        d, _ = self.displacements(z)
        B = tf.shape(z)[0]
        padded = tf.concat([d, tf.zeros([B, 1, 3], F32)], axis=1)
        return self._c0[None] + tf.gather(padded, self._index, axis=1)

    def gmm(self, z: np.ndarray) -> GMM:
        """The GMM at one latent vector (L,)."""
        zt = tf.constant(np.asarray(z, np.float32).reshape(1, -1))
        c = self(zt)[0].numpy()
        a = self.layout.amplitudes if self.amplitude_head is None else self.amplitudes(zt)[0].numpy()
        return GMM(c, a, self.layout.sigmas)

    # ---- saving
    def spec(self) -> dict:
        return {"latent_dim": self.latent_dim, "trunk": self.trunk.spec(), "anchors": self.K, "moving": self.M,
                "amplitude": self.amplitude_head is not None}

    def arrays(self) -> Dict[str, np.ndarray]:
        out = {**self.trunk.arrays("dec.trunk"), "dec.full.w": self.full_head.w.numpy(),
               "dec.full.b": self.full_head.b.numpy(), **self.layout.arrays()}
        if self.anchor_head is not None:
            out.update({"dec.anchor.w": self.anchor_head.w.numpy(), "dec.anchor.b": self.anchor_head.b.numpy()})
        if self.amplitude_head is not None:
            out.update({"dec.amp.w": self.amplitude_head.w.numpy(), "dec.amp.b": self.amplitude_head.b.numpy()})
        return out

    @classmethod
    def from_arrays(cls, spec: dict, a: Dict[str, np.ndarray]) -> "Decoder":
        layout = DecoderLayout.from_arrays(a)
        trunk = mlp_from_arrays(spec["trunk"], a, "dec.trunk")
        anchor = Dense(a["dec.anchor.w"], a["dec.anchor.b"]) if spec["anchors"] else None
        amp = Dense(a["dec.amp.w"], a["dec.amp.b"]) if spec.get("amplitude") else None  # absent: saved before it existed
        return cls(layout, trunk, anchor, Dense(a["dec.full.w"], a["dec.full.b"]), amp)
