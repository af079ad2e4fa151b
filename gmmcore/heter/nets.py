"""Dense networks as plain ``tf.Module``/``tf.Variable``, and the saved-network file format.

No Keras: layers are ``y = act(x·W + b)`` on float32 variables, so a network is just its arrays
and a small architecture dictionary — nothing depends on a Keras or TensorFlow version.

Initial weights are drawn with NumPy from a seed (Glorot-uniform, biases 0; the last layer of a
network scaled by ``out_scale``), so initialisation is reproducible across TensorFlow versions.

File format of a saved network (``.npz``, NumPy ``savez``; :func:`save_network`/:func:`load_network`):

* ``architecture``: a JSON string ``{"format": "gmmcore-heter-network", "version": 1, ...}`` —
  layer sizes, activations and anything the owner needs (see :mod:`gmmcore.heter.decoder`);
* every array under its name, float32 (weights ``<net>.<i>.w`` of shape (in, out), biases
  ``<net>.<i>.b`` (out,)) plus the owner's constant arrays.

Loading needs only NumPy; :func:`mlp_from_arrays` rebuilds the ``tf.Module``.
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from ..errors import InputError
from ..safewrite import atomic_path

FORMAT = "gmmcore-heter-network"
VERSION = 1

_ACT = {"linear": None, "relu": tf.nn.relu, "elu": tf.nn.elu, "tanh": tf.tanh}


def glorot(n_in: int, n_out: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    lim = np.sqrt(6.0 / (n_in + n_out))
    return (scale * rng.uniform(-lim, lim, size=(n_in, n_out))).astype(np.float32)


class Dense(tf.Module):
    """y = act(x·W + b), W (in, out), b (out,)."""

    def __init__(self, w: np.ndarray, b: np.ndarray, activation: str = "linear", name: Optional[str] = None):
        super().__init__(name=name)
        if activation not in _ACT:
            raise ValueError(f"unknown activation {activation!r}")
        self.activation = activation
        self.w = tf.Variable(np.asarray(w, np.float32), name="w")
        self.b = tf.Variable(np.asarray(b, np.float32), name="b")

    def __call__(self, x):
        y = tf.matmul(x, self.w) + self.b
        f = _ACT[self.activation]
        return y if f is None else f(y)


class MLP(tf.Module):
    """A stack of :class:`Dense` layers; ``sizes`` = [in, hidden..., out], ``activation`` on every
    layer but the last (``out_activation``)."""

    def __init__(self, layers: List[Dense], name: Optional[str] = None):
        super().__init__(name=name)
        self.layers = list(layers)

    @classmethod
    def init(cls, sizes: Sequence[int], activation: str, rng: np.random.Generator, out_scale: float = 1.0,
             out_activation: str = "linear", name: Optional[str] = None) -> "MLP":
        layers = []
        n = len(sizes) - 1
        for i in range(n):
            last = i == n - 1
            w = glorot(sizes[i], sizes[i + 1], rng, out_scale if last else 1.0)
            layers.append(Dense(w, np.zeros(sizes[i + 1], np.float32), out_activation if last else activation))
        return cls(layers, name=name)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def spec(self) -> dict:
        """Architecture: sizes and activations (JSON-able)."""
        sizes = [int(self.layers[0].w.shape[0])] + [int(l.w.shape[1]) for l in self.layers]
        return {"sizes": sizes, "activations": [l.activation for l in self.layers]}

    def arrays(self, prefix: str) -> Dict[str, np.ndarray]:
        out = {}
        for i, l in enumerate(self.layers):
            out[f"{prefix}.{i}.w"] = l.w.numpy()
            out[f"{prefix}.{i}.b"] = l.b.numpy()
        return out


def mlp_from_arrays(spec: dict, arrays: Dict[str, np.ndarray], prefix: str) -> MLP:
    """Rebuild an :class:`MLP` saved with :meth:`MLP.arrays` / :meth:`MLP.spec`."""
    layers = []
    for i, act in enumerate(spec["activations"]):
        w, b = arrays[f"{prefix}.{i}.w"], arrays[f"{prefix}.{i}.b"]
        if w.shape != (spec["sizes"][i], spec["sizes"][i + 1]):
            raise ValueError(f"{prefix}.{i}.w has shape {w.shape}, the architecture says "
                             f"({spec['sizes'][i]}, {spec['sizes'][i + 1]})")
        layers.append(Dense(w, b, act))
    return MLP(layers)


def save_network(path, architecture: dict, arrays: Dict[str, np.ndarray]) -> None:
    """Write a network file (module notes) atomically."""
    arch = {"format": FORMAT, "version": VERSION, **architecture}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, architecture=np.array(json.dumps(arch, default=float)),
                     **{k: np.asarray(v) for k, v in arrays.items()})


def load_network(path) -> Tuple[dict, Dict[str, np.ndarray]]:
    """(architecture, arrays) of a network file; InputError naming the file if it is not one."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arch = json.loads(str(z["architecture"]))
            arrays = {k: z[k] for k in z.files if k != "architecture"}
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"not a gmmcore network file ({exc})", path=path) from None
    if arch.get("format") != FORMAT:
        raise InputError(f"not a gmmcore network file (format {arch.get('format')!r})", path=path)
    if int(arch.get("version", 0)) > VERSION:
        raise InputError(f"network file version {arch.get('version')} is newer than this gmmcore reads ({VERSION})",
                         path=path)
    return arch, arrays
