"""Write an evaluation's outputs: data files, plots, crops and a self-contained HTML report.

``OUT_DIR`` after :func:`write_outputs`::

    per_image.json / .csv     one row per (image, codec, setting): bytes, bpp, metrics, times
    aggregates.json / .csv    means per (codec, kind, level or sweep setting), FID / KID
    bd_rate.csv               BD-rate of each codec against the anchor, per metric
    head_to_head.csv          per level and baseline: images we win / lose / neither, per metric
    summary.json              configuration, environment, skipped metrics, BD-rates
    rd.png, rd.svg            rate–distortion plots, one panel per metric
    crops/NNN_LL/CODEC.png    the same region of image NNN at level LL for every codec
    report.html               tables, plots, crops and a two-reconstruction slider

``report.html`` stands alone: the plot and every crop are inlined as data URIs, so the one file
can be mailed or moved without the folder; it needs no network and no server. A small script in
it checks on load that every image decoded (``img.complete && naturalWidth > 0``), shows a
warning line otherwise, and records the counts in ``data-images-loaded`` /
``data-images-total`` on <html>.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image

from oscar.evaluation.bdrate import METHOD, BDRate
from oscar.evaluation.head_to_head import HeadToHead, head_to_head, write_head_to_head
from oscar.evaluation.metrics import LABELS, higher_is_better
from oscar.evaluation.plots import PublishedPoint, plot_rd
from oscar.evaluation.records import Aggregate, write_aggregates, write_json, write_records
from oscar.evaluation.runner import CropSet, EvalResult


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def data_uri(path: Path) -> str:
    """A file as a data URI (PNG or SVG), so that report.html needs no other file."""
    mime = {".png": "image/png", ".svg": "image/svg+xml"}[path.suffix.lower()]
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


# Decimals per metric in the report: enough to rank codecs, no more than the metric resolves.
_DECIMALS = {"psnr": 2, "colour_shift": 2, "fid": 2, "fid_whole": 2, "kid": 4}


def _fmt_metric(metric: str, value: float | None) -> str:
    return _fmt(value, _DECIMALS.get(metric, 4))


def _fmt_ms(seconds: float | None) -> str:
    """Milliseconds to three significant digits (5882.831 → 5880; 12.345 → 12.3)."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    ms = seconds * 1000
    if ms >= 100:
        return f"{round(ms, -len(str(int(ms))) + 3):.0f}"
    return f"{ms:.3g}"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "∞" if value > 0 else "–"
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}"
    return html.escape(str(value))


def write_crops(crops: Sequence[CropSet], out_dir: Path) -> list[dict[str, Any]]:
    """Save crop PNGs; returns, per crop set, its image, level, box and {codec: (data URI,
    bpp)}."""
    images = sorted({c.image for c in crops})
    index = {name: i for i, name in enumerate(images)}
    out = []
    for cs in crops:
        folder = out_dir / "crops" / f"{index[cs.image]:03d}_L{cs.level}"
        folder.mkdir(parents=True, exist_ok=True)
        entries = {}
        for codec, array in cs.crops.items():
            path = folder / f"{_safe(codec)}.png"
            Image.fromarray(array).save(path)
            entries[codec] = (data_uri(path), cs.bpp.get(codec))
        out.append({"image": cs.image, "level": cs.level, "box": cs.box, "crops": entries})
    return out


def write_bd_csv(path: Path, rows: Sequence[BDRate]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "anchor", "codec", "bd_rate_percent", "note"])
        for r in rows:
            value = "" if r.percent is None else f"{r.percent:.3f}"
            writer.writerow([r.metric, r.anchor, r.test, value, r.note])


def write_outputs(
    result: EvalResult,
    out_dir: Path,
    metrics: Sequence[str],
    bdrates: Sequence[BDRate],
    info: Mapping[str, Any],
    published: Sequence[PublishedPoint] = (),
) -> list[Path]:
    """Write every output file (module docstring); returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = write_records(out_dir / "per_image", result.records)
    files += write_aggregates(out_dir / "aggregates", result.aggregates)
    write_bd_csv(out_dir / "bd_rate.csv", bdrates)
    files.append(out_dir / "bd_rate.csv")
    shown = [m for m in metrics if m not in result.skipped]
    duels = head_to_head(result.records, shown)
    write_head_to_head(out_dir / "head_to_head.csv", duels)
    files.append(out_dir / "head_to_head.csv")
    files += plot_rd(result.aggregates, shown, out_dir / "rd", published)
    crops = write_crops(result.crops, out_dir)
    summary = {
        **info,
        "metrics": list(metrics),
        "skipped_metrics": result.skipped,
        "bd_rate_method": f"bjontegaard.bd_rate, {METHOD} interpolation",
        "bd_rate": [_clean(asdict(r)) for r in bdrates],
        "published": [asdict(p) for p in published],
    }
    write_json(out_dir / "summary.json", summary)
    files.append(out_dir / "summary.json")
    page = render_html(result, shown, bdrates, info, crops, published, out_dir, duels)
    (out_dir / "report.html").write_text(page, encoding="utf-8")
    files.append(out_dir / "report.html")
    return files


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


# ----------------------------------------------------------------------------- HTML
_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1300px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 20px; font-size: 12.5px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
tr.ours td { background: #fff3f0; font-weight: 600; }
.warn { color: #a40000; font-weight: 600; } .muted { color: #666; } .small { font-size: 11px; }
.meta { color: #444; font-size: 13px; } .plots img { max-width: 100%; border: 1px solid #ddd; }
.cropset { margin: 10px 0 28px; } .row { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; text-align: center; font-size: 12px; }
figure img { display: block; width: 200px; height: auto; image-rendering: pixelated;
  border: 1px solid #bbb; }
.compare { margin-top: 10px; } .stage { position: relative; display: block; width: 400px;
  margin: 6px 0; border: 1px solid #888; line-height: 0; }
.stage img { width: 400px; height: auto; image-rendering: pixelated; }
.stage img.over { position: absolute; left: 0; top: 0; }
.compare input[type=range] { width: 400px; display: block; }
"""

_SCRIPT = """
function checkImages() {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0);
  const root = document.documentElement;
  root.dataset.imagesLoaded = String(ok.length);
  root.dataset.imagesTotal = String(imgs.length);
  const status = document.getElementById('load-status');
  if (ok.length < imgs.length) {
    const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0))
      .map(i => i.getAttribute('src'));
    status.textContent = (imgs.length - ok.length) + ' of ' + imgs.length +
      ' images failed to load: ' + bad.join(', ');
    status.className = 'warn';
  } else {
    status.textContent = 'All ' + imgs.length + ' images loaded.';
  }
}
function setupCompare(box) {
  const left = box.querySelector('select.left'), right = box.querySelector('select.right');
  const over = box.querySelector('img.over'), under = box.querySelector('img.under');
  const range = box.querySelector('input[type=range]');
  const label = box.querySelector('.label');
  function update() {
    over.src = left.value; under.src = right.value;
    over.style.clipPath = 'inset(0 ' + (100 - range.value) + '% 0 0)';
    label.textContent = left.selectedOptions[0].text + '  |  ' + right.selectedOptions[0].text;
  }
  [left, right, range].forEach(el => el.addEventListener('input', update));
  update();
}
window.addEventListener('load', () => {
  document.querySelectorAll('.compare').forEach(setupCompare);
  checkImages();
});
"""


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], classes=None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        cells = "".join(
            f'<td class="l">{c}</td>' if j < 2 else f"<td>{c}</td>" for j, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _metric_header(metric: str) -> str:
    return f"{LABELS.get(metric, metric)} {'↑' if higher_is_better(metric) else '↓'}"


def _aggregate_rows(rows: Sequence[Aggregate], metrics: Sequence[str]) -> tuple[list, list]:
    out, classes = [], []
    for a in rows:
        status = ", ".join(f"{k} ×{v}" for k, v in a.statuses.items() if k != "ok") or "ok"
        if a.statuses.get("floor"):
            status = f'<span class="warn">{html.escape(status)}</span>'
        merged = a.all_metrics
        out.append(
            [
                html.escape(a.codec),
                html.escape(a.setting if a.kind != "matched" else f"level {a.level}"),
                str(a.images),
                _fmt(a.bpp, 4),
                _fmt(a.target_bpp, 4),
                _fmt(a.overhead_bytes_mean, 1),
                *[_fmt_metric(m, merged.get(m)) for m in metrics],
                _fmt_ms(a.encode_s),
                _fmt_ms(a.decode_s),
                status,
            ]
        )
        classes.append("ours" if a.codec == "oscar" else "")
    return out, classes


def _head_to_head_section(rows: Sequence[HeadToHead], metrics: Sequence[str]) -> list[str]:
    """Per level and baseline: images where our file wins, loses, or neither (per metric)."""
    if not rows:
        return []
    cells = {(r.level, r.codec, r.metric): r for r in rows}
    pairs = list(dict.fromkeys((r.level, r.codec) for r in rows))
    body = []
    for level, codec in pairs:
        row = [str(level), html.escape(codec)]
        for m in metrics:
            r = cells.get((level, codec, m))
            row.append("" if r is None else f"{r.wins} / {r.losses} / {r.mixed}")
        body.append(row)
    return [
        "<h2>Head to head, per image</h2>",
        "<p class='meta'>Per level and baseline (at its setting closest to our bytes on each "
        "image), the number of images where our file <b>wins</b> (metric at least as good, file "
        "not larger) / <b>loses</b> (the baseline's metric at least as good, its file not "
        "larger) / neither. Also in head_to_head.csv.</p>",
        _table(["level", "baseline", *[_metric_header(m) for m in metrics]], body),
    ]


def render_html(
    result: EvalResult,
    metrics: Sequence[str],
    bdrates: Sequence[BDRate],
    info: Mapping[str, Any],
    crops: Sequence[Mapping[str, Any]],
    published: Sequence[PublishedPoint],
    out_dir: Path,
    duels: Sequence[HeadToHead] = (),
) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>oscar eval report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>OSCAR evaluation report</h1>",
        "<p class='meta'>"
        + "<br>".join(f"<b>{e(str(k))}</b>: {e(str(v))}" for k, v in info.items())
        + "</p>",
        "<p id='load-status' class='muted'>Checking images…</p>",
        "<p class='meta'>Rates are measured from the bytes of every coded file over the original "
        "pixel count (header and side information included; our overhead is shown separately). "
        "Metrics compare 8-bit reconstructions with the untouched original.</p>",
    ]
    if result.skipped:
        parts.append("<h2>Skipped metrics</h2><ul>")
        lines = dict.fromkeys(result.skipped.values())
        parts += [f"<li class='warn'>{e(line)}</li>" for line in lines]
        parts.append("</ul>")
    headers = [
        "codec",
        "level",
        "images",
        "bpp",
        "target bpp",
        "overhead B",
        *[_metric_header(m) for m in metrics],
        "encode ms",
        "decode ms",
        "status",
    ]
    matched = [a for a in result.aggregates if a.kind in ("oscar", "matched")]
    matched.sort(key=lambda a: (a.level or 0, a.codec != "oscar", a.codec))
    rows, classes = _aggregate_rows(matched, metrics)
    parts += [
        "<h2>Matched rates, per level</h2>",
        "<p class='meta'>Each baseline at the setting whose bpp is closest to ours on each image. "
        "<i>floor ×N</i>: on N images the baseline cannot go as low as ours (its lowest setting "
        "is shown); <i>-down2</i>/<i>-down4</i> code a 2×/4× smaller image and upscale it.</p>",
        _table(headers, rows, classes),
    ]
    parts += _head_to_head_section(duels, metrics)
    if bdrates:
        anchor = bdrates[0].anchor
        codecs = list(dict.fromkeys(r.test for r in bdrates))
        bd_metrics = list(dict.fromkeys(r.metric for r in bdrates))
        lookup = {(r.metric, r.test): r for r in bdrates}
        bd_rows = []
        for codec in codecs:
            cells = []
            for m in bd_metrics:
                r = lookup.get((m, codec))
                if r is None or r.percent is None:
                    why = r.note if r is not None and r.note else "no curve"
                    cells.append(f"<span class='muted small'>n/a: {e(why)}</span>")
                else:
                    note = f"<br><span class='muted small'>{e(r.note)}</span>" if r.note else ""
                    cells.append(f"{r.percent:+.1f}%{note}")
            bd_rows.append([e(codec), "", *cells])
        parts += [
            f"<h2>BD-rate against {e(anchor)}, every metric</h2>",
            f"<p class='meta'>bjontegaard.bd_rate, {METHOD} interpolation of log-rate over the "
            "metric; negative = fewer bits for the same quality. Every metric gets a value "
            "where the two curves share a range of quality; where they do not (or a curve is "
            "not monotone), the cell says why. No single column is the verdict: a codec can "
            "win on structure (MS-SSIM) and lose on colour (colour shift) or pixels (PSNR).</p>",
            _table(["codec", "", *[_metric_header(m) for m in bd_metrics]], bd_rows),
        ]
    if (out_dir / "rd.svg").exists():
        parts += [
            "<h2>Rate–distortion</h2><div class='plots'>",
            "<p class='meta'>Left of each pair: the range of our rates; right: every point. "
            "Circles: a codec at full size; squares and triangles: the same codec on a 2× or 4× "
            "smaller image, upscaled.</p>",
            f"<img src='{data_uri(out_dir / 'rd.svg')}' alt='rate-distortion plots'>",
            "<p class='meta'>Also as files: rd.png, rd.svg.</p></div>",
        ]
    if crops:
        parts.append("<h2>Crops at matched rate</h2>")
        for i, cs in enumerate(crops):
            top, left, h, w = cs["box"]
            parts.append(
                f"<div class='cropset'><h3>{e(cs['image'])} · level {cs['level']} · "
                f"region {w}×{h} at ({left}, {top})</h3><div class='row'>"
            )
            for codec, (src, bpp) in cs["crops"].items():
                caption = e(codec) + ("" if bpp is None else f"<br>{bpp:.4f} bpp")
                parts.append(
                    f"<figure><img src='{e(src)}' alt='{e(codec)}'>"
                    f"<figcaption>{caption}</figcaption></figure>"
                )
            parts.append("</div>")
            options = "".join(
                f"<option value='{e(src)}'>{e(codec)}</option>"
                for codec, (src, _) in cs["crops"].items()
            )
            names = list(cs["crops"])
            first = cs["crops"]["oscar"][0] if "oscar" in cs["crops"] else cs["crops"][names[0]][0]
            second_name = next((n for n in names if n not in ("oscar", "original")), names[0])
            second = cs["crops"][second_name][0]
            left_opts = options.replace(f"value='{e(first)}'", f"value='{e(first)}' selected")
            right_opts = options.replace(f"value='{e(second)}'", f"value='{e(second)}' selected")
            parts.append(
                f"<div class='compare' id='compare-{i}'>Compare: left "
                f"<select class='left'>{left_opts}</select> right "
                f"<select class='right'>{right_opts}</select> <span class='label muted'></span>"
                f"<div class='stage'><img class='under' src='{e(second)}' alt='right'>"
                f"<img class='over' src='{e(first)}' alt='left'></div>"
                "<input type='range' min='0' max='100' value='50' aria-label='split'></div></div>"
            )
    sweeps = [a for a in result.aggregates if a.kind == "sweep"]
    if sweeps:
        rows, _ = _aggregate_rows(sweeps, metrics)
        sweep_headers = list(headers)
        sweep_headers[1] = "setting"
        parts += [
            "<h2>Baseline sweeps</h2><details><summary>Each baseline at fixed settings over all "
            f"images ({len(sweeps)} rows)</summary>",
            _table(sweep_headers, rows),
            "</details>",
        ]
    if published:
        rows = [
            [e(p.codec), e(p.metric), _fmt(p.bpp), _fmt(p.value), e(p.source)] for p in published
        ]
        parts += [
            "<h2>Published numbers (not re-measured)</h2>",
            _table(["codec", "metric", "bpp", "value", "source"], rows),
        ]
    parts += [
        "<p class='meta'>Files: per_image.csv/json, aggregates.csv/json, bd_rate.csv, "
        "summary.json.</p>",
        f"<script>{_SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts)
