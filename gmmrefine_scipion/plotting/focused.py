"""Plots of focused and patch-by-patch runs (headless matplotlib, like :mod:`.refine`).

Inputs are the run directories' files, read through the run contract (:mod:`gmmcore.summary`):
a focused run (kind "focused"), a patch run (kind "patches") with its ``patches.json`` and
``patch_NN/`` runs, the source (global) run named in its parameters, and MRC maps.

* :func:`comparison_curves` / :func:`comparison_fsc_figure` — gold-standard FSC of the input
  poses, the global result (the start), the focused / composite result, and (focused) the FSC
  within the focus mask at the start and at the end (Ext. Data Fig. 2A style).
* :func:`patch_fsc_figure` — per patch, the FSC within its mask at its start and its end.
* :func:`patch_gmm_figure` — the start GMMs' centres coloured by patch (Ext. Data Fig. 7B).
* :func:`patch_masks_figure` — central slices of the map with each patch mask's 0.5 contour.
* :func:`local_resolution_figure` — central slices coloured by local resolution.
* :func:`plot_all_focused` — every plot of a run as PNGs.
"""
import os

import numpy as np

from gmmcore.summary import RunSummary

from .refine import FSC_THRESHOLD, _new_figure, _save, load_summary


def _read_map(path):
    import mrcfile
    with mrcfile.open(path, permissive=True) as m:
        return np.asarray(m.data, dtype=np.float32), float(m.voxel_size.x)


def source_summary(summary):
    """The summary of the run a focused / patch run started from (None if it is gone)."""
    summary = load_summary(summary)
    src = summary.params.get("source")
    if not src or not os.path.exists(os.path.join(src, "summary.json")):
        return None
    return RunSummary.load(src)


def comparison_curves(summary):
    """[(label, freq, fsc, resolution Å, style)]: input poses (of the source run), global (the
    start), focused or composite, and — for a focused run — within the focus mask at the start
    and the end.  style: "input", "start", "final", "focus-start", "focus-final"."""
    summary = load_summary(summary)
    out = []
    src = source_summary(summary)
    if src is not None and src.initial is not None:
        out.append(("input poses", *src.initial.curve(True), "input"))
    if summary.initial is not None:
        out.append(("global (start)", *summary.initial.curve(True), "start"))
    if summary.kind == "patches":
        comp = summary.composite()
        if comp is not None:
            out.append(("composite", *comp.curve(True), "final"))
    elif summary.iterations:
        last = summary.iterations[-1].report
        out.append(("%s, iteration %d" % (summary.kind, summary.iterations[-1].iteration), *last.curve(True), "final"))
        for rep, style, label in ((summary.initial, "focus-start", "start, within focus mask"),
                                  (last, "focus-final", "%s, within focus mask" % summary.kind)):
            focus = None if rep is None else rep.focus_curve()
            if focus is not None:
                out.append((label, *focus, style))
    return out


_STYLE = {"input": dict(color="black", ls="--", lw=1.5), "start": dict(color="goldenrod", lw=1.8),
          "final": dict(color="tab:pink", lw=2.4), "focus-start": dict(color="goldenrod", lw=1.2, ls=":"),
          "focus-final": dict(color="tab:pink", lw=1.6, ls=":")}


def _fsc_axes(ax, title):
    ax.axhline(FSC_THRESHOLD, color="grey", lw=0.8, ls=":")
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlim(left=0)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")


def comparison_fsc_figure(summary, fig=None):
    """Input poses vs global vs focused / composite (masked FSC), focus-mask FSCs dotted."""
    summary = load_summary(summary)
    fig = fig or _new_figure((7.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    for label, freq, curve, res, style in comparison_curves(summary):
        ax.plot(freq, curve, label="%s (%.2f Å)" % (label, res), **_STYLE[style])
    _fsc_axes(ax, "gold-standard FSC (%s run)" % summary.kind)
    return fig


def patch_runs(summary):
    """[(PatchRecord, RunSummary or None)] of a patch run."""
    summary = load_summary(summary)
    out = []
    for rec in summary.patch_records():
        path = summary.rel(rec.dir)
        out.append((rec, RunSummary.load(path) if os.path.exists(os.path.join(path, "summary.json")) else None))
    return out


def patch_fsc_figure(summary, fig=None):
    """Per patch: FSC within its mask at the start (dotted) and after its focused run (solid)."""
    import matplotlib
    summary = load_summary(summary)
    fig = fig or _new_figure((7.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["tab10"]
    for rec, s in patch_runs(summary):
        start = None if s is None or s.initial is None else s.initial.focus_curve()
        if start is None:
            continue
        c = cmap((rec.index - 1) % 10)
        ax.plot(start[0], start[1], color=c, lw=1.0, ls=":")
        end = s.iterations[-1].report.focus_curve() if s.iterations else None
        if end is not None:
            ax.plot(end[0], end[1], color=c, lw=1.8,
                    label="patch %d: %.2f → %.2f Å" % (rec.index, start[2], end[2]))
    _fsc_axes(ax, "FSC within each patch mask (dotted: start)")
    return fig


def patch_gmm_figure(summary, fig=None):
    """The start GMMs' centres (both halves), coloured by patch, with each patch's centre."""
    import matplotlib
    from gmmcore.gmm.model import GMM
    summary = load_summary(summary)
    info = summary.patch_definition()
    fig = fig or _new_figure((11.0, 5.5))
    cmap = matplotlib.colormaps["tab10"]
    for k, h in enumerate(("1", "2")):
        ax = fig.add_subplot(1, 2, k + 1, projection="3d")
        g = GMM.load(summary.rel(info.gmm[h]))
        lab = np.asarray(info.labels[h])
        ax.scatter(g.centers[:, 0], g.centers[:, 1], g.centers[:, 2], c=[cmap((i - 1) % 10) for i in lab],
                   s=8 + 4 * np.asarray(g.sigmas), depthshade=False)
        for p in info.patches:
            ax.scatter(*p["center_A"], marker="x", s=80, color=cmap((p["index"] - 1) % 10))
            ax.text(*p["center_A"], " %d" % p["index"], fontsize=9)
        ax.set_title("half %s GMM by patch (%d Gaussians)" % (h, len(g)))
        ax.set_xlabel("x (Å)")
        ax.set_ylabel("y (Å)")
        ax.set_zlabel("z (Å)")
    return fig


def _slices(vol):
    n = vol.shape[0] // 2
    return [("z = centre (x →, y ↑)", vol[n]), ("y = centre (x →, z ↑)", vol[:, n]), ("x = centre (y →, z ↑)", vol[:, :, n])]


def patch_masks_figure(summary, fig=None, map_path=None):
    """Central slices of the composite map (grey) with every patch mask's 0.5 contour."""
    import matplotlib
    summary = load_summary(summary)
    vol, _ = _read_map(map_path or summary.path("map"))
    masks = [(rec.index, _read_map(summary.rel(rec.mask))[0]) for rec in summary.patch_records()]
    fig = fig or _new_figure((12.0, 4.5))
    cmap = matplotlib.colormaps["tab10"]
    for k, (title, sl) in enumerate(_slices(vol)):
        ax = fig.add_subplot(1, 3, k + 1)
        ax.imshow(sl, cmap="gray", origin="lower")
        for i, m in masks:
            msl = _slices(m)[k][1]
            if msl.max() >= 0.5:
                ax.contour(msl, levels=[0.5], colors=[cmap((i - 1) % 10)], linewidths=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("patch masks (0.5 contours) over the map")
    return fig


def local_resolution_figure(map_path, localres_path, fig=None):
    """Central slices of the local-resolution map (colour, Å) with the map's density contour."""
    vol, _ = _read_map(map_path)
    lr, _ = _read_map(localres_path)
    inside = lr[lr > 0]
    lo, hi = (float(np.percentile(inside, 2)), float(np.percentile(inside, 98))) if inside.size else (0, 1)
    fig = fig or _new_figure((13.0, 4.5))
    level = float(np.percentile(vol, 97))
    im = None
    for k, ((title, sl), (_, lsl)) in enumerate(zip(_slices(vol), _slices(lr))):
        ax = fig.add_subplot(1, 3, k + 1)
        im = ax.imshow(np.ma.masked_where(lsl <= 0, lsl), cmap="jet", vmin=lo, vmax=hi, origin="lower")
        ax.contour(sl, levels=[level], colors="k", linewidths=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if im is not None:
        fig.colorbar(im, ax=fig.axes, shrink=0.8, label="local resolution (Å)")
    return fig


def plot_all_focused(summary, outdir, localres=None):
    """Every plot of a focused / patch run as PNGs in ``outdir``: {name: path}."""
    from .refine import pose_change_figure
    summary = load_summary(summary)
    out = {"fsc_comparison": _save(comparison_fsc_figure(summary), os.path.join(outdir, "fsc_comparison.png"))}
    if summary.kind == "patches":
        out["patch_fsc"] = _save(patch_fsc_figure(summary), os.path.join(outdir, "patch_fsc.png"))
        out["patch_gmm"] = _save(patch_gmm_figure(summary), os.path.join(outdir, "patch_gmm.png"))
        out["patch_masks"] = _save(patch_masks_figure(summary), os.path.join(outdir, "patch_masks.png"))
        runs = [s for _, s in patch_runs(summary) if s is not None]
        if runs:
            out["pose_changes"] = _save(pose_change_figure(runs[0].path("pose_changes")),
                                        os.path.join(outdir, "pose_changes_patch1.png"))
    else:
        out["pose_changes"] = _save(pose_change_figure(summary.path("pose_changes")),
                                    os.path.join(outdir, "pose_changes.png"))
    if localres:
        out["local_resolution"] = _save(local_resolution_figure(summary.path("map"), localres),
                                        os.path.join(outdir, "local_resolution.png"))
    return out
