"""Plain matplotlib plots of gmmcore heterogeneity and conf2pose runs (headless, like :mod:`.refine`).

Inputs are the files those runs write, read through the run contract (:mod:`gmmcore.summary`):
a heterogeneity run's ``summary.json`` (:class:`gmmcore.summary.HeterogeneitySummary`),
``final/latents.csv`` (:func:`gmmcore.heter.latent.read_latents_csv`) and its maps along PC1; a
conf2pose run's ``summary.json`` (:class:`gmmcore.summary.RunSummary`, kind "conf2pose") and
``convert/pose_changes.npz``.
"""
import os

import numpy as np

from gmmcore.summary import HeterogeneitySummary, RunSummary

from .refine import _new_figure, _save, pose_change_figure

HALF_COLOURS = {1: "tab:blue", 2: "tab:orange"}


def load_heterogeneity(summary):
    """A HeterogeneitySummary from itself, a summary.json path or a run folder."""
    return summary if isinstance(summary, HeterogeneitySummary) else HeterogeneitySummary.load(summary)


def read_latents(summary):
    from gmmcore.heter.latent import read_latents_csv
    s = load_heterogeneity(summary)
    return read_latents_csv(s.path(s.latents))


# ----------------------------------------------------------------------------------- latent space
def _density(x, y, bins=40):
    """Per-point density from a 2-D histogram (counts of the point's cell, lightly smoothed)."""
    from scipy.ndimage import gaussian_filter
    h, xe, ye = np.histogram2d(x, y, bins=bins)
    h = gaussian_filter(h, 1.0)
    ix = np.clip(np.searchsorted(xe, x, side="right") - 1, 0, bins - 1)
    iy = np.clip(np.searchsorted(ye, y, side="right") - 1, 0, bins - 1)
    return h[ix, iy]


def latent_figure(summary, fig=None):
    """PC1 vs PC2 of every particle (PCA within its half): coloured by density (left, each half's
    own axes overlaid) and by half set (right)."""
    lat = read_latents(summary)
    fig = fig or _new_figure((11.0, 4.8))
    x, y, half = lat["pc1"], lat["pc2"], lat["half"]
    ax = fig.add_subplot(1, 2, 1)
    if len(x):
        d = np.empty(len(x))
        for h in (1, 2):
            m = half == h
            if m.any():
                d[m] = _density(x[m], y[m])
        order = np.argsort(d)
        sc = ax.scatter(x[order], y[order], c=d[order], s=6, cmap="viridis")
        fig.colorbar(sc, ax=ax, label="density (particles per cell)")
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_title("latent space, coloured by density", fontsize=10)
    ax = fig.add_subplot(1, 2, 2)
    for h in (1, 2):
        m = half == h
        ax.scatter(x[m], y[m], s=6, alpha=0.6, color=HALF_COLOURS[h], label="half %d (%d)" % (h, int(m.sum())))
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_title("by half set (each half has its own latent space)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_latent(summary, path):
    return _save(latent_figure(summary), path)


# ----------------------------------------------------------------------------------- training
def loss_figure(summary, fig=None):
    """Training loss (mean 1 − ring-weighted FRC) per epoch for each half; the round boundary dashed."""
    s = load_heterogeneity(summary)
    fig = fig or _new_figure((6.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for h, rep in sorted(s.halves.items()):
        loss = rep.losses()
        ax.plot(np.arange(1, len(loss) + 1), loss, "o-", ms=3, color=HALF_COLOURS[int(h)], label="half %s" % h)
        rounds = [r.get("round") for r in rep.history]
        if "full" in rounds and rounds.index("full") > 0:
            ax.axvline(rounds.index("full") + 0.5, color="grey", ls="--", lw=1)
    ax.set_xlabel("epoch (anchor round, then full GMM)")
    ax.set_ylabel("loss: mean 1 − FRC")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_loss(summary, path):
    return _save(loss_figure(summary), path)


# ----------------------------------------------------------------------------------- maps along PC1
def pc1_maps_figure(summary, fig=None):
    """Projections (sum along z) of the maps reconstructed from the particles of each PC1 bin:
    one row per half, bins left to right."""
    import mrcfile
    s = load_heterogeneity(summary)
    halves = sorted(s.halves)
    nb = max(len(s.halves[h].bins) for h in halves) if halves else 0
    fig = fig or _new_figure((2.2 * max(nb, 1), 2.4 * max(len(halves), 1)))
    for r, h in enumerate(halves):
        for k, b in enumerate(s.halves[h].bins):
            ax = fig.add_subplot(len(halves), nb, r * nb + k + 1)
            with mrcfile.open(s.path(b["map"]), permissive=True) as m:
                img = np.asarray(m.data, np.float32).sum(0)
            ax.imshow(img, cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title("half %s, PC1 %.2f\n%d particles" % (h, b["pc1"], b["n"]), fontsize=8)
    fig.tight_layout()
    return fig


def plot_pc1_maps(summary, path):
    return _save(pc1_maps_figure(summary), path)


def chimerax_series_script(summary, path):
    """A ChimeraX script opening each half's maps along PC1 as a volume series (play with the
    slider, or 'vseries play'); returns its path."""
    s = load_heterogeneity(summary)
    lines = []
    for h in sorted(s.halves):
        files = [os.path.abspath(s.path(b["map"])) for b in s.halves[h].bins]
        if files:
            lines.append("open %s vseries true" % " ".join(files))
    lines.append("volume all style surface")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------------- conf2pose
def region_fsc_figure(summary, fig=None):
    """FSC within the region's mask: consensus poses, converted poses, each focused iteration."""
    s = summary if isinstance(summary, RunSummary) else RunSummary.load(summary)
    fig = fig or _new_figure((6.5, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    cons = s.consensus
    if cons is not None:
        ax.plot(cons.fsc["freq"], cons.fsc["masked"], "k--", label="consensus (%.2f Å)" % cons.resolution)
    start = None if s.initial is None else s.initial.focus_curve()
    if start is not None:
        ax.plot(start[0], start[1], color="tab:green", label="converted poses (%.2f Å)" % start[2])
    for rec in s.iterations:
        focus = rec.report.focus_curve()
        if focus is not None:
            ax.plot(focus[0], focus[1], label="focused %d (%.2f Å)" % (rec.iteration, focus[2]))
    ax.axhline(0.143, color="grey", lw=0.8)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC within the region's mask")
    ax.set_ylim(-0.1, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_region_fsc(summary, path):
    return _save(region_fsc_figure(summary), path)


def conversion_pose_changes(summary):
    """Path of the conversion's pose_changes.npz (converted vs consensus poses)."""
    s = summary if isinstance(summary, RunSummary) else RunSummary.load(summary)
    if s.conversion is None:
        raise KeyError("the run has no conversion step yet")
    return s.rel(s.conversion.pose_changes)


def plot_conversion_pose_changes(summary, path, bins=40):
    return _save(pose_change_figure(conversion_pose_changes(summary), bins=bins), path)
