"""``oscar compress`` and ``oscar decompress``."""

from __future__ import annotations

import argparse

from oscar.commands.common import (
    Job,
    add_effort_option,
    add_force_option,
    add_limit_options,
    add_model_options,
    add_steps_option,
    add_tiling_options,
    load_codec,
    plan_outputs,
    positive_int,
    read_input_file,
    run_batch,
)
from oscar.errors import ConfigError
from oscar.filetypes import IMAGE_SUFFIXES
from oscar.filetypes import OSCAR_SUFFIX as FILE_SUFFIX
from oscar.stages import DECODE_STAGES, ENCODE_STAGES


def register(sub: argparse._SubParsersAction) -> None:
    from oscar.cli import HelpFormatter

    p = sub.add_parser(
        "compress",
        help="compress images to .oscar files",
        formatter_class=HelpFormatter,
        description="Compress image files (or folders of images, searched recursively). "
        "With one input file, -o names the output file; otherwise -o is a folder.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file or folder")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument(
        "--level",
        type=int,
        default=None,
        help="rate level (default: the model's highest-rate level)",
    )
    rate.add_argument(
        "--bpp",
        type=float,
        default=None,
        help="pick the level whose nominal bits per pixel is nearest",
    )
    rate.add_argument(
        "--max-bytes",
        type=positive_int,
        default=None,
        metavar="N",
        help="per image, the highest level whose file fits in N bytes",
    )
    p.add_argument(
        "--coder",
        choices=("auto", "entropy", "fixed"),
        default="auto",
        help="index coder; auto writes the smaller of entropy and fixed-length",
    )
    add_effort_option(p)
    add_model_options(p)
    add_tiling_options(p)
    add_limit_options(p)
    add_force_option(p)
    p.set_defaults(handler=run_compress)

    p = sub.add_parser(
        "decompress",
        help="decompress .oscar files to images",
        formatter_class=HelpFormatter,
        description="Decompress .oscar files (or folders of them). With one input file, -o "
        "names the output image (format from its suffix, PNG by default); otherwise -o is a "
        "folder of PNGs.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help=".oscar files or folders")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file or folder")
    add_steps_option(p)
    add_model_options(p)
    add_tiling_options(p)
    add_limit_options(p)
    add_force_option(p)
    p.set_defaults(handler=run_decompress)


def _choose_level(args: argparse.Namespace, codec) -> int:
    from oscar.rates import nearest_level_by_bpp

    if args.level is not None:
        codec.rate(args.level)  # unknown level: clear error
        return args.level
    if args.bpp is not None:
        return nearest_level_by_bpp(codec.levels, args.bpp).level
    return max(codec.levels, key=lambda lv: lv.nominal_bpp).level


def run_compress(args: argparse.Namespace) -> int:
    from oscar.io import write_bytes_atomic

    jobs = plan_outputs(args.inputs, args.output, IMAGE_SUFFIXES, FILE_SUFFIX)
    _refuse_existing(jobs, args.force)
    codec = load_codec(args)
    level = None if args.max_bytes is not None else _choose_level(args, codec)

    def work(job: Job) -> str:
        source = codec.prepare_image(job.source)
        if args.max_bytes is not None:
            result = codec.compress_to_budget(source, args.max_bytes, args.coder)
            data, chosen = result.data, result.level
        else:
            data, chosen = codec.compress(source, level, args.coder), level
        write_bytes_atomic(job.target, data, force=args.force)
        bpp = len(data) * 8 / (source.height * source.width)
        return f"{job.source} -> {job.target}: level {chosen}, {len(data)} bytes, {bpp:.4f} bpp"

    return run_batch(jobs, work, "compressing", ENCODE_STAGES)


def run_decompress(args: argparse.Namespace) -> int:
    from oscar.io import save_image

    jobs = plan_outputs(args.inputs, args.output, (FILE_SUFFIX,), ".png")
    _refuse_existing(jobs, args.force)
    codec = load_codec(args)

    def work(job: Job) -> str:
        data = read_input_file(job.source, codec.limits.max_file_bytes)
        image = codec.decompress(data, steps=args.steps)
        save_image(image, job.target, force=args.force)
        return f"{job.source} -> {job.target}: {image.shape[1]}x{image.shape[0]}"

    return run_batch(jobs, work, "decompressing", DECODE_STAGES)


def _refuse_existing(jobs: list[Job], force: bool) -> None:
    """Fail before any work when an output is one of the inputs (the same file by any name,
    even with --force), or when an output exists, unless --force."""
    import os

    sources = {}
    for job in jobs:
        try:
            info = os.stat(job.source)
            sources[(info.st_dev, info.st_ino)] = job.source
        except OSError:
            pass  # reported when the job runs
    for job in jobs:
        try:
            info = os.stat(job.target)
        except OSError:
            continue
        same = sources.get((info.st_dev, info.st_ino))
        if same is not None:
            raise ConfigError(
                f"output {job.target} is the input {same}: refused even with --force "
                "(choose another output)"
            )
    if force:
        return
    existing = [str(j.target) for j in jobs if j.target.exists()]
    if existing:
        shown = ", ".join(existing[:3]) + (
            f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        )
        raise ConfigError(f"output exists: {shown}; pass --force to overwrite")
