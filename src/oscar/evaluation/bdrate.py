"""Bjøntegaard delta rate (BD-rate) of every codec against an anchor, for each metric.

Computed with the ``bjontegaard`` package (``bd_rate``), **Akima interpolation** of log10(bpp)
as a function of the metric, integrated over the metric range both curves cover. Negative is
better: the test codec needs that many percent fewer bits than the anchor for the same quality.
Metrics where lower is better (LPIPS, DISTS, FID, KID) are negated first so every curve rises.

A BD-rate is not reported (None, with the reason) when a curve has fewer than two points with
the metric, when the metric is not strictly monotone in the rate along a curve (interpolating it
would mean nothing), or when the two curves share no metric range. A partial overlap is noted.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from oscar.evaluation.metrics import higher_is_better
from oscar.evaluation.records import Aggregate

METHOD = "akima"


@dataclass(frozen=True)
class BDRate:
    """BD-rate (percent) of ``test`` against ``anchor`` for ``metric``, or None with a note."""

    metric: str
    anchor: str
    test: str
    percent: float | None
    note: str = ""


def curves(aggregates: Sequence[Aggregate]) -> dict[str, list[Aggregate]]:
    """The rate–quality curve of each codec, sorted by bpp.

    Ours: one point per level. A baseline: its sweep (fixed settings over all images) when there
    is one, else its matched points. Down-scaled variants: their matched points. Matched points
    where some image could not reach the target (status ``floor``) are left out of curves, and
    so are means over only some of the images (a down-scaled variant is tried only where the
    full-size codec cannot reach our rate, so each level may average a different subset: joined
    into one line, those means would draw a curve no single image follows).
    """
    out: dict[str, list[Aggregate]] = {}
    swept = {a.codec for a in aggregates if a.kind == "sweep"}
    every_image = max((a.images for a in aggregates), default=0)
    for a in aggregates:
        partial = a.images < every_image
        if a.kind == "matched" and (a.codec in swept or not a.fully_matched or partial):
            continue
        out.setdefault(a.codec, []).append(a)
    for rows in out.values():
        rows.sort(key=lambda a: a.bpp)
    return out


def bd_rate(
    anchor: Sequence[tuple[float, float]],
    test: Sequence[tuple[float, float]],
    higher_better: bool = True,
    method: str = METHOD,
) -> tuple[float | None, str]:
    """BD-rate in percent of ``test`` against ``anchor``, each a list of (bpp, metric value)."""
    import bjontegaard  # lazy: the eval extra, which may be absent

    prepared = []
    for name, points in (("anchor", anchor), ("test", test)):
        pts = sorted((r, v if higher_better else -v) for r, v in points if _usable(r, v))
        if len(pts) < 2:
            return None, f"{name} curve has {len(pts)} usable point(s), needs 2"
        values = [v for _, v in pts]
        if any(b <= a for a, b in itertools.pairwise(values)):
            return None, f"{name} curve: metric is not strictly monotone in rate"
        prepared.append(pts)
    ra = [p[0] for p in prepared[0]]
    da = [p[1] for p in prepared[0]]
    rt = [p[0] for p in prepared[1]]
    dt = [p[1] for p in prepared[1]]
    lo, hi = max(min(da), min(dt)), min(max(da), max(dt))
    if hi <= lo:
        return None, "curves share no metric range"
    total = max(max(da), max(dt)) - min(min(da), min(dt))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # overlap is reported in the note below
        value = bjontegaard.bd_rate(
            ra, da, rt, dt, method=method, require_matching_points=False, min_overlap=0
        )
    value = float(value)
    if not math.isfinite(value):
        return None, "interpolation failed"
    overlap = (hi - lo) / total if total > 0 else 1.0
    note = "" if overlap >= 0.75 else f"curves overlap on {overlap:.0%} of the metric range"
    return value, note


def _usable(rate: float, value: float | None) -> bool:
    return value is not None and math.isfinite(value) and rate > 0 and math.isfinite(rate)


def bd_rates(
    aggregates: Sequence[Aggregate], anchor: str, metrics: Sequence[str], method: str = METHOD
) -> list[BDRate]:
    """BD-rate of every other codec against ``anchor`` for each metric with values."""
    by_codec = curves(aggregates)
    if anchor not in by_codec:
        return [BDRate(m, anchor, "-", None, f"anchor {anchor!r} has no curve") for m in metrics]
    out = []
    for metric in metrics:
        anchor_pts = [(a.bpp, a.all_metrics.get(metric)) for a in by_codec[anchor]]
        for codec, rows in by_codec.items():
            if codec == anchor:
                continue
            test_pts = [(a.bpp, a.all_metrics.get(metric)) for a in rows]
            value, note = bd_rate(anchor_pts, test_pts, higher_is_better(metric), method)
            out.append(BDRate(metric, anchor, codec, value, note))
    return out
