"""Tables from ``oscar bench`` results: fixed-width text for the terminal, Markdown for files.

Both read the JSON document of :func:`oscar.bench.timing.run_benchmark` (schema ``oscar-bench/1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from oscar.coding.effort import DEFAULT_EFFORT
from oscar.runtime.stages import DECODE_STAGES, ENCODE_STAGES


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}" if seconds >= 0.1 else f"{seconds * 1000:.1f}"


def _s(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.1f}"


def _gflop(value: float) -> str:
    return f"{value:.1f}" if value >= 1 else f"{value:.3f}"


def _db(value: float | None) -> str:
    return "identical" if value is None else f"{value:.1f} dB"


def _spread(stats: dict[str, Any]) -> str:
    return f"{_s(stats['p25'])}–{_s(stats['p75'])}"


def config_label(result: dict[str, Any]) -> str:
    c = result["config"]
    # Results written before encoder effort existed have none: they ran nearest codewords (0).
    effort = c.get("effort", 0)
    return f"{c['width']}x{c['height']}" + (f" effort {effort}" if effort != DEFAULT_EFFORT else "")


def summary_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per configuration and number of decoding steps."""
    header = [
        "size",
        "level",
        "dtype",
        "batch",
        "steps",
        "encode s",
        "decode s",
        "decode IQR s",
        "× 1-step",
        "enc peak MB",
        "dec peak MB",
        "dec-only peak MB",
        "decode img/s",
    ]
    rows = []
    for r in doc["results"]:
        c = r["config"]
        enc = r["encode"]
        for steps, dec in r["decode"].items():
            rows.append(
                [
                    config_label(r),
                    str(c["level"]),
                    r["runtime"]["dtype"],
                    str(c["batch"]),
                    steps,
                    _s(enc["total"]["wall_s"]["median"]),
                    _s(dec["total"]["wall_s"]["median"]),
                    _spread(dec["total"]["wall_s"]),
                    f"{dec.get('time_vs_one_step', float('nan')):.1f}",
                    f"{enc['peak_memory_mb']:.0f}",
                    f"{dec['peak_memory_mb']:.0f}",
                    f"{r['decode_only']['peak_memory_mb']:.0f}"
                    if "decode_only" in r and steps == "1"
                    else "",
                    f"{dec['images_per_s']:.2f}",
                ]
            )
    return header, rows


def stage_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per-stage medians (ms) of one configuration: encode, then decode for each steps value."""
    steps = list(result["decode"])
    header = ["stage", "encode ms", *[f"decode ms ({s} step{'s' * (s != '1')})" for s in steps]]
    with_flops = "gflop" in result["encode"]["total"]
    if with_flops:
        header += ["encode GFLOP", "decode GFLOP (1 step)" if "1" in steps else "decode GFLOP"]
    header.append("peak MB")
    rows = []
    for name in (*ENCODE_STAGES, *DECODE_STAGES, "other", "total"):
        row = [name]
        if with_flops:
            flop_paths = [result["encode"], result["decode"]["1" if "1" in steps else steps[0]]]
        peak = None
        for path in [result["encode"], *[result["decode"][s] for s in steps]]:
            if name == "total":
                row.append(_ms(path["total"]["wall_s"]["median"]))
                peak = max(peak or 0, path["peak_memory_mb"])
                continue
            entry = path["stages"].get(name)
            in_path = name == "other" or name in (
                ENCODE_STAGES if path is result["encode"] else DECODE_STAGES
            )
            if entry is None or not in_path:
                row.append("")
                continue
            row.append(_ms(entry["wall_s"]["median"]))
            if "peak_memory_mb" in entry:
                peak = max(peak or 0, entry["peak_memory_mb"])
        if with_flops:
            for path in flop_paths:
                entry = path["total"] if name == "total" else path["stages"].get(name, {})
                row.append(_gflop(entry["gflop"]) if entry.get("gflop") else "")
        row.append("" if peak is None else f"{peak:.0f}")
        rows.append(row)
    return header, rows


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = [c.rjust(w) for c, w in zip(row, widths, strict=True)]
        cells[0] = row[0].ljust(widths[0])
        lines.append("  ".join(cells))
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def throughput_text(gflops: dict[str, float]) -> str:
    """The machine's measured float32 speed (oscar.bench.timing.float32_throughput), in words."""
    return f"{gflops['matmul']:.0f} GFLOP/s (matmul), {gflops['conv3x3']:.0f} GFLOP/s (3×3 conv)"


def describe_environment(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    first = doc["results"][0] if doc["results"] else None
    parts = [f"{m['cpu']} ({m['usable_cpus']} usable CPUs, {m['torch_threads']} torch threads)"]
    if m.get("accelerator"):
        parts.append(m["accelerator"])
    if first is not None:
        rt = first["runtime"]
        model = first["model"]
        parts.append(
            f"model {model['name']} ({model['parameters'] / 1e6:.1f} M parameters), "
            f"{rt['device']}, {rt['memory_format']}, "
            f"allocator {'tuned' if rt['allocator_tuned'] else 'default'}"
        )
        if "float32_gflops" in rt:  # results written before it was measured have none
            parts.append(f"float32 {throughput_text(rt['float32_gflops'])}")
    git = doc.get("git", {})
    commit = (git.get("commit") or "unknown")[:10]
    if git.get("dirty"):  # the changed files are in the JSON (git.changed)
        count = git.get("changed_count")
        commit += f" (dirty: {count} changed files)" if count else " (dirty)"
    v = doc["versions"]
    parts.append(f"torch {v.get('torch')}, diffusers {v.get('diffusers')}, commit {commit}")
    load = doc.get("load_average", {})
    parts.append(f"load average at start {load.get('start')}, at end {load.get('end')}")
    return "; ".join(parts)


def text_report(doc: dict[str, Any]) -> str:
    """What ``oscar bench`` prints: the environment, a summary, per-stage tables."""
    out = [describe_environment(doc), "", text_table(*summary_rows(doc))]
    for r in doc["results"]:
        c = r["config"]
        out += [
            "",
            f"{config_label(r)}, level {c['level']}, {r['runtime']['dtype']}, batch {c['batch']}: "
            f"median wall time per stage ({c['repeats']} repeats after {c['warmup']} warm-up), "
            f"{r['file_bytes']} bytes ({r['bpp']:.4f} bpp)",
            text_table(*stage_rows(r)),
        ]
        if "vs_float32" in r:
            d = r["vs_float32"]
            out.append(
                f"vs float32: decoder PSNR {_db(d['decoder_psnr_db'])} (max |diff| "
                f"{d['decoder_max_abs_diff']}), indices equal {d['indices_equal_fraction']:.1%}"
            )
    return "\n".join(out)
