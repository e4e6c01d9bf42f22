"""Regenerate BENCHMARKS.md: run ``oscar bench`` groups, keep their JSON, rewrite the tables.

    python benchmarks/run.py                 # the full set (about 15 minutes on 2 quiet cores)
    python benchmarks/run.py --quick         # fewer sizes and repeats, for a smoke run
    python benchmarks/run.py --render-only   # rewrite BENCHMARKS.md from benchmarks/results/

Without ``--model`` it builds a randomly initialised ``small`` model (``oscar init
configs/small.json``) and fits its entropy priors on the packaged sample image: timings do not
depend on the weights' values. Results go to ``benchmarks/results/<group>.json``; BENCHMARKS.md
is rewritten from ``benchmarks/template.md`` with the date, commit, machine and load average.
Run it on an otherwise idle machine: figures taken while other work shares the CPU are marked
provisional in the output.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TEMPLATE = ROOT / "benchmarks" / "template.md"
OUTPUT = ROOT / "BENCHMARKS.md"

# name → (description, oscar bench arguments, quick-mode arguments or None to skip)
GROUPS: dict[str, tuple[str, list[str], list[str] | None]] = {
    "main": (
        "768×512, one step vs 4 and 20 DDIM steps (float32, tuned CPU path)",
        ["--sizes", "768x512", "--steps", "1,4,20", "--repeats", "7"],
        ["--sizes", "768x512", "--steps", "1,4,20", "--repeats", "3"],
    ),
    "baseline": (
        "768×512, the CPU path before tuning (default allocator, contiguous VAE decoder)",
        ["--sizes", "768x512", "--steps", "1,4,20", "--repeats", "7", "--baseline"],
        ["--sizes", "768x512", "--steps", "1", "--repeats", "3", "--baseline"],
    ),
    "sizes": (
        "image sizes, one-step decoding",
        ["--sizes", "512x512,768x512,1920x1080,3840x2160", "--steps", "1", "--repeats", "3"],
        ["--sizes", "512x512,1920x1080", "--steps", "1", "--repeats", "2"],
    ),
    "sizes-baseline": (
        "image sizes, the CPU path before tuning (peak memory before/after)",
        ["--sizes", "1920x1080,3840x2160", "--steps", "1", "--repeats", "1", "--baseline"],
        None,
    ),
    "steps-1080p": (
        "1920×1080, one step vs 4 and 20 DDIM steps",
        ["--sizes", "1920x1080", "--steps", "1,4,20", "--repeats", "2"],
        None,
    ),
    "bfloat16": (
        "768×512 in bfloat16 (opt-in), with its difference to float32",
        ["--sizes", "768x512", "--steps", "1,4,20", "--dtype", "bfloat16", "--repeats", "7"],
        ["--sizes", "768x512", "--steps", "1", "--dtype", "bfloat16", "--repeats", "3"],
    ),
    "batch": (
        "512×512, batches of 1 and 4 images per call",
        ["--sizes", "512x512", "--steps", "1", "--batch", "1,4", "--repeats", "5"],
        None,
    ),
}

TARGET_SIZE = (768, 512)
MEMORY_LIMIT_MB = 6e9 / 2**20  # "under 6 GB", decimal gigabytes


def oscar(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "oscar.cli", *args], check=True)


def make_model(folder: Path) -> Path:
    model = folder / "small"
    oscar("init", str(ROOT / "configs" / "small.json"), "-o", str(model), "--force")
    oscar("fit-priors", str(model), str(ROOT / "src" / "oscar" / "assets" / "sample.png"))
    return model


def run_groups(model: Path, names: list[str], quick: bool, extra: list[str]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in names:
        description, args, quick_args = GROUPS[name]
        if quick and quick_args is None:
            continue
        print(f"== {name}: {description}", flush=True)
        out = RESULTS / f"{name}.json"
        chosen = quick_args if quick else args
        oscar("bench", "--model", str(model), *chosen, *extra, "-o", str(out))


# ----------------------------------------------------------------------------- rendering
def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def find(doc: dict | None, width: int, height: int) -> dict | None:
    for r in (doc or {}).get("results", []):
        if (r["config"]["width"], r["config"]["height"]) == (width, height):
            return r
    return None


def median(entry: dict) -> float:
    return entry["total"]["wall_s"]["median"]


def targets_table(docs: dict[str, dict | None]) -> str:
    from oscar.bench_report import markdown_table

    rows = []
    main = find(docs.get("main"), *TARGET_SIZE)
    if main is not None:
        dec, enc = median(main["decode"]["1"]), median(main["encode"])
        rows.append(["decode 768×512 (median)", "≤ 1.0 s", f"{dec:.3f} s", _ok(dec <= 1.0)])
        rows.append(["encode 768×512 (median)", "≤ 0.6 s", f"{enc:.3f} s", _ok(enc <= 0.6)])
        if "20" in main["decode"]:
            ratio = main["decode"]["20"]["time_vs_one_step"]
            rows.append(
                [
                    "`--steps 20` decode ÷ one-step decode, same file, same run",
                    "≥ 10×",
                    f"{ratio:.1f}×",
                    _ok(ratio >= 10),
                ]
            )
    four_k = find(docs.get("sizes"), 3840, 2160)
    if four_k is not None:
        peak = decode_peak(four_k)
        rows.append(
            [
                "peak memory, 3840×2160 decode (process RSS, decoding alone)",
                "< 6 GB",
                f"{peak * 2**20 / 1e9:.2f} GB",
                _ok(peak < MEMORY_LIMIT_MB),
            ]
        )
    big = find(docs.get("steps-1080p"), 1920, 1080)
    if big is not None and "20" in big["decode"]:
        ratio = big["decode"]["20"]["time_vs_one_step"]
        rows.append(["(for reference) the same ratio at 1920×1080", "", f"{ratio:.1f}×", ""])
    if not rows:
        return "_No results yet._"
    return markdown_table(["target (issue 6)", "goal", "measured", "met"], rows)


def flop_ratio(doc: dict | None) -> str:
    """The 20-step/1-step ratio that the FLOP counts alone would give, from the main run."""
    r = find(doc, *TARGET_SIZE)
    if r is None or "gflop" not in r["decode"]["1"]["total"]:
        return ""
    stages = r["decode"]["1"]["stages"]
    unet, total = stages["unet"]["gflop"], r["decode"]["1"]["total"]["gflop"]
    vae = stages["vae_decode"]["gflop"]
    return (
        f"At 768×512 one-step decoding is {total:.1f} GFLOP, of which the VAE decoder is "
        f"{vae:.1f} and the UNet {unet:.1f}; counting FLOPs alone, 20 steps would cost "
        f"{(total + 19 * unet) / total:.1f}× one step."
    )


def decode_peak(result: dict) -> float:
    """Peak RSS (MB) of decoding alone (a fresh process), else of the main measurement."""
    if "decode_only" in result:
        return result["decode_only"]["peak_memory_mb"]
    return result["decode"]["1"]["peak_memory_mb"]


def _db(value: float | None) -> str:
    return "identical" if value is None else f"{value:.1f} dB"


def _ok(flag: bool) -> str:
    return "yes" if flag else "**no**"


def before_after_table(before: dict | None, after: dict | None) -> str:
    """Per-stage medians at 768×512: the untuned path vs the tuned one, wall and CPU time."""
    from oscar.bench_report import markdown_table
    from oscar.stages import DECODE_STAGES, ENCODE_STAGES

    b, a = find(before, *TARGET_SIZE), find(after, *TARGET_SIZE)
    if b is None or a is None:
        return "_No results yet._"
    rows = []
    for path, stages in (("encode", ENCODE_STAGES), ("decode", DECODE_STAGES)):
        pb = b["encode"] if path == "encode" else b["decode"]["1"]
        pa = a["encode"] if path == "encode" else a["decode"]["1"]
        for name in (*stages, "total"):
            eb = pb["total"] if name == "total" else pb["stages"][name]
            ea = pa["total"] if name == "total" else pa["stages"][name]
            wb, wa = eb["wall_s"]["median"], ea["wall_s"]["median"]
            cb, ca = eb["cpu_s"]["median"], ea["cpu_s"]["median"]
            label = f"**{path} total**" if name == "total" else f"{path}: {name}"
            rows.append(
                [
                    label,
                    f"{wb * 1000:.1f}",
                    f"{wa * 1000:.1f}",
                    _ratio(wb, wa),
                    f"{cb * 1000:.1f}",
                    f"{ca * 1000:.1f}",
                ]
            )
    header = ["stage", "before ms", "after ms", "speed-up", "before CPU ms", "after CPU ms"]
    return markdown_table(header, rows)


def _ratio(before: float, after: float) -> str:
    return f"{before / after:.2f}×" if after > 1e-4 and before > 1e-4 else ""


def memory_table(before: dict | None, after: dict | None) -> str:
    from oscar.bench_report import markdown_table

    rows = []
    for r in (after or {}).get("results", []):
        c = r["config"]
        b = find(before, c["width"], c["height"])
        only = r.get("decode_only", {})
        stage_peaks = only.get("stage_peak_memory_mb", {})
        rows.append(
            [
                f"{c['width']}×{c['height']}",
                f"{decode_peak(r):.0f}",
                f"{decode_peak(b):.0f}" if b else "",
                f"{only['start_memory_mb']:.0f}" if only else "",
                f"{stage_peaks.get('unet', 0):.0f}" if only else "",
                f"{stage_peaks.get('vae_decode', 0):.0f}" if only else "",
                f"{r['encode']['peak_memory_mb']:.0f}",
                f"{b['encode']['peak_memory_mb']:.0f}" if b else "",
                f"{r['decode']['1']['peak_memory_mb']:.0f}",
            ]
        )
    if not rows:
        return "_No results yet._"
    header = [
        "size",
        "decode peak MB",
        "before tuning",
        "RSS at start MB",
        "peak in unet MB",
        "peak in vae_decode MB",
        "encode peak MB",
        "before tuning",
        "decode peak after encoding MB",
    ]
    return markdown_table(header, rows)


def bf16_table(doc: dict | None, fp32: dict | None) -> str:
    from oscar.bench_report import markdown_table

    r, f = find(doc, *TARGET_SIZE), find(fp32, *TARGET_SIZE)
    if r is None or "vs_float32" not in r:
        return "_No results yet._"
    d = r["vs_float32"]
    rows = [["encode s", f"{median(f['encode']):.3f}" if f else "", f"{median(r['encode']):.3f}"]]
    for steps in r["decode"]:
        fp = f"{median(f['decode'][steps]):.3f}" if f and steps in f["decode"] else ""
        rows.append(
            [
                f"decode s ({steps} step{'s' * (steps != '1')})",
                fp,
                f"{median(r['decode'][steps]):.3f}",
            ]
        )
    rows.append(["indices equal to float32's", "100 %", f"{d['indices_equal_fraction']:.1%}"])
    rows.append(["decoder PSNR vs float32 (same file)", "∞", _db(d["decoder_psnr_db"])])
    rows.append(["largest pixel difference (same file)", "0", str(d["decoder_max_abs_diff"])])
    rows.append(["end-to-end PSNR vs float32", "∞", _db(d["end_to_end_psnr_db"])])
    return markdown_table(["768×512", "float32", "bfloat16"], rows)


def group_section(name: str, doc: dict | None, stages: bool) -> str:
    from oscar.bench_report import markdown_table, stage_rows, summary_rows

    if doc is None:
        return "_Not run._"
    parts = [f"`{' '.join(_bench_args(doc))}`", "", markdown_table(*summary_rows(doc))]
    if stages:
        for r in doc["results"]:
            c = r["config"]
            parts += [
                "",
                f"Per stage, {c['width']}×{c['height']}, level {c['level']}, "
                f"{r['runtime']['dtype']}, batch {c['batch']} (median ms of {c['repeats']}; "
                f"{r['file_bytes']} bytes, {r['bpp']:.4f} bpp):",
                "",
                markdown_table(*stage_rows(r)),
            ]
    return "\n".join(parts)


def _bench_args(doc: dict) -> list[str]:
    argv = list(doc.get("command", []))
    start = argv.index("bench") if "bench" in argv else 0
    shown = ["oscar", *argv[start:]]
    for flag in ("--model", "-o"):
        if flag in shown:
            i = shown.index(flag)
            shown[i + 1] = "DIR" if flag == "--model" else f"benchmarks/results/{_name(doc)}.json"
    return shown


def _name(doc: dict) -> str:
    return doc.get("_group", "results")


def provenance(docs: dict[str, dict | None]) -> tuple[str, bool]:
    """Date, commit, machine, versions and load; and whether the machine looked shared."""
    present = [d for d in docs.values() if d]
    if not present:
        return "_No results yet._", False
    first = present[0]
    m, v, git = first["machine"], first["versions"], first["git"]
    loads = [x for d in present for x in (d["load_average"]["start"] or [])[:1]]
    loads += [r.get("load_average_after", [0])[0] for d in present for r in d["results"]]
    busy = max(loads, default=0) > 0.5 * (m["usable_cpus"] or 1)
    dates = sorted(d["created"] for d in present)
    commits = sorted({(d["git"].get("commit") or "unknown")[:10] for d in present})
    dirty = any(d["git"].get("dirty") for d in present)
    lines = [
        f"- Date: {dates[0]} to {dates[-1]} (UTC)",
        f"- Commit: {', '.join(commits)}" + (" (with uncommitted changes)" if dirty else ""),
        f"- Machine: {m['cpu']}, {m['usable_cpus']} usable CPUs, {m['torch_threads']} torch "
        f"threads, CPU features {', '.join(m['cpu_flags']) or 'n/a'}, "
        f"{m['memory_gb']:.0f} GB memory, {m['os']}"
        + (f", {m['accelerator']}" if m.get("accelerator") else ""),
        f"- Software: Python {v['python']}, torch {v['torch']}, diffusers {v['diffusers']}, "
        f"numpy {v['numpy']}, constriction {v['constriction']}",
        f"- Load average (1 min) seen during the runs: {min(loads):.1f} to {max(loads):.1f}",
    ]
    del git
    return "\n".join(lines), busy


def render() -> str:
    docs = {name: load(name) for name in GROUPS}
    for name, doc in docs.items():
        if doc is not None:
            doc["_group"] = name
    info, busy = provenance(docs)
    banner = (
        "> **Provisional.** These figures were measured while other jobs shared the machine "
        "(load average above half the CPU count), so wall times are inflated and noisy; ratios "
        "within one run (interleaved repeats) are more trustworthy than absolute times. "
        "Regenerate on an idle machine with `python benchmarks/run.py`."
        if busy
        else "> Measured on an idle machine."
    )
    fields = {
        "banner": banner,
        "provenance": info,
        "targets": targets_table(docs),
        "flop_ratio": flop_ratio(docs["main"]),
        "main": group_section("main", docs["main"], stages=True),
        "before_after": before_after_table(docs["baseline"], docs["main"]),
        "baseline": group_section("baseline", docs["baseline"], stages=False),
        "sizes": group_section("sizes", docs["sizes"], stages=False),
        "memory": memory_table(docs["sizes-baseline"], docs["sizes"]),
        "steps_1080p": group_section("steps-1080p", docs["steps-1080p"], stages=True),
        "bfloat16": bf16_table(docs["bfloat16"], docs["main"]),
        "batch": group_section("batch", docs["batch"], stages=False),
        "sizes_stages": group_section("sizes", docs["sizes"], stages=True),
    }
    text = TEMPLATE.read_text()
    for key, value in fields.items():
        text = text.replace("{{" + key + "}}", value)
    missing = re.findall(r"\{\{(\w+)\}\}", text)
    if missing:
        raise SystemExit(f"template fields without values: {missing}")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model directory (default: random small)")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    parser.add_argument("--groups", default=",".join(GROUPS), help="comma-separated groups")
    parser.add_argument("--render-only", action="store_true", help="only rewrite BENCHMARKS.md")
    parser.add_argument("--device", default="cpu", help="device for oscar bench")
    args = parser.parse_args()
    names = [g for g in args.groups.split(",") if g]
    unknown = set(names) - set(GROUPS)
    if unknown:
        parser.error(f"unknown groups {sorted(unknown)}; known: {', '.join(GROUPS)}")
    if not args.render_only:
        with tempfile.TemporaryDirectory(prefix="oscar-bench-model-") as tmp:
            model = Path(args.model) if args.model else make_model(Path(tmp))
            run_groups(model, names, args.quick, ["--device", args.device])
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
