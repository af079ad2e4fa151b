"""One half set's encoder/decoder pair, with what it was trained on, in one network file.

``network_half{h}.npz`` (format of :mod:`gmmcore.heter.nets`): architecture JSON
``{"format", "version", "half", "encoder": {mlp, input_scale, latent_dim}, "decoder": {latent_dim,
trunk, anchors, moving}, "grid": {box, apix, resolution_A, minres_A}}`` and arrays ``enc.*``,
``dec.*``, the decoder layout (``neutral_centers`` (N,3) Å, ``neutral_amplitudes``,
``neutral_sigmas`` Å, ``move`` (N,), ``moving`` (M,), ``anchors`` (K,3) Å, ``interp`` (M,K)) and
``ring_weights`` (nrings,).  Everything needed to encode a particle or decode a latent.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..grids import FourierGrid
from .decoder import Decoder
from .encoder import Encoder
from .nets import load_network, save_network


@dataclass
class HalfNetwork:
    half: int
    encoder: Encoder
    decoder: Decoder
    grid: FourierGrid
    ring_weights: np.ndarray

    def arrays(self) -> dict:
        return {**self.encoder.arrays(), **self.decoder.arrays(), "ring_weights": np.asarray(self.ring_weights)}

    def architecture(self) -> dict:
        g = self.grid
        return {"half": int(self.half), "encoder": self.encoder.spec(), "decoder": self.decoder.spec(),
                "grid": {"box": int(g.box), "apix": float(g.apix), "resolution_A": float(g.resolution_A),
                         "minres_A": float(g.minres_A)}}

    def save(self, path) -> None:
        save_network(path, self.architecture(), self.arrays())

    @classmethod
    def load(cls, path) -> "HalfNetwork":
        arch, a = load_network(path)
        g = arch["grid"]
        return cls(int(arch["half"]), Encoder.from_arrays(arch["encoder"], a), Decoder.from_arrays(arch["decoder"], a),
                   FourierGrid(int(g["box"]), float(g["apix"]), float(g["resolution_A"]), float(g["minres_A"])),
                   a["ring_weights"])
