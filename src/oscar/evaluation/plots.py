"""Rate–distortion plots: one panel per metric, PNG and SVG (matplotlib's Agg renderer).

Each metric gets two panels: one fitted to our range of rates, one with every point. Lines are
each codec's curve (:func:`oscar.evaluation.bdrate.curves`): ours per level, the baselines'
sweeps. Crosses are the baselines' points matched to our rate; a dashed line with hollow squares
(2×) or triangles (4×) is a down-scaled variant (tried only on images where the full-size codec
cannot reach our rate, so its crosses may average a few images and only means over every image
are joined into its line).
Numbers from a user's CSV of published results (``--published``) are drawn as hollow markers
labelled "published, not re-measured". The x axis is bpp on a log scale.

Published CSV columns: ``codec,bpp,metric,value`` and optionally ``source`` (one row per point;
``metric`` is one of our metric names, e.g. ``dists`` or ``lpips_vgg``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from oscar.errors import ConfigError
from oscar.evaluation.bdrate import curves
from oscar.evaluation.metrics import ALL_METRICS, LABELS
from oscar.evaluation.records import Aggregate


@dataclass(frozen=True)
class PublishedPoint:
    codec: str
    bpp: float
    metric: str
    value: float
    source: str = ""


def read_published(path: str | Path) -> list[PublishedPoint]:
    """Rows of a published-results CSV (see module docstring); clear errors for bad rows."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    need = {"codec", "bpp", "metric", "value"}
    if not rows or not need <= set(rows[0]):
        raise ConfigError(f"{path}: needs the columns {', '.join(sorted(need))}")
    out = []
    for i, row in enumerate(rows, start=2):
        metric = row["metric"].strip()
        if metric not in ALL_METRICS:
            raise ConfigError(f"{path}:{i}: unknown metric {metric!r}")
        try:
            bpp, value = float(row["bpp"]), float(row["value"])
        except ValueError:
            raise ConfigError(f"{path}:{i}: bpp and value must be numbers") from None
        source = row.get("source") or ""
        out.append(PublishedPoint(row["codec"].strip(), bpp, metric, value, source))
    return out


def _colours(codecs: Sequence[str]) -> dict[str, str]:
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    base = sorted({c.split("-down")[0] for c in codecs if c != "oscar"})
    colours = {c: palette[i % len(palette)] for i, c in enumerate(base)}
    colours["oscar"] = "#d62728"
    return {c: colours[c.split("-down")[0]] for c in codecs}


def _marker(codec: str) -> str:
    """Circles for full-size codecs, squares for 2× down-scaled variants, triangles for 4×."""
    if "-down" not in codec:
        return "o"
    factor = codec.rsplit("-down", 1)[1]
    return {"2": "s", "4": "^"}.get(factor, "D")


def _our_window(
    aggregates: Sequence[Aggregate], metric: str
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """(x limits, y limits) around our own points: bpp from half our lowest to twice our
    highest, the metric over every point (any codec) inside those rates, with a margin."""
    ours = [a.bpp for a in aggregates if a.codec == "oscar" and a.bpp > 0]
    if not ours:
        return None
    x0, x1 = min(ours) / 2, max(ours) * 2
    ys = [
        a.all_metrics.get(metric)
        for a in aggregates
        if x0 <= a.bpp <= x1 and _ok(a.all_metrics.get(metric))
    ]
    if not ys:
        return None
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 1.0
    return (x0, x1), (lo - pad, hi + pad)


def plot_rd(
    aggregates: Sequence[Aggregate],
    metrics: Sequence[str],
    out_stem: Path,
    published: Sequence[PublishedPoint] = (),
    title: str = "",
) -> list[Path]:
    """Write ``OUT_STEM.png`` and ``OUT_STEM.svg``; returns their paths (none if no data).

    Two panels per metric: the left one fitted to our range of rates (so that our curve is not
    squeezed into a corner by baselines that reach 2 bpp), the right one with every point."""
    # A bare Figure renders with the Agg canvas and touches no global backend state (no pyplot).
    from matplotlib.figure import Figure  # lazy: the eval extra, which may be absent
    from matplotlib.lines import Line2D

    panels = [
        m
        for m in metrics
        if any(_ok(a.all_metrics.get(m)) for a in aggregates)
        or any(p.metric == m for p in published)
    ]
    if not panels:
        return []
    by_codec = curves(aggregates)
    colours = _colours(list({a.codec for a in aggregates} | {p.codec for p in published}))
    rows = len(panels)
    fig = Figure(figsize=(10.4, 3.6 * rows + 1.2), layout="constrained")
    for i, metric in enumerate(panels):
        window = _our_window(aggregates, metric)
        for j, fitted in enumerate((True, False)):
            ax = fig.add_subplot(rows, 2, 2 * i + j + 1)
            _draw_metric(ax, metric, aggregates, by_codec, published, colours)
            ax.set_xscale("log")
            ax.set_xlabel("bits per pixel (measured from bytes)")
            ax.set_ylabel(LABELS.get(metric, metric))
            name = LABELS.get(metric, metric)
            if fitted and window is not None:
                ax.set_xlim(*window[0])
                ax.set_ylim(*window[1])
                ax.set_title(f"{name}: our range", fontsize=10)
            else:
                ax.set_title(f"{name}: all rates", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = [], []
    for ax in fig.axes:  # every entry once, whichever panel it first appears in
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if any(a.kind == "matched" for a in aggregates):
        handles.append(Line2D([], [], ls="", marker="x", color="#444444"))
        labels.append("× matched to our rate (colour = codec; -downN: mean of the images it coded)")
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=100)
    fig.savefig(paths[1], metadata={"Date": None})  # no timestamp: same input, same file
    return paths


def _draw_metric(ax, metric, aggregates, by_codec, published, colours) -> None:
    """One metric's curves, matched points and published numbers on ``ax``."""
    for codec, points in by_codec.items():
        xy = [(a.bpp, a.all_metrics.get(metric)) for a in points]
        xy = [(x, y) for x, y in xy if _ok(y)]
        if not xy:
            continue
        ax.plot(
            *zip(*xy, strict=True),
            "--" if "-down" in codec else "-",
            marker=_marker(codec),
            ms=4.5 if "-down" in codec else 3.5,
            mfc="white" if "-down" in codec else colours[codec],
            lw=2.2 if codec == "oscar" else 1.4,
            color=colours[codec],
            label=codec,
        )
    for codec in sorted({a.codec for a in aggregates if a.kind == "matched"}):
        xy = [
            (a.bpp, a.all_metrics.get(metric))
            for a in aggregates
            if a.kind == "matched" and a.codec == codec
        ]
        xy = [(x, y) for x, y in xy if _ok(y)]
        if xy:  # one legend entry for all of them (added by plot_rd)
            ax.plot(*zip(*xy, strict=True), "x", ms=6, color=colours[codec])
    for codec in sorted({p.codec for p in published if p.metric == metric}):
        pts = sorted((p.bpp, p.value) for p in published if p.metric == metric and p.codec == codec)
        ax.plot(
            *zip(*pts, strict=True),
            ":",
            marker="o",
            mfc="none",
            ms=6,
            color=colours.get(codec, "#7f7f7f"),
            label=f"{codec} (published, not re-measured)",
        )


def _ok(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
