"""BENCHMARKS.md from the JSON that ``benchmarks/run.py`` keeps: tables, notes and setup.

``render(results, template)`` fills ``benchmarks/template.md``'s ``{{fields}}`` from
``results/<group>.json`` (``oscar bench`` documents, schema ``oscar-bench/1``) and
``results/run.json`` (model, commit, times, other processes' CPU use). Missing groups give
"_Not run._" or "_No results yet._", so the file renders at every stage.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

GROUP_NAMES = (
    "main",
    "baseline",
    "sizes",
    "sizes-4k",
    "4k-baseline",
    "steps-1080p",
    "bfloat16",
    "batch",
    "effort",
    "sd21-architecture",
)
TARGET_SIZE = (768, 512)
MEMORY_LIMIT_MB = 6e9 / 2**20  # "under 6 GB", decimal gigabytes
BUSY_SHARE = 0.1  # other processes' share of the CPU above which results are provisional
# results/machines/<name>/<group>.json: the groups comparing 1 and 20 steps, measured on other
# machines (``benchmarks/run.py --machine NAME``), shown side by side with this page's.
MACHINES = "machines"
MACHINE_GROUPS = ("main", "steps-1080p")


# ----------------------------------------------------------------------------- reading results
def load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def merged(*docs: dict | None) -> dict | None:
    """The results of several groups as one document (the first one's header)."""
    present = [d for d in docs if d]
    if not present:
        return None
    return {**present[0], "results": [r for d in present for r in d["results"]]}


def find(doc: dict | None, width: int, height: int, dtype: str | None = None) -> dict | None:
    for r in (doc or {}).get("results", []):
        if (r["config"]["width"], r["config"]["height"]) != (width, height):
            continue
        if dtype is None or r["runtime"]["dtype"] == dtype:
            return r
    return None


def median(entry: dict) -> float:
    return entry["total"]["wall_s"]["median"]


def decode_peak(result: dict) -> float:
    """Peak RSS (MB) of decoding alone (a fresh process), else of the main measurement."""
    if "decode_only" in result:
        return result["decode_only"]["peak_memory_mb"]
    return result["decode"]["1"]["peak_memory_mb"]


def _db(value: float | None) -> str:
    return "identical" if value is None else f"{value:.1f} dB"


def _ok(flag: bool) -> str:
    return "yes" if flag else "**no**"


def _ratio(before: float, after: float) -> str:
    return f"{before / after:.2f}×" if after > 1e-4 and before > 1e-4 else ""


# ----------------------------------------------------------------------------- tables and notes
def other_machines(results: Path) -> dict[str, dict[str, dict | None]]:
    """name → {group: document} of each run made with ``benchmarks/run.py --machine NAME``."""
    folder = results / MACHINES
    found = {}
    for path in sorted(folder.glob("*/main.json")) if folder.is_dir() else []:
        found[path.parent.name] = {group: load(path.parent, group) for group in MACHINE_GROUPS}
    return found


def steps_ratio(result: dict | None) -> float | None:
    """The `--steps 20` decode time over the one-step decode time, as measured in the same
    run; None where 20 steps were not run."""
    if result is None or "20" not in result["decode"]:
        return None
    return result["decode"]["20"]["time_vs_one_step"]


def ratio_parts(result: dict) -> dict[str, float] | None:
    """The one-step decode split as the 20-step/1-step ratio needs it (seconds): UNet pass,
    VAE decoder, the rest, and the VAE time below which the ratio reaches 10×.

    ratio >= 10  <=>  20U + V + O >= 10 (U + V + O)  <=>  V <= (10U - 9O) / 9, with U the UNet
    pass, V the VAE decoder and O the rest of the one-step decode (the same in both).
    """
    if "1" not in result["decode"] or steps_ratio(result) is None:
        return None
    one = result["decode"]["1"]
    unet, vae = (one["stages"][s]["wall_s"]["median"] for s in ("unet", "vae_decode"))
    rest = median(one) - unet - vae
    return {"unet": unet, "vae": vae, "rest": rest, "vae_limit": (10 * unet - 9 * rest) / 9}


def machines_table(own: dict[str, dict | None], others: dict[str, dict[str, dict | None]]) -> str:
    """The 1- and 20-step decodes at 768×512 (and the ratio at 1920×1080) on each machine."""
    from oscar.bench.report import markdown_table

    rows = []
    for name, groups in [("this page's", own), *others.items()]:
        doc = groups["main"]
        r = find(doc, *TARGET_SIZE)
        parts = ratio_parts(r) if r is not None else None
        if parts is None:
            continue
        speed = r["runtime"].get("float32_gflops")
        rows.append(
            [
                name,
                doc["created"][:10],
                _commit(doc["git"]),
                f"{doc['machine']['cpu']}, {doc['machine']['usable_cpus']} CPUs",
                f"{speed['matmul']:.0f} / {speed['conv3x3']:.0f}" if speed else "not recorded",
                f"{median(r['decode']['1']):.3f}",
                *(f"{parts[k] * 1e3:.1f}" for k in ("unet", "vae", "rest", "vae_limit")),
                f"{median(r['decode']['20']):.3f}",
                f"{steps_ratio(r):.1f}×",
                _steps_ratio(find(groups.get("steps-1080p"), 1920, 1080)),
            ]
        )
    if len(rows) < 2:
        return (
            "_Run on this page's machine only (`python benchmarks/run.py --machine NAME` adds "
            "one)._"
        )
    header = [
        "machine",
        "date",
        "commit",
        "CPU",
        "float32 GFLOP/s (matmul / 3×3 conv)",
        "1-step decode s",
        "UNet ms",
        "VAE decode ms",
        "rest ms",
        "VAE ms for 10×",
        "20-step decode s",
        "× 1-step",
        "× 1-step at 1920×1080",
    ]
    return markdown_table(header, rows)


def _commit(git: dict) -> str:
    """A run's commit, marked when the checkout had uncommitted changes."""
    commit = (git.get("commit") or "unknown")[:10]
    return f"{commit} (with uncommitted changes)" if git.get("dirty") else commit


def _steps_ratio(result: dict | None) -> str:
    ratio = steps_ratio(result)
    return "not run" if ratio is None else f"{ratio:.1f}×"


def targets_table(docs: dict[str, dict | None], others: dict[str, dict[str, dict | None]]) -> str:
    from oscar.bench.report import markdown_table

    rows = []
    main = find(docs.get("main"), *TARGET_SIZE)
    if main is not None:
        dec, enc = median(main["decode"]["1"]), median(main["encode"])
        rows.append(["decode 768×512 (median)", "≤ 1.0 s", f"{dec:.3f} s", _ok(dec <= 1.0)])
        rows.append(["encode 768×512 (median)", "≤ 0.6 s", f"{enc:.3f} s", _ok(enc <= 0.6)])
        ratio = steps_ratio(main)
        if ratio is not None:
            label = "`--steps 20` decode ÷ one-step decode, same file, same run"
            rows.append([label, "≥ 10×", f"{ratio:.1f}×", _ok(ratio >= 10)])
    four_k = find(docs.get("sizes-4k"), 3840, 2160)
    if four_k is not None:
        peak = decode_peak(four_k)
        label = "peak memory, 3840×2160 decode (process RSS, decoding alone)"
        rows.append([label, "< 6 GB", f"{peak * 2**20 / 1e9:.2f} GB", _ok(peak < MEMORY_LIMIT_MB)])
    own_model = (main or {}).get("model", {}).get("fingerprint")
    for name, groups in others.items():
        other = find(groups["main"], *TARGET_SIZE)
        ratio = steps_ratio(other)
        if ratio is not None:
            # Other machines' rows are kept across model changes: say which model they timed.
            theirs = other.get("model", {}).get("fingerprint")
            model = "same model" if theirs == own_model else f"model {theirs}"
            label = f"(another machine, `{name}`) the same ratio, 768×512, {model}"
            rows.append([label, "≥ 10×", f"{ratio:.1f}×", _ok(ratio >= 10)])
    ratio = steps_ratio(find(docs.get("steps-1080p"), 1920, 1080))
    if ratio is not None:
        rows.append(["(for reference) the same ratio at 1920×1080", "", f"{ratio:.1f}×", ""])
    ratio = steps_ratio(find(docs.get("sd21-architecture"), *TARGET_SIZE))
    if ratio is not None:
        label = "(for reference) the same ratio, 768×512, `sd21` architecture (random weights)"
        rows.append([label, "", f"{ratio:.1f}×", ""])
    if not rows:
        return "_No results yet._"
    return markdown_table(["target", "goal", "measured", "met"], rows)


def steps_note(docs: dict[str, dict | None]) -> str:
    """Why the 20-step/1-step ratio is what it is, from the FLOP counts of the main run."""
    r = find(docs.get("main"), *TARGET_SIZE)
    parts = ratio_parts(r) if r is not None else None
    if parts is None or "gflop" not in r["decode"]["1"]["total"]:
        return ""
    ratio = steps_ratio(r)
    one = r["decode"]["1"]
    total, unet = one["total"]["gflop"], one["stages"]["unet"]["gflop"]
    vae = one["stages"]["vae_decode"]["gflop"]
    unet_s, vae_s, rest_s, limit_s = (parts[k] for k in ("unet", "vae", "rest", "vae_limit"))
    vae_share = vae_s / median(one)
    by_flops = (total + 19 * unet) / total
    why = (
        "the UNet's attention and small matrix products run at a lower FLOP rate than the VAE's "
        "convolutions"
        if ratio > by_flops
        else "the VAE's full-resolution convolutions run at a lower FLOP rate than the UNet"
    )
    text = (
        f"**The 20-step/1-step ratio.** A `--steps N` decode costs hyper-synthesis, N UNet "
        f"passes and one VAE decode; the one-step decode costs the same with N = 1. At 768×512 "
        f"one-step decoding is {total:.1f} GFLOP, of which the VAE decoder is {vae:.1f} and the "
        f"UNet {unet:.1f}; counting FLOPs alone, 20 steps would cost {by_flops:.1f}× one step "
        f"(measured: {ratio:.1f}×; {why}). The VAE decoder, which produces the full-"
        f"resolution image, takes {vae_share:.0%} of the one-step decode time."
    )
    text += (
        f" Here the VAE decoder takes {vae_s * 1e3:.1f} ms, {vae_s / unet_s:.2f} UNet passes; with "
        f"the rest of the decode ({rest_s * 1e3:.1f} ms, mostly hyper-synthesis) the ratio reaches "
        f"10× only while it takes at most about (10·UNet − 9·rest)/9 = {limit_s * 1e3:.1f} ms, so "
        "speeding up the UNet alone lowers the ratio."
    )
    if ratio < 10:
        text += (
            " The ratio grows with image size, because the UNet's self-attention grows "
            "quadratically with the number of latent positions while the VAE grows linearly "
            "(see the 1920×1080 table)."
        )
    text += " " + sd21_note(docs, ratio)
    return text


def sd21_note(docs: dict[str, dict | None], small_ratio: float) -> str:
    """The same ratio for SD 2.1's architecture, measured with random weights, if it was run."""
    r = find(docs.get("sd21-architecture"), *TARGET_SIZE)
    parts = ratio_parts(r) if r is not None else None
    if parts is None:
        return (
            "For the `sd21` architecture the ratio was not measured in this run "
            "(`python benchmarks/run.py --groups sd21-architecture`)."
        )
    one, twenty = r["decode"]["1"], r["decode"]["20"]
    unet, vae, ratio = parts["unet"], parts["vae"], steps_ratio(r)
    if ratio >= 10:
        verdict = "reaches"
    else:
        verdict = "also stays below" if small_ratio < 10 else "stays below"
    return (
        f"A model of the `sd21` architecture (SD 2.1's VAE and UNet; "
        f"{r['model']['parameters'] / 1e6:.0f} M parameters with the hyper-coders; random "
        f"weights, whose values do not affect speed) {verdict} 10× at "
        f"768×512 on this machine: one step {median(one):.1f} s, 20 steps {median(twenty):.1f} s, "
        f"{ratio:.1f}×, because SD 2.1's VAE decoder ({vae:.1f} s) costs {vae / unet:.1f} UNet "
        f"passes ({unet:.1f} s){' too' if small_ratio < 10 else ''} (one repeat; table below)."
    )


def effort_table(effort: dict | None, main: dict | None) -> str:
    """Encode time with each encoder effort against the default encoder (same size, level)."""
    from oscar.bench.report import markdown_table

    runs = [
        r
        for r in (effort or {}).get("results", [])
        if (r["config"]["width"], r["config"]["height"]) == TARGET_SIZE
    ]
    if not runs:
        return "_Not run._"
    m = find(main, *TARGET_SIZE)
    columns = sorted(([m] if m else []) + runs, key=lambda r: r["config"].get("effort", 0))

    def label(r: dict) -> str:
        return f"effort {r['config'].get('effort', 0)}" + (" (default)" if r is m else "")

    header = ["768×512"] + [label(r) for r in columns]

    def search_s(r: dict) -> str:
        entry = r["encode"]["stages"].get("index_search")
        return f"{entry['wall_s']['median']:.3f}" if entry else "0"

    rows = [
        ["encode s (median)", *[f"{median(r['encode']):.3f}" for r in columns]],
        ["of which index search s", *[search_s(r) for r in columns]],
        ["decode s (same decoder)", *[f"{median(r['decode']['1']):.3f}" for r in columns]],
        ["file bytes (packaged sample)", *[str(r["file_bytes"]) for r in columns]],
    ]
    return f"`{' '.join(_bench_args(effort))}`\n\n{markdown_table(header, rows)}"


def before_after_table(before: dict | None, after: dict | None) -> str:
    """Per-stage medians at 768×512: the untuned path vs the tuned one, wall and CPU time."""
    from oscar.bench.report import markdown_table
    from oscar.runtime.stages import DECODE_STAGES, ENCODE_STAGES

    b, a = find(before, *TARGET_SIZE), find(after, *TARGET_SIZE)
    if b is None or a is None:
        return "_No results yet._"
    rows = []
    for path, stages in (("encode", ENCODE_STAGES), ("decode", DECODE_STAGES)):
        pb = b["encode"] if path == "encode" else b["decode"]["1"]
        pa = a["encode"] if path == "encode" else a["decode"]["1"]
        for name in (*stages, "total"):
            if name != "total" and not (name in pb["stages"] and name in pa["stages"]):
                continue  # a stage that one of the runs predates (index_search)
            eb = pb["total"] if name == "total" else pb["stages"][name]
            ea = pa["total"] if name == "total" else pa["stages"][name]
            wb, wa = eb["wall_s"]["median"], ea["wall_s"]["median"]
            cb, ca = eb["cpu_s"]["median"], ea["cpu_s"]["median"]
            label = f"**{path} total**" if name == "total" else f"{path}: {name}"
            row = [f"{wb * 1000:.1f}", f"{wa * 1000:.1f}", _ratio(wb, wa)]
            rows.append([label, *row, f"{cb * 1000:.1f}", f"{ca * 1000:.1f}"])
    header = ["stage", "before ms", "after ms", "speed-up", "before CPU ms", "after CPU ms"]
    return markdown_table(header, rows)


def memory_table(before: dict | None, after: dict | None) -> str:
    from oscar.bench.report import markdown_table

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
    from oscar.bench.report import markdown_table

    # float32 from the same group's run when it has one (same conditions), else the main group
    r = find(doc, *TARGET_SIZE, dtype="bfloat16")
    f = find(doc, *TARGET_SIZE, dtype="float32") or find(fp32, *TARGET_SIZE)
    if r is None or "vs_float32" not in r:
        return "_No results yet._"
    d = r["vs_float32"]
    rows = [["encode s", f"{median(f['encode']):.3f}" if f else "", f"{median(r['encode']):.3f}"]]
    for steps in r["decode"]:
        fp = f"{median(f['decode'][steps]):.3f}" if f and steps in f["decode"] else ""
        label = f"decode s ({steps} step{'s' * (steps != '1')})"
        rows.append([label, fp, f"{median(r['decode'][steps]):.3f}"])
    rows.append(["indices equal to float32's", "100 %", f"{d['indices_equal_fraction']:.1%}"])
    rows.append(["decoder PSNR vs float32 (same file)", "∞", _db(d["decoder_psnr_db"])])
    rows.append(["largest pixel difference (same file)", "0", str(d["decoder_max_abs_diff"])])
    rows.append(["end-to-end PSNR vs float32", "∞", _db(d["end_to_end_psnr_db"])])
    return markdown_table(["768×512", "float32", "bfloat16"], rows)


def bf16_hardware(docs: dict[str, dict | None]) -> str:
    doc = next((d for d in docs.values() if d), None)
    if doc is None:
        return ""
    flags = set(doc["machine"]["cpu_flags"])
    if flags & {"avx512_bf16", "amx_bf16"}:
        return (
            "This CPU has AVX-512 BF16, which oneDNN uses for bfloat16 convolutions and matrix "
            "products."
        )
    return "This CPU lacks AVX-512 BF16: bfloat16 is emulated and may be slower than float32."


def group_section(doc: dict | None, stages: bool) -> str:
    from oscar.bench.report import markdown_table, stage_rows, summary_rows

    if doc is None:
        return "_Not run._"
    parts = [f"`{' '.join(_bench_args(doc))}`", "", markdown_table(*summary_rows(doc))]
    if stages:
        for r in doc["results"]:
            c = r["config"]
            parts += [
                "",
                f"Per stage, {c['width']}×{c['height']}, level {c['level']}, "
                f"{r['runtime']['dtype']}, batch {c['batch']} (median ms of {c['repeats']} after "
                f"{c['warmup']} warm-up; {r['file_bytes']} bytes, {r['bpp']:.4f} bpp):",
                "",
                markdown_table(*stage_rows(r)),
            ]
    return "\n".join(parts)


def _bench_args(doc: dict) -> list[str]:
    argv = list(doc.get("command", []))
    start = argv.index("bench") if "bench" in argv else 0
    shown = ["oscar", *argv[start:]]
    for flag, value in (("--model", "DIR"), ("-o", f"benchmarks/results/{doc['_group']}.json")):
        if flag in shown:
            shown[shown.index(flag) + 1] = value
    return shown


def changed_text(git: dict, shown: int = 5) -> str:
    """``: a, b and N more`` for the files a dirty checkout changed; empty where the record
    predates their recording."""
    changed = git.get("changed") or []
    if not changed:
        return ""
    more = git.get("changed_count", len(changed)) - min(shown, len(changed))
    names = ", ".join(f"`{p}`" for p in changed[:shown])
    return f": {names}" + (f" and {more} more" if more else "")


def provenance(docs: dict[str, dict | None], run: dict | None) -> tuple[str, str]:
    """The setup list and the banner above it."""
    present = [d for d in docs.values() if d]
    if not present:
        return "_No results yet._", (
            "> **No measurements yet.** Run `python benchmarks/run.py` on an idle machine to fill "
            "in the tables."
        )
    m, v = present[0]["machine"], present[0]["versions"]
    dates = sorted(d["created"] for d in present)
    git = (run or {}).get("git") or present[0]["git"]
    commits = {(d["git"].get("commit") or "unknown")[:10] for d in present}
    commit = (git.get("commit") or "unknown")[:10]
    lines = [
        f"- Date: {dates[0]} to {dates[-1]} (UTC)",
        f"- Commit: {', '.join(sorted(commits)) if len(commits) > 1 else commit}"
        + (f" (with uncommitted changes{changed_text(git)})" if git.get("dirty") else ""),
        f"- Machine: {m['cpu']}, {m['usable_cpus']} usable CPUs, {m['torch_threads']} torch "
        f"threads, CPU features {', '.join(m['cpu_flags']) or 'n/a'}, "
        f"{m['memory_gb']:.0f} GB memory, {m['os']}"
        + (f", {m['accelerator']}" if m.get("accelerator") else ""),
        f"- Software: Python {v['python']}, torch {v['torch']}, diffusers {v['diffusers']}, "
        f"numpy {v['numpy']}, constriction {v['constriction']}",
    ]
    first = present[0]["results"][0] if present[0]["results"] else None
    if run is not None:
        model = run["model"]
        if first is not None:
            model += f"; fingerprint {first['model']['fingerprint'][:8]}"
        lines.append(f"- Model: {model}")
        for part in run.get("runs") or [run]:  # several when groups were re-run on their own
            minutes = part["elapsed_s"] / 60
            lines.append(f"- `{part['command']}` took {minutes:.1f} minutes ({part['started']})")
    shares = [t["others_share"] for t in (run or {}).get("groups", []) if "others_share" in t]
    if shares:
        lines.append(
            f"- Other processes' share of the CPU while the groups ran: {min(shares):.0%} to "
            f"{max(shares):.0%}"
        )
    if run is not None and run.get("quick"):
        banner = "> **Smoke run (`--quick`)**: small sizes and one or two repeats; not the table."
    elif not shares:
        banner = "> Whether the machine was idle is unknown (no `run.json`)."
    elif max(shares) > BUSY_SHARE:
        banner = (
            "> **Provisional.** Other processes used the CPU while these figures were measured, "
            "so wall times are inflated and noisy; ratios within one run (interleaved repeats) "
            "hold up better than absolute times, and memory is unaffected. Regenerate on an idle "
            "machine with `python benchmarks/run.py`."
        )
    else:
        banner = "> Measured on an otherwise idle machine."
    return "\n".join(lines), banner


def level_text(level: int | None, run: dict | None) -> str:
    if run is not None and "timestep" in run:
        return (
            f"level {run['level']}, the highest-rate level whose pseudo-timestep (t = "
            f"{run['timestep']}) allows 20 DDIM steps"
        )
    return "the highest-rate level" + (f" ({level})" if level is not None else "")


def render(results: Path, template: Path) -> str:
    """The Markdown text of BENCHMARKS.md."""
    docs = {name: load(results, name) for name in GROUP_NAMES}
    for name, doc in docs.items():
        if doc is not None:
            doc["_group"] = name
    run_path = results / "run.json"
    run = json.loads(run_path.read_text()) if run_path.is_file() else None
    info, banner = provenance(docs, run)
    others = other_machines(results)
    sizes = merged(docs["sizes"], docs["sizes-4k"])
    level = next((r["config"]["level"] for d in docs.values() if d for r in d["results"]), None)
    fields = {
        "banner": banner,
        "provenance": info,
        "level": level_text(level, run),
        "targets": targets_table(docs, others),
        "machines": machines_table({g: docs[g] for g in MACHINE_GROUPS}, others),
        "steps_note": steps_note(docs),
        "main": group_section(docs["main"], stages=True),
        "before_after": before_after_table(docs["baseline"], docs["main"]),
        "baseline": group_section(docs["baseline"], stages=False),
        "sizes": group_section(docs["sizes"], stages=False),
        "sizes_4k": group_section(docs["sizes-4k"], stages=False),
        "memory": memory_table(docs["4k-baseline"], sizes),
        "steps_1080p": group_section(docs["steps-1080p"], stages=True),
        "bf16_hardware": bf16_hardware(docs),
        "bfloat16": bf16_table(docs["bfloat16"], docs["main"]),
        "batch": group_section(docs["batch"], stages=False),
        "effort": effort_table(docs["effort"], docs["main"]),
        "sd21": group_section(docs["sd21-architecture"], stages=True),
        "sizes_stages": "\n\n".join(
            group_section(docs[name], stages=True) for name in ("sizes", "sizes-4k")
        ),
    }
    text = template.read_text()
    for key, value in fields.items():
        text = text.replace("{{" + key + "}}", value)
    text = re.sub(r"\n{3,}", "\n\n", text)  # fields that rendered empty
    missing = re.findall(r"\{\{(\w+)\}\}", text)
    if missing:
        raise SystemExit(f"template fields without values: {missing}")
    return text
