"""Print the model card's tables (markdown) from a training run, an `oscar eval` output and a model.

    python scripts/model_card_tables.py RUN_DIR EVAL_DIR MODEL_DIR
    python scripts/model_card_tables.py --effort MODEL_DIR EVAL_DIR...   (one per encoder effort)
    python scripts/model_card_tables.py --steps MODEL_DIR EVAL_DIR...    (one per decoding steps)

Every number comes from files those commands wrote: the stages' ``done.json`` (steps, wall time,
hardware, last logged losses, validation), the model's ``oscar.json`` (calibrated cosines and
timesteps) and the evaluation's ``aggregates.json`` (measured bytes, metrics, times).
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

from oscar.store.pretrained import read_config

BASELINES = ("jpeg", "webp", "avif", "jxl")


def fmt(value, digits=3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 else f"{value:.{digits}f}"
    return str(value)


def training_table(run: Path) -> str:
    rows = [
        "| stage | steps | batch | wall time | hardware | last logged losses | validation |",
        "|---|---|---|---|---|---|---|",
    ]
    for done in sorted(run.glob("*/done.json")):
        d = json.loads(done.read_text())
        cfg, hw = d.get("config", {}), d.get("hardware", {})
        losses = ", ".join(
            f"{k.split('/')[-1]} {v:.4g}" for k, v in d.get("final_losses", {}).items()
        )
        val = ", ".join(
            f"{k.split('/')[-1]} {v:.4g}" for k, v in (d.get("validation") or {}).items()
        )
        # the machine: in ``hardware`` in older records, in ``environment`` since training
        # shares the environment record of bench and eval
        machine = d.get("environment", {}).get("machine", {})
        cpu = hw.get("cpu") or (
            f"{machine['cpu']} x{machine['logical_cpus']}" if machine.get("cpu") else None
        )
        hardware = f"{hw.get('processes', '?')}× {cpu or hw.get('device', '?')}"
        threads = hw.get("torch_threads") or machine.get("torch_threads")
        if threads:
            hardware += f", {threads} threads"
        steps = d.get("steps", "–")
        batch = cfg.get("batch_size", "–") if d["stage"] not in ("calibrate", "priors") else "–"
        minutes = d.get("wall_seconds", 0) / 60
        rows.append(
            f"| {d['index']:02d} {d['stage']} | {steps} | {batch} | {minutes:.1f} min | "
            f"{hardware} | {losses or '–'} | {val or '–'} |"
        )
    return "\n".join(rows)


def calibration_table(model: Path) -> str:
    config = read_config(model)
    rows = [
        "| level | grid factor | codebook | nominal bpp | measured cosine | timestep |",
        "|---|---|---|---|---|---|",
    ]
    for lv in config.levels:
        rows.append(
            f"| {lv.level} | {lv.grid_factor} | {lv.codebook_size} | "
            f"{lv.nominal_bpp:.4f} | {fmt(lv.cosine)} | {lv.timestep} |"
        )
    return "\n".join(rows)


def _by_level(aggs: list[dict]) -> dict[int, dict]:
    """Our codec's aggregates of an `oscar eval` output, by level."""
    return {a["level"]: a for a in aggs if a["codec"] == "oscar" and a["kind"] == "oscar"}


def results_table(model: Path, evaluation: Path) -> str:
    config = read_config(model)
    nominal = {lv.level: lv.nominal_bpp for lv in config.levels}
    aggs = json.loads((evaluation / "aggregates.json").read_text())
    ours = _by_level(aggs)
    matched = {(a["codec"], a["level"]): a for a in aggs if a["kind"] == "matched"}
    head = [
        "level",
        "nominal bpp",
        "measured bpp",
        "saving",
        "PSNR",
        "MS-SSIM",
        "encode s",
        "decode s",
    ]
    head += [f"{b} PSNR / MS-SSIM at matched bpp" for b in BASELINES]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for level in sorted(ours):
        a = ours[level]
        m = a["metrics"]
        cells = [
            str(level),
            f"{nominal[level]:.4f}",
            f"{a['bpp']:.4f}",
            f"{100 * (1 - a['bpp'] / nominal[level]):.0f} %",
            fmt(m.get("psnr"), 2),
            fmt(m.get("ms_ssim"), 3),
            f"{a['encode_s']:.2f}",
            f"{a['decode_s']:.2f}",
        ]
        for b in BASELINES:
            r = matched.get((b, level))
            if r is None:
                cells.append("–")
                continue
            floor = "" if set(r.get("statuses", {})) <= {"ok"} else " (floor)"
            cells.append(
                f"{fmt(r['metrics'].get('psnr'), 2)} / {fmt(r['metrics'].get('ms_ssim'), 3)}"
                f" at {r['bpp']:.4f}{floor}"
            )
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _ours(evaluation: Path) -> tuple[dict, dict[int, dict]]:
    """(summary, per-level aggregates of our codec) of one `oscar eval` output."""
    summary = json.loads((evaluation / "summary.json").read_text())
    return summary, _by_level(json.loads((evaluation / "aggregates.json").read_text()))


def _steps_label(summary: dict) -> str:
    steps = summary.get("decoding steps", "1").split(" ")[0]  # older outputs: one step
    return f"{steps} step" + ("" if steps == "1" else "s")


def comparison_table(model: Path, evaluations: list[Path], by: str) -> str:
    """Our codec per level, one column per evaluation: ``by`` "effort" (bpp / PSNR / MS-SSIM for
    each encoder effort) or "steps" (PSNR / MS-SSIM / mean decode seconds for each number of
    decoding steps; the files, so the rates, are the same)."""
    nominal = {lv.level: lv.nominal_bpp for lv in read_config(model).levels}
    runs = [_ours(e) for e in evaluations]
    if by == "effort":
        labels = [f"effort {s.get('encoder effort', '0')}" for s, _ in runs]
        head = [f"{label}: bpp / PSNR / MS-SSIM" for label in labels]
    else:
        labels = [_steps_label(s) for s, _ in runs]
        head = [f"{label}: PSNR / MS-SSIM / decode s" for label in labels]
    head = ["level", "nominal bpp", *head]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for level in sorted(nominal):
        cells = [str(level), f"{nominal[level]:.4f}"]
        for _, ours in runs:
            a = ours.get(level)
            if a is None:
                cells.append("–")
                continue
            m = a.get("metrics", {})
            quality = f"{fmt(m.get('psnr'), 2)} / {fmt(m.get('ms_ssim'), 4)}"
            timed = f"{quality} / {a['decode_s']:.2f}"
            cells.append(f"{a['bpp']:.4f} / {quality}" if by == "effort" else timed)
        rows.append("| " + " | ".join(cells) + " |")
    notes = []
    for label, (_, ours) in zip(labels, runs, strict=True):
        levels = sorted(ours)
        for metric in ("psnr", "ms_ssim"):
            values = [ours[lv]["metrics"].get(metric) for lv in levels]
            rising = all(b > a for a, b in itertools.pairwise(values))
            notes.append(f"{label}: {metric} rises with the level: {rising}")
    return "\n".join(rows) + "\n\n" + "\n".join(notes)


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] in ("--effort", "--steps"):
        print(comparison_table(Path(argv[1]), [Path(a) for a in argv[2:]], argv[0][2:]))
        return 0
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    run, evaluation, model = map(Path, argv)
    print("## Training\n")
    print(training_table(run))
    print("\n## Calibrated rate table\n")
    print(calibration_table(model))
    print("\n## Held-out results\n")
    print(results_table(model, evaluation))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
