"""The latent space of one half set: PCA, the sign of PC1, bins along PC1; the latents.csv file.

PCA (NumPy SVD of the centred latents): ``mean`` (L,), ``components`` (L, L) rows = PCs,
``explained_variance_ratio``.  The sign of a principal axis is arbitrary; we fix PC1's so that
moving along +PC1 *increases* the radius of gyration of the decoder's moving Gaussians (for an
open/closed motion: +PC1 = more open) — a rule each half applies on its own.

Bins: ``n_bins`` equal-count bins of the half's particles sorted by PC1 (quantiles).

``latents.csv`` (comma-separated, header line): ``rlnImageName,half,z1..zL,pc1,pc2`` — one row
per particle in the order of the particle table; pc1/pc2 from the PCA of the particle's own half.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import List

import numpy as np

from ..safewrite import atomic_path


@dataclass
class LatentPCA:
    mean: np.ndarray  # (L,)
    components: np.ndarray  # (L, L), rows = principal axes
    explained_variance_ratio: np.ndarray  # (L,)

    @classmethod
    def fit(cls, z: np.ndarray) -> "LatentPCA":
        z = np.asarray(z, np.float64)
        mean = z.mean(0)
        _, s, vt = np.linalg.svd(z - mean, full_matrices=False)
        var = s ** 2
        ratio = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
        L = z.shape[1]
        comps = np.zeros((L, L))
        comps[: len(vt)] = vt
        r = np.zeros(L)
        r[: len(ratio)] = ratio
        # deterministic signs: largest |loading| positive (PC1 is re-oriented by orient_pc1)
        for i in range(L):
            j = int(np.argmax(np.abs(comps[i])))
            if comps[i, j] < 0:
                comps[i] = -comps[i]
        return cls(mean, comps, r)

    def transform(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float64) - self.mean) @ self.components.T

    def point(self, pc1: float) -> np.ndarray:
        """The latent vector at ``pc1`` on the first axis (others 0)."""
        return self.mean + float(pc1) * self.components[0]

    def flip_pc1(self) -> None:
        self.components[0] = -self.components[0]

    def to_json(self) -> dict:
        return {"mean": self.mean.tolist(), "components": self.components.tolist(),
                "explained_variance_ratio": self.explained_variance_ratio.tolist()}


def radius_of_gyration(centers: np.ndarray, weights: np.ndarray) -> float:
    w = np.asarray(weights, np.float64)
    c = np.asarray(centers, np.float64)
    m = (c * w[:, None]).sum(0) / w.sum()
    return float(np.sqrt((((c - m) ** 2).sum(1) * w).sum() / w.sum()))


def orient_pc1(pca: LatentPCA, decode, moving: np.ndarray, amplitudes: np.ndarray, spread: float) -> bool:
    """Flip PC1 so that +PC1 increases the radius of gyration of the moving Gaussians
    (``decode(z) -> centres (N,3)``); ``spread`` = the PC1 distance probed each side.  Returns
    whether it flipped."""
    w = amplitudes[moving]
    rg = [radius_of_gyration(decode(pca.point(s))[moving], w) for s in (-spread, spread)]
    if rg[1] < rg[0]:
        pca.flip_pc1()
        return True
    return False


def pc1_bins(pc1: np.ndarray, n_bins: int) -> List[np.ndarray]:
    """Indices (into ``pc1``) of ``n_bins`` equal-count bins along PC1, lowest first."""
    order = np.argsort(pc1, kind="stable")
    return [b for b in np.array_split(order, max(1, int(n_bins))) if len(b)]


def write_latents_csv(path, image_names, half, latent: np.ndarray, pcs: np.ndarray) -> None:
    """Write latents.csv (module notes) atomically."""
    L = latent.shape[1]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["rlnImageName", "half"] + [f"z{i + 1}" for i in range(L)] + ["pc1", "pc2"])
            for name, h, z, p in zip(image_names, half, latent, pcs):
                w.writerow([name, int(h)] + [f"{v:.6g}" for v in z] + [f"{p[0]:.6g}", f"{p[1]:.6g}"])


def read_latents_csv(path) -> dict:
    """latents.csv → {"rlnImageName" (n,) str, "half" (n,), "latent" (n, L), "pc1", "pc2"}."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    head, body = rows[0], rows[1:]
    zc = [i for i, h in enumerate(head) if h.startswith("z") and h[1:].isdigit()]
    col = {h: i for i, h in enumerate(head)}
    return {"rlnImageName": np.array([r[col["rlnImageName"]] for r in body]),
            "half": np.array([int(r[col["half"]]) for r in body], np.int8),
            "latent": np.array([[float(r[i]) for i in zc] for r in body], np.float32).reshape(len(body), len(zc)),
            "pc1": np.array([float(r[col["pc1"]]) for r in body]), "pc2": np.array([float(r[col["pc2"]]) for r in body])}
