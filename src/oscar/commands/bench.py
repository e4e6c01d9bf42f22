"""``oscar bench``: time and memory per pipeline stage, printed and written as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from oscar.coding.effort import DEFAULT_EFFORT, check_effort
from oscar.commands.common import positive_int
from oscar.errors import ConfigError

DEFAULT_SIZES = "768x512"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def default_level(config, steps: int) -> int:
    """The highest-rate level whose pseudo-timestep allows ``steps`` DDIM steps.

    A trained model's calibrated timesteps can be small at high rates (the embedded model's
    level 7 is t = 8), and ``--steps N`` needs t_L ≥ N; every level runs the same UNet and VAE.
    """
    allowing = [lv for lv in config.levels if max(lv.timestep, 1) >= steps]
    if not allowing:
        most = max(max(lv.timestep, 1) for lv in config.levels)
        raise ConfigError(f"no level of this model allows {steps} decoding steps (at most {most})")
    return max(allowing, key=lambda lv: lv.nominal_bpp).level


def register(sub: argparse._SubParsersAction) -> None:
    # lazy: oscar.cli imports this module
    from oscar.cli import HelpFormatter

    p = sub.add_parser(
        "bench",
        help="measure speed and memory per pipeline stage",
        formatter_class=HelpFormatter,
        description="Compress and decompress a test image (the packaged sample, mirrored and "
        "tiled to each size) and report the wall time of every stage (median and spread over "
        "repeats after warm-up), end-to-end time, images per second and peak memory (CUDA "
        "allocator on GPU, resident set size on CPU). Decoding with each --steps value is "
        "interleaved with encoding in every repeat. Prints tables; -o writes JSON.",
    )
    p.add_argument(
        "--model", metavar="DIR", default=None, help="model directory (default: embedded model)"
    )
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated WIDTHxHEIGHT sizes")
    p.add_argument(
        "--levels",
        type=_int_list,
        default=None,
        metavar="LEVELS",
        help="comma-separated levels (default: the highest-rate level whose timestep allows "
        "the largest --steps)",
    )
    p.add_argument("--steps", type=_int_list, default="1,4,20", help="decoding steps to time")
    p.add_argument("--batch", type=_int_list, default="1", help="batch sizes (images per call)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="float32", help="comma-separated: float32, bfloat16, float16")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed repeats")
    p.add_argument("--warmup", type=_non_negative, default=1, help="untimed warm-up runs")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="measure the path before tuning (glibc's default allocator, the networks "
        "exactly as diffusers builds them)",
    )
    p.add_argument(
        "--flops",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="count floating-point operations per stage (one more untimed encode and decode; "
        "--no-flops saves that time on large images)",
    )
    p.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run each configuration in a fresh process so peak memory does not carry over "
        "(default: on for CPU)",
    )
    p.add_argument(
        "--effort",
        type=_int_list,
        default=str(DEFAULT_EFFORT),
        metavar="N[,N...]",
        help=f"encoder efforts to time (oscar compress --effort; default {DEFAULT_EFFORT}, "
        "the default encoder's)",
    )
    p.add_argument("-o", "--output", metavar="JSON", default=None, help="write results here")
    p.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    # lazy: torch and diffusers load only when the command runs, not for --help or usage errors
    from oscar.bench.report import text_report
    from oscar.bench.timing import BenchConfig, parse_size, run_benchmark
    from oscar.runtime.device import resolve_device, resolve_dtype
    from oscar.store.pretrained import read_config, resolve_model_dir

    model_dir = resolve_model_dir(args.model)
    config = read_config(model_dir)  # clear errors before any work
    try:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    levels = args.levels or [default_level(config, max(args.steps))]
    for level in levels:
        config.level(level)
    device = resolve_device(args.device)
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    for dtype in dtypes:
        resolve_dtype(dtype, device)  # unknown names: one clear error before any work
    for effort in args.effort:
        check_effort(effort)
    isolate = args.isolate if args.isolate is not None else device.type == "cpu"
    configs = [
        BenchConfig(
            model=str(model_dir),
            height=h,
            width=w,
            level=level,
            steps=tuple(args.steps),
            dtype=dtype,
            device=args.device,
            batch=batch,
            repeats=args.repeats,
            warmup=args.warmup,
            threads=args.threads,
            baseline=args.baseline,
            flops=args.flops,
            effort=effort,
        )
        for (h, w) in sizes
        for level in levels
        for dtype in dtypes
        for batch in args.batch
        for effort in args.effort
    ]

    def progress(i: int, c: BenchConfig) -> None:
        print(
            f"[{i + 1}/{len(configs)}] {c.width}x{c.height} level {c.level} {c.dtype} "
            f"batch {c.batch} steps {','.join(map(str, c.steps))} ...",
            file=sys.stderr,
            flush=True,
        )

    try:
        doc = run_benchmark(configs, isolate=isolate, progress=progress)
    except RuntimeError as exc:
        raise ConfigError(f"benchmark failed: {exc}") from None
    print(text_report(doc))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {out}")
    return 0
