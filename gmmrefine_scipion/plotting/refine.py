"""Plain matplotlib plots of gmmcore refine results; headless (no pyplot state, Agg canvas).

Each ``*_figure(..., fig=None)`` draws into ``fig`` (a matplotlib Figure, e.g. from a Scipion
Plotter for an interactive window) or a new off-screen Figure, and returns it.  Each
``plot_*(..., path)`` writes a PNG and returns the path.  Inputs are the files a refine run
writes, read through the run contract (:mod:`gmmcore.summary`): ``summary.json``,
``final/pose_changes.npz``, ``*.gmm.npz`` (:class:`gmmcore.gmm.model.GMM`).
"""
import os

import numpy as np

from gmmcore.fsc import resolution_at as resolution_from_curve  # noqa: F401 (the one FSC-crossing rule)
from gmmcore.summary import RunSummary

FSC_THRESHOLD = 0.143


# ----------------------------------------------------------------------------------- helpers
def _new_figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    return path


def load_summary(summary):
    """A :class:`gmmcore.summary.RunSummary` from a RunSummary, a summary.json path or a run folder."""
    return summary if isinstance(summary, RunSummary) else RunSummary.load(summary)


def summary_path(summary, key, half=None):
    """Absolute path of a file of the run's final outputs (see RunSummary.path)."""
    return load_summary(summary).path(key, half)


def fsc_curves(summary, masked=True):
    """[(label, freq, fsc, resolution_A)] for the input poses and every iteration."""
    return load_summary(summary).fsc_curves(masked=masked)


# ----------------------------------------------------------------------------------- FSC
def fsc_figure(summary, fig=None, masked=None):
    """Gold-standard FSC: input poses (black), each iteration (colour ramp), final (bold red);
    0.143 line; resolution in the legend.  ``masked=None`` draws masked and unmasked side by side."""
    summary = load_summary(summary)
    kinds = [True, False] if masked is None else [bool(masked)]
    fig = fig or _new_figure((6.0 * len(kinds), 4.6))
    import matplotlib
    cmap = matplotlib.colormaps["viridis"]
    for k, m in enumerate(kinds):
        ax = fig.add_subplot(1, len(kinds), k + 1)
        curves = fsc_curves(summary, masked=m)
        n_iter = sum(1 for c in curves if c[0].startswith("iteration"))
        j = 0
        for label, freq, fsc, res in curves:
            text = "%s (%.2f Å)" % (label, res)
            if label == "input poses":
                ax.plot(freq, fsc, color="black", lw=2.0, ls="--", label=text)
            else:
                j += 1
                last = j == n_iter
                ax.plot(freq, fsc, color="tab:red" if last else cmap(0.15 + 0.7 * (j - 1) / max(n_iter - 1, 1)),
                        lw=2.4 if last else 1.0, label=text + (" final" if last else ""))
        ax.axhline(FSC_THRESHOLD, color="grey", lw=0.8, ls=":")
        ax.text(0.99, FSC_THRESHOLD + 0.02, "0.143", color="grey", ha="right", transform=ax.get_yaxis_transform())
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_ylim(-0.1, 1.05)
        ax.set_xlim(left=0)
        ax.set_xlabel("spatial frequency (1/Å)")
        ax.set_ylabel("FSC")
        ax.set_title("gold-standard FSC, %s" % ("masked" if m else "unmasked"))
        ax.legend(fontsize=7, loc="lower left")
        _resolution_axis(ax)
    fig.tight_layout()
    return fig


def _resolution_axis(ax):
    """Top axis labelled in Å at the bottom axis' frequency ticks."""
    ax2 = ax.twiny()
    lo, hi = ax.get_xlim()
    ax2.set_xlim(lo, hi)
    ticks = [t for t in ax.get_xticks() if lo < t <= hi and t > 0]
    ax2.set_xticks(ticks)
    ax2.set_xticklabels(["%.1f" % (1.0 / t) for t in ticks])
    ax2.set_xlabel("resolution (Å)")


def plot_fsc(summary, path, masked=None):
    return _save(fsc_figure(summary, masked=masked), path)


def resolution_figure(summary, fig=None):
    """Resolution (masked, unmasked) per iteration, iteration 0 = input poses; beside it, where the
    run recorded them, the GMMs' fidelity per iteration (:func:`fidelity_axes`)."""
    summary = load_summary(summary)
    fidelity = fidelity_records(summary)
    fig = fig or _new_figure((11.0, 4.0) if fidelity else (5.5, 4.0))
    ax = fig.add_subplot(1, 2 if fidelity else 1, 1)
    its, rm, ru = [], [], []
    if summary.initial is not None:
        its.append(0)
        rm.append(summary.initial.resolution_masked)
        ru.append(summary.initial.resolution_unmasked)
    for rec in summary.iterations:
        its.append(rec.iteration)
        rm.append(rec.report.resolution_masked)
        ru.append(rec.report.resolution_unmasked)
    ax.plot(its, rm, "o-", label="masked")
    ax.plot(its, ru, "s--", label="unmasked")
    ax.set_xlabel("iteration (0 = input poses)")
    ax.set_ylabel("resolution at FSC 0.143 (Å)")
    ax.set_xticks(its)
    ax.legend()
    if fidelity:
        fidelity_axes(fig.add_subplot(1, 2, 2), fidelity)
    fig.tight_layout()
    return fig


def fidelity_records(summary):
    """The iterations that recorded the GMMs' fidelity (none in runs of older versions)."""
    return [rec for rec in load_summary(summary).iterations if rec.gmm_cross_fsc]


def fidelity_axes(ax, records):
    """Per iteration, mean over the GMM's band: each half's GMM against the half map it was fitted
    to (the fit's own report, on the fit's shells), against the other half map (the signal it holds)
    and what a GMM equal to the truth would score (√FSC of the half maps) — gmmcore.gmm.fidelity."""
    its = [rec.iteration for rec in records]
    for h, marker in (("1", "o"), ("2", "s")):
        ax.plot(its, [rec.gmm_fsc.get(h, np.nan) for rec in records], marker + ":", color="0.55",
                label="half %s GMM vs its own half map" % h)
        ax.plot(its, [rec.gmm_cross_fsc.get(h, np.nan) for rec in records], marker + "-",
                label="half %s GMM vs the other half map" % h)
    ax.plot(its, [rec.gmm_fsc_ceiling for rec in records], "k--", label="the truth would score")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean FSC over the GMM's band")
    ax.set_xticks(its)
    ax.set_title("GMM fidelity")
    ax.legend(fontsize="small")


def plot_resolution(summary, path):
    return _save(resolution_figure(summary), path)


# ----------------------------------------------------------------------------------- GMM
def load_gmm(path):
    """(centers (N,3) Å, amplitudes (N,), sigmas (N,) Å) from a .gmm.npz file."""
    from gmmcore.gmm.model import GMM
    g = GMM.load(path)
    return g.centers.astype(float), g.amplitudes.astype(float), g.sigmas.astype(float)


def gmm_figure(gmm_paths, fig=None, labels=None):
    """3-D scatter of each GMM: colour = amplitude, marker size = width.  ``gmm_paths`` is a list
    or a {half: path} dict."""
    if isinstance(gmm_paths, dict):
        labels = labels or ["half %s" % k for k in gmm_paths]
        gmm_paths = list(gmm_paths.values())
    elif isinstance(gmm_paths, str):
        gmm_paths = [gmm_paths]
    labels = labels or [os.path.basename(p) for p in gmm_paths]
    fig = fig or _new_figure((5.2 * len(gmm_paths) + 1.0, 5.2))
    data = [load_gmm(p) for p in gmm_paths]
    amax = max(float(np.max(np.abs(a))) for _, a, _ in data) or 1.0
    amin = min(float(np.min(a)) for _, a, _ in data)
    smax = max(float(np.max(s)) for _, _, s in data) or 1.0
    lim = max((float(np.max(np.abs(c))) for c, _, _ in data if len(c)), default=1.0) * 1.05
    # room for the titles above and for the colour bar on the right, beside (not over) the plots
    fig.subplots_adjust(left=0.02, right=0.86, bottom=0.04, top=0.88, wspace=0.12)
    sc = None
    for k, ((c, a, s), label) in enumerate(zip(data, labels)):
        ax = fig.add_subplot(1, len(data), k + 1, projection="3d")
        size = 4.0 + 60.0 * (s / smax) ** 2
        sc = ax.scatter(c[:, 0], c[:, 1], c[:, 2], c=a, s=size, cmap="viridis", vmin=min(amin, 0.0),
                        vmax=amax, alpha=0.75, linewidths=0)
        ax.set_title("%s: %d Gaussians" % (label, len(a)), fontsize=10)
        ax.set_xlabel("x (Å)")
        ax.set_ylabel("y (Å)")
        ax.set_zlabel("z (Å)")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_zlim(-lim, lim)
    if sc is not None:
        cax = fig.add_axes([0.89, 0.2, 0.02, 0.6])
        cb = fig.colorbar(sc, cax=cax)
        cb.set_label("amplitude (marker size = width)")
    return fig


def plot_gmm(gmm_paths, path, labels=None):
    return _save(gmm_figure(gmm_paths, labels=labels), path)


# ----------------------------------------------------------------------------------- poses
def pose_change_figure(npz_path, fig=None, bins=40):
    """Histograms of the per-particle change between input and refined poses."""
    with np.load(npz_path) as d:
        angle = np.asarray(d["angle_deg"], float)
        shift = np.asarray(d["shift_px"], float)
    fig = fig or _new_figure((10.0, 4.0))
    for k, (values, xlabel, colour) in enumerate(((angle, "angle change (degrees)", "tab:blue"),
                                                   (shift, "shift change (pixels)", "tab:orange"))):
        ax = fig.add_subplot(1, 2, k + 1)
        finite = values[np.isfinite(values)]
        ax.hist(finite, bins=bins, color=colour, alpha=0.85)
        if len(finite):
            med = float(np.median(finite))
            ax.axvline(med, color="black", ls="--", lw=1)
            ax.set_title("%d particles, median %.2f, mean %.2f" % (len(finite), med, float(np.mean(finite))),
                         fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("particles")
    fig.tight_layout()
    return fig


def plot_pose_changes(npz_path, path, bins=40):
    return _save(pose_change_figure(npz_path, bins=bins), path)


# ----------------------------------------------------------------------------------- all
def plot_all(summary, outdir, prefix=""):
    """Every plot of a refine run into ``outdir``; returns {name: png path}."""
    summary = load_summary(summary)
    out = {
        "fsc": plot_fsc(summary, os.path.join(outdir, prefix + "fsc.png")),
        "resolution": plot_resolution(summary, os.path.join(outdir, prefix + "resolution.png")),
    }
    final = summary.final
    if final is not None and final.gmm:
        paths = {h: summary.path("gmm", h) for h in sorted(final.gmm)}
        out["gmm"] = plot_gmm(paths, os.path.join(outdir, prefix + "gmm.png"))
    if final is not None and final.pose_changes:
        out["pose_changes"] = plot_pose_changes(summary.path("pose_changes"),
                                                os.path.join(outdir, prefix + "pose_changes.png"))
    return out
