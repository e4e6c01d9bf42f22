"""``python -m oscar.fuzz``: the long fuzzing runs (see oscar.fuzz and docs/robustness.md)."""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from oscar.fuzz.harness import (
    ContractViolation,
    FuzzReport,
    _rss_mib,
    check_input,
    fuzz,
    make_seeds,
    unpack_memory_bound,
)
from oscar.fuzz.mutations import Mutator, _split, with_crc


def _load_codec(args: argparse.Namespace) -> Any:
    # lazy: the codec's modules load after atheris.instrument_imports (_run_atheris), so that
    # atheris sees their branches
    from oscar.coding.bitstream import Limits
    from oscar.coding.codec import OscarCodec

    return OscarCodec.from_pretrained(
        args.model, device="cpu", limits=Limits(max_pixels=args.max_pixels)
    )


def _run_atheris(args: argparse.Namespace) -> int:
    import atheris  # lazy: the test extra, Linux x86-64 only

    # Imported here, under instrumentation, so that atheris sees the branches of the parsers.
    with atheris.instrument_imports(include=["oscar"]):
        import oscar.coding.bitstream
        import oscar.coding.codec
        import oscar.coding.entropy
        import oscar.coding.file_info  # noqa: F401
    codec = _load_codec(args)
    seeds = make_seeds(codec)
    corpus = Path(args.corpus)
    corpus.mkdir(parents=True, exist_ok=True)
    for data in seeds:
        (corpus / f"seed-{zlib.crc32(data):08x}.oscar").write_bytes(data)
    crashes = Path(args.crashes)
    crashes.mkdir(parents=True, exist_ok=True)
    mutator = Mutator(seeds, random.Random(args.seed))
    report = FuzzReport()
    stats_path = crashes / "atheris-stats.json"
    started = time.monotonic()
    last = [started]

    def test_one(data: bytes) -> None:
        report.inputs += 1
        decode = args.decode_every > 0 and report.stages["accepted"] % args.decode_every == 0
        t0 = time.process_time()
        outcome = check_input(codec, data, decode=decode, report=report)
        elapsed = time.process_time() - t0  # CPU time; libFuzzer's -timeout (wall) is for hangs
        report.slowest_seconds = max(report.slowest_seconds, elapsed)
        if elapsed > args.time_bound:
            raise ContractViolation(f"input took {elapsed:.1f} CPU s", data)
        report.outcomes[outcome] += 1
        if time.monotonic() - last[0] > 30:
            report.seconds = time.monotonic() - started
            report.peak_rss_mib = _rss_mib()
            stats_path.write_text(json.dumps(report.summary(), indent=1))
            last[0] = time.monotonic()

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        mutator.rng.seed(seed)
        if mutator.rng.random() < 0.5:
            out = atheris.Mutate(data, max_size)
            if mutator.rng.random() < 0.75:
                out = with_crc(out)
        else:
            out = mutator.mutate(data if _split(data) else None)[1]
        return out[:max_size]

    argv = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={int(args.minutes * 60)}",
        "-timeout=300",
        "-rss_limit_mb=6144",
        "-max_len=4096",
        f"-seed={args.seed + 1}",
        *([f"-runs={args.runs}"] if args.runs else []),
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
    ]
    atheris.Setup(argv, test_one, custom_mutator=custom_mutator)
    atheris.Fuzz()
    return 0


def _run_expensive(args: argparse.Namespace) -> int:
    # lazy: as in _load_codec (oscar.fuzz.expensive imports the codec)
    from oscar.coding.bitstream import Limits
    from oscar.coding.codec import OscarCodec
    from oscar.fuzz.expensive import run

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    limit = max(args.max_pixels, max(sizes) ** 2)
    codec = OscarCodec.from_pretrained(args.model, device="cpu", limits=Limits(max_pixels=limit))
    result = run(codec, sizes, timeout=args.minutes * 60)
    for record in result["records"]:
        print(json.dumps(record), flush=True)
    summary = {
        "threads": args.threads,
        "worst_seconds_per_byte": result["worst_seconds_per_byte"],
        "worst_memory_per_byte": result["worst_memory_per_byte"],
    }
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oscar.fuzz",
        description="Fuzz the decoder with mutated .oscar files (docs/robustness.md).",
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="model directory")
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mutations")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=32 * 32,
        help="the decoder's pixel limit while fuzzing (small, so each decode is quick)",
    )
    parser.add_argument("--time-bound", type=float, default=10.0, help="CPU seconds per input")
    parser.add_argument(
        "--decode-every", type=int, default=5, help="decode one accepted input in N to pixels"
    )
    parser.add_argument("--crashes", default="fuzz-crashes", help="folder for failing inputs")
    parser.add_argument("--corpus", default="fuzz-corpus", help="atheris corpus folder")
    parser.add_argument("--atheris", action="store_true", help="coverage-guided (libFuzzer)")
    parser.add_argument("--runs", type=int, default=0, help="with --atheris: stop after N inputs")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared machine, spinning OpenMP threads waste CPU)",
    )
    parser.add_argument(
        "--expensive",
        action="store_true",
        help="valid but expensive files: the smallest valid file announcing each --sizes side "
        "at every level, decoded in a forked process; reports decode time and peak memory per "
        "input byte (oscar.fuzz.expensive)",
    )
    parser.add_argument(
        "--sizes",
        default="256,512,1024",
        help="with --expensive: square image sides, comma-separated",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    torch.set_num_threads(args.threads)
    if args.atheris:
        return _run_atheris(args)
    if args.expensive:
        return _run_expensive(args)

    codec = _load_codec(args)
    seeds = make_seeds(codec)

    def progress(report: FuzzReport) -> None:
        print(
            f"{report.seconds / 60:5.1f} min  {report.inputs} inputs  "
            f"{report.outcomes['decoded']} decoded  {len(report.violations)} violations",
            file=sys.stderr,
            flush=True,
        )

    report = fuzz(
        codec,
        seeds,
        seed=args.seed,
        seconds=args.minutes * 60,
        decode_every=args.decode_every,
        time_bound=args.time_bound,
        memory_bound=unpack_memory_bound(codec, 4096),
        crashes=Path(args.crashes),
        progress=progress,
    )
    summary = {
        "seeds": len(seeds),
        "max_pixels": args.max_pixels,
        "decode_every": args.decode_every,
        **report.summary(),
    }
    print(json.dumps(summary, indent=2))
    return 1 if report.violations else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
