"""Regenerate BENCHMARKS.md: run ``oscar bench`` groups, keep their JSON, rewrite the tables.

    python benchmarks/run.py                 # the full set (13 to 19 minutes on 2 idle cores)
    python benchmarks/run.py --quick         # smoke run into /tmp/oscar-bench-quick/ (~2 min)
    python benchmarks/run.py --render-only   # rewrite BENCHMARKS.md from benchmarks/results/
    python benchmarks/run.py --machine NAME  # 1 vs 20 steps on this machine, as another one

The model is ``--model DIR`` when given, else the embedded model (``src/oscar/weights/small``)
when this checkout has one, else a ``small`` model made here with ``oscar init
configs/small.json`` (random weights) whose entropy priors are fitted on the packaged sample
image: speed and memory do not depend on the weights' values. BENCHMARKS.md says which was used.

Results go to ``benchmarks/results/<group>.json`` plus ``run.json`` (model, commit, times, and how
much CPU other processes used meanwhile); BENCHMARKS.md is rewritten from
``benchmarks/template.md``. Run it on an otherwise idle machine: when other processes used more
than a tenth of the CPU during the runs, the output is marked provisional.

``--machine NAME`` runs only the groups that compare 1 and 20 steps (``main``, 768×512, and
``steps-1080p``) into ``benchmarks/results/machines/NAME/`` instead: machines that report the
same CPU differ by 2× in float32 speed, and not every stage alike, so the same comparison from
other machines is kept beside the page's own run rather than mixed into it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render import MACHINE_GROUPS, MACHINES, render  # benchmarks/render.py, beside this file

from oscar.runtime.provenance import git_state

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TEMPLATE = ROOT / "benchmarks" / "template.md"
OUTPUT = ROOT / "BENCHMARKS.md"
QUICK = Path(tempfile.gettempdir()) / "oscar-bench-quick"

# name → (description, oscar bench arguments, --quick arguments or None to skip in --quick)
FOUR_K = ["--sizes", "3840x2160", "--steps", "1", "--repeats", "1", "--warmup", "0", "--no-flops"]
GROUPS: dict[str, tuple[str, list[str], list[str] | None]] = {
    "main": (
        "768×512, one step vs 4 and 20 DDIM steps (float32, tuned CPU path)",
        ["--sizes", "768x512", "--steps", "1,4,20", "--repeats", "7"],
        ["--sizes", "768x512", "--steps", "1,4,20", "--repeats", "2"],
    ),
    "baseline": (
        "768×512, the CPU path before tuning (default allocator, networks as diffusers made them)",
        ["--sizes", "768x512", "--steps", "1", "--repeats", "7", "--baseline"],
        ["--sizes", "768x512", "--steps", "1", "--repeats", "2", "--baseline"],
    ),
    "sizes": (
        "512×512 to 1920×1080, one-step decoding",
        ["--sizes", "512x512,768x512,1920x1080", "--steps", "1", "--repeats", "3"],
        ["--sizes", "512x512", "--steps", "1", "--repeats", "1"],
    ),
    "sizes-4k": (
        "3840×2160, one-step decoding: one cold run, and the peak memory of decoding alone",
        FOUR_K,
        None,
    ),
    "4k-baseline": (
        "3840×2160 before tuning: peak memory without in-place activations and channels-last",
        [*FOUR_K, "--baseline"],
        None,
    ),
    "steps-1080p": (
        "1920×1080, one step vs 4 and 20 DDIM steps",
        ["--sizes", "1920x1080", "--steps", "1,4,20", "--repeats", "2"],
        None,
    ),
    "bfloat16": (
        "768×512 in float32 and in bfloat16 (opt-in), with bfloat16's difference to float32",
        [
            *("--sizes", "768x512", "--steps", "1,4,20"),
            *("--dtype", "float32,bfloat16", "--repeats", "5"),
        ],
        ["--sizes", "768x512", "--steps", "1", "--dtype", "bfloat16", "--repeats", "1"],
    ),
    "batch": (
        "512×512, batches of 1 and 4 images per call",
        ["--sizes", "512x512", "--steps", "1", "--batch", "1,4", "--repeats", "5"],
        ["--sizes", "256x256", "--steps", "1", "--batch", "1,2", "--repeats", "1"],
    ),
    "effort": (
        "768×512, encoder efforts 0 and 8 (the default, 4, is timed by the main group)",
        ["--sizes", "768x512", "--steps", "1", "--repeats", "5", "--effort", "0,8"],
        ["--sizes", "256x256", "--steps", "1", "--repeats", "1", "--effort", "0"],
    ),
    "sd21-architecture": (
        "768×512, one step vs 20 DDIM steps with the sd21 architecture (random weights)",
        ["--sizes", "768x512", "--steps", "1,20", "--repeats", "1", "--warmup", "1"],
        None,
    ),
}
# Groups measured on a model of another architecture, built here with random weights (speed does
# not depend on the weights' values): SD 2.1's VAE and UNet, 1.03 B parameters, 4 GB on disk.
OTHER_ARCHITECTURES = {"sd21-architecture": ROOT / "configs" / "sd21.json"}


# ----------------------------------------------------------------------------- running
def oscar(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "oscar.cli", *args], check=True)


def choose_model(given: str | None, scratch: Path) -> tuple[Path, str]:
    """The model to measure and how it was chosen (one line for BENCHMARKS.md)."""
    from oscar.store.pretrained import MODEL_FILE, embedded_model_dir

    if given:
        return Path(given), f"the model directory given with `--model` (`{Path(given).name}`)"
    embedded = embedded_model_dir()
    if (embedded / MODEL_FILE).is_file():
        return embedded, "the embedded model (`src/oscar/weights/small`)"
    print("== no embedded model", flush=True)
    return random_model(ROOT / "configs" / "small.json", scratch), (
        "a `small` model with random weights (`oscar init configs/small.json`, priors fitted "
        "on the packaged sample image): this checkout has no embedded model"
    )


def random_model(config: Path, scratch: Path) -> Path:
    """A model of ``config``'s architecture with random weights, priors fitted on the sample."""
    model = scratch / config.stem
    print(f"== oscar init {config.name} (random weights, for timing only)", flush=True)
    oscar("init", str(config), "-o", str(model), "--force")
    oscar("fit-priors", str(model), str(ROOT / "src" / "oscar" / "assets" / "sample.png"))
    return model


def choose_level(model: Path) -> tuple[int, int]:
    """One level for every group, and its timestep: the highest-rate level whose pseudo-timestep
    allows the most DDIM steps any group decodes with (``--steps N`` needs t_L ≥ N)."""
    from oscar.commands.bench import default_level
    from oscar.store.pretrained import read_config

    most = max(
        int(n) for _, args, _ in GROUPS.values() for n in args[args.index("--steps") + 1].split(",")
    )
    config = read_config(model)
    level = default_level(config, most)
    return level, config.level(level).timestep


def cpu_seconds() -> tuple[float | None, float]:
    """(CPU time used by the whole machine, CPU time of this process and its children)."""
    t = os.times()
    ours = t.user + t.system + t.children_user + t.children_system
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None, ours
    # user, nice, system, then (after idle and iowait) irq, softirq, steal
    busy = values[0] + values[1] + values[2] + sum(values[5:8])
    return busy / os.sysconf("SC_CLK_TCK"), ours


def run_groups(
    model: Path, names: list[str], quick: bool, extra: list[str], results: Path
) -> list[dict]:
    """Run each group's ``oscar bench`` into ``results``; per group, its time and the CPU that
    other processes used meanwhile."""
    results.mkdir(parents=True, exist_ok=True)
    timings = []
    for name in names:
        description, args, quick_args = GROUPS[name]
        if quick and quick_args is None:
            continue
        print(f"== {name}: {description}", flush=True)
        out = results / f"{name}.json"
        machine_before, ours_before = cpu_seconds()
        start = time.monotonic()
        chosen = quick_args if quick else args
        oscar("bench", "--model", str(model), *chosen, *extra, "-o", str(out))
        elapsed = time.monotonic() - start
        machine_after, ours_after = cpu_seconds()
        entry = {"group": name, "elapsed_s": elapsed, "own_cpu_s": ours_after - ours_before}
        if machine_before is not None:
            others = max(0.0, machine_after - machine_before - entry["own_cpu_s"])
            entry["others_cpu_s"] = others
            entry["others_share"] = others / (elapsed * (os.cpu_count() or 1))
        timings.append(entry)
        print(f"   {elapsed:.0f} s", flush=True)
    return timings


def merged_with_earlier(run: dict, path: Path) -> dict:
    """Keep what an earlier run recorded for the groups this run did not repeat.

    ``--groups X`` re-runs only X; the other groups' JSON stays from the earlier run, so their
    timings and idle-machine checks must stay in ``run.json`` too, and BENCHMARKS.md lists both
    commands. Earlier results made with another model, level or mode are not mixed in.
    """
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return run
    same = all(earlier.get(k) == run[k] for k in ("model", "level", "quick"))
    rerun = {g["group"] for g in run["groups"]}
    kept = [g for g in earlier.get("groups", []) if g.get("group") not in rerun]
    if not same or not kept:
        return run
    fields = ("command", "started", "elapsed_s")
    before = earlier.get("runs") or [{k: earlier.get(k) for k in fields}]
    return {**run, "groups": kept + run["groups"], "runs": [*before, {k: run[k] for k in fields}]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model directory (default: see above)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, 1-2 repeats")
    parser.add_argument("--groups", default=None, help="comma-separated groups (default: all)")
    parser.add_argument(
        "--machine",
        default=None,
        metavar="NAME",
        help="measure only the 1- vs 20-step groups (main, steps-1080p), into "
        "RESULTS/machines/NAME/, for the table of other machines; the rest of BENCHMARKS.md is "
        "rendered from the results already there",
    )
    parser.add_argument("--render-only", action="store_true", help="only rewrite the Markdown")
    parser.add_argument("--device", default="cpu", help="device for oscar bench")
    parser.add_argument(
        "--threads",
        default=None,
        help="torch CPU threads for oscar bench (default: one per core; with another process "
        "holding a core, OpenMP's barriers make 2 threads many times slower than 1)",
    )
    parser.add_argument(
        "--results", default=None, help=f"JSON folder (default: {RESULTS}; --quick: {QUICK})"
    )
    parser.add_argument(
        "--output", default=None, help=f"Markdown file (default: {OUTPUT}; --quick: {QUICK})"
    )
    args = parser.parse_args(argv)
    # A smoke run must not overwrite the recorded results: it writes elsewhere by default.
    results = Path(args.results or (QUICK if args.quick else RESULTS)).resolve()
    output = Path(args.output or (QUICK / OUTPUT.name if args.quick else OUTPUT)).resolve()
    names = [g for g in (args.groups or ",".join(GROUPS)).split(",") if g]
    measured = results  # where this run's JSON goes; BENCHMARKS.md is rendered from ``results``
    if args.machine is not None:
        if args.groups or args.quick or args.render_only:
            parser.error("--machine runs its own groups: no --groups, --quick or --render-only")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", args.machine):
            parser.error("--machine NAME: letters, digits, '.', '_' and '-' (a folder name)")
        names, measured = list(MACHINE_GROUPS), results / MACHINES / args.machine
    unknown = set(names) - set(GROUPS)
    if unknown:
        parser.error(f"unknown groups {sorted(unknown)}; known: {', '.join(GROUPS)}")
    if not args.render_only:
        started, start = datetime.now(timezone.utc), time.monotonic()
        git = git_state(ROOT, exclude=[results, output])  # before this run writes anything
        with tempfile.TemporaryDirectory(prefix="oscar-bench-model-") as tmp:
            model, source = choose_model(args.model, Path(tmp))
            level, timestep = choose_level(model)
            threads = ["--threads", args.threads] if args.threads else []
            extra = ["--device", args.device, "--levels", str(level), *threads]
            ours = [n for n in names if n not in OTHER_ARCHITECTURES]
            groups = run_groups(model, ours, args.quick, extra, measured)
            for name in names:
                if name not in OTHER_ARCHITECTURES or (args.quick and GROUPS[name][2] is None):
                    continue
                other = random_model(OTHER_ARCHITECTURES[name], Path(tmp))
                other_level, _ = choose_level(other)
                other_extra = ["--device", args.device, "--levels", str(other_level), *threads]
                groups += run_groups(other, [name], args.quick, other_extra, measured)
                shutil.rmtree(other)  # 4 GB
        shown = ["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]
        run = {
            "command": " ".join(shown),
            "started": started.isoformat(timespec="seconds"),
            "elapsed_s": time.monotonic() - start,
            "model": source,
            "level": level,
            "timestep": timestep,
            "git": git,
            "quick": args.quick,
            "groups": groups,
        }
        run = merged_with_earlier(run, measured / "run.json")
        (measured / "run.json").write_text(json.dumps(run, indent=1) + "\n")
        print(f"all groups: {run['elapsed_s'] / 60:.1f} minutes", flush=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(results, TEMPLATE))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
