"""The Summary tab's lines of the pose precision of a focused-like run (focused, each patch,
conformation to pose): ``summary.pose_precision`` = {"region", "particle"}, the Cramér–Rao bound
of a per-particle pose of the focus region and of the whole particle at the run's first band
(:class:`gmmcore.summary.PosePrecision`; absent when the run started from maps without GMMs).

Angles are the expected mean angular error (degrees), shifts the expected mean shift error
(pixels), the region's mass the fraction of the GMM's mass inside the focus mask.
"""
from typing import Iterable, Optional

TITLE = "Pose precision at %s Å (Cramér–Rao bound, per particle)"


def regionText(region) -> str:
    """``±angle° / shift px (N Gaussians, M% of the mass)`` of a region's PosePrecision."""
    return "±%.1f° / %.2f px (%d Gaussians, %.0f%% of the mass)" % (
        region.angle_deg, region.shift_px, region.region_gaussians, 100.0 * region.region_mass)


def precisionOf(summary) -> Optional[dict]:
    """{"region", "particle"} of a run summary, None when it has none."""
    precision = getattr(summary, "pose_precision", None) if summary is not None else None
    return precision if precision and precision.get("region") is not None else None


def posePrecisionLine(summary, region: str = "focus region") -> Optional[str]:
    """The one line of a focused-like run (None without a bound): the bound of the ``region``
    (angle, shift, its Gaussians and mass; the form's name for it) and the whole particle's angle."""
    precision = precisionOf(summary)
    if precision is None:
        return None
    bound, whole = precision["region"], precision.get("particle")
    line = (TITLE + ": %s %s") % ("%.2f" % bound.resolution_A, region, regionText(bound))
    if whole is not None:
        line += "; whole particle ±%.1f°" % whole.angle_deg
    return line


def wholeParticleLine(summaries: Iterable) -> Optional[str]:
    """The line of a patch run, before one bound per patch: the band's resolution and the whole
    particle's bound (the range over the patches' runs), None when no patch has a bound."""
    found = [p for p in map(precisionOf, summaries) if p is not None]
    if not found:
        return None
    wholes = [p["particle"] for p in found if p.get("particle") is not None]
    text = TITLE % _span([p["region"].resolution_A for p in found], "%.2f")
    if wholes:
        text += ": whole particle ±%s° / %s px" % (_span([w.angle_deg for w in wholes], "%.1f"),
                                                    _span([w.shift_px for w in wholes], "%.2f"))
    return text + "; each patch's region below"


def _span(values, fmt: str) -> str:
    """One value, or ``low–high`` when they differ at the printed precision."""
    low, high = fmt % min(values), fmt % max(values)
    return low if low == high else "%s–%s" % (low, high)
