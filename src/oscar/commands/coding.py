"""``oscar compress`` and ``oscar decompress``."""

from __future__ import annotations

import argparse
import os

from oscar.coding.effort import check_effort
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
from oscar.filetypes import IMAGE_SUFFIXES, OUTPUT_FORMATS
from oscar.filetypes import OSCAR_SUFFIX as FILE_SUFFIX
from oscar.runtime.stages import DECODE_STAGES, ENCODE_STAGES


def register(sub: argparse._SubParsersAction) -> None:
    # lazy: oscar.cli imports this module
    from oscar.cli import HelpFormatter

    p = sub.add_parser(
        "compress",
        help="compress images to .oscar files",
        formatter_class=HelpFormatter,
        description="Compress image files (or folders of images, searched recursively). "
        "With one input file, -o names the output file (not with an image suffix: it holds "
        ".oscar bytes); otherwise -o is a folder.",
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
        help="pick the level whose nominal bits per pixel is nearest; outside the model's range "
        "(10 %% either side accepted) it is an error naming the range",
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
        "names the output image, whose suffix picks the format (.png, .jpg, .webp, .bmp, .tif, "
        ".ppm); otherwise -o is a folder of PNGs.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help=".oscar files or folders")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file or folder")
    add_steps_option(p)
    add_model_options(p)
    add_tiling_options(p)
    add_limit_options(p)
    add_force_option(p)
    p.set_defaults(handler=run_decompress)


def check_compress_args(args: argparse.Namespace) -> tuple[list[Job], int | None]:
    """Everything compress can check before torch, diffusers or the model load: inputs that
    exist, outputs that are not named as images, the encoder effort, and the level (or the
    level --bpp picks) against the model's rate table. Returns the jobs and the level (None
    with --max-bytes, which picks one per image)."""
    # lazy: light (no torch), but --help does not need it
    from oscar.rates import nearest_level_by_bpp
    from oscar.store.model_files import read_config, resolve_model_dir

    jobs = plan_outputs(args.inputs, args.output, IMAGE_SUFFIXES, FILE_SUFFIX)
    _check_sources(jobs)
    for job in jobs:
        if job.target.suffix.lower() in IMAGE_SUFFIXES:
            raise ConfigError(
                f"{job.target}: compress writes {FILE_SUFFIX} files, not images; name the "
                f"output {job.target.with_suffix(FILE_SUFFIX).name}"
            )
    _refuse_existing(jobs, args.force)
    check_effort(args.effort)
    config = read_config(resolve_model_dir(args.model), args.base_model)
    if args.max_bytes is not None:
        return jobs, None
    if args.level is not None:
        return jobs, config.level(args.level).level  # unknown level: one clear error
    if args.bpp is not None:
        return jobs, nearest_level_by_bpp(config.levels, args.bpp).level
    return jobs, max(config.levels, key=lambda lv: lv.nominal_bpp).level


def run_compress(args: argparse.Namespace) -> int:
    jobs, level = check_compress_args(args)  # before any heavy import
    # lazy: torch and diffusers load only when the command runs, not for --help or usage errors
    from oscar.io import write_bytes_atomic

    codec = load_codec(args)

    def work(job: Job) -> str:
        # The codec reads and prepares the image once; the size comes back with the result.
        if args.max_bytes is not None:
            result = codec.compress_to_budget(job.source, args.max_bytes, args.coder)
            data, chosen, height, width = result.data, result.level, result.height, result.width
        else:
            encoded = codec.encode(job.source, level)  # what compress does, keeping the record
            data, chosen, height, width = (
                codec.pack(encoded, args.coder),
                level,
                encoded.height,
                encoded.width,
            )
        write_bytes_atomic(job.target, data, force=args.force)
        bpp = len(data) * 8 / (height * width)
        return f"{job.source} -> {job.target}: level {chosen}, {len(data)} bytes, {bpp:.4f} bpp"

    return run_batch(jobs, work, "compressing", ENCODE_STAGES)


def check_decompress_args(args: argparse.Namespace) -> list[Job]:
    """What decompress can check before the model loads: inputs that exist, outputs in an image
    format (by suffix), existing outputs, and a model directory that reads."""
    # lazy: light (no torch), but --help does not need it
    from oscar.store.model_files import read_config, resolve_model_dir

    jobs = plan_outputs(args.inputs, args.output, (FILE_SUFFIX,), ".png")
    _check_sources(jobs)
    for job in jobs:
        if job.target.suffix.lower() not in OUTPUT_FORMATS:
            raise ConfigError(
                f"{job.target}: decompress writes images; give the output one of the suffixes "
                f"{', '.join(OUTPUT_FORMATS)} (e.g. {job.target.with_suffix('.png').name})"
            )
    _refuse_existing(jobs, args.force)
    read_config(resolve_model_dir(args.model), args.base_model)
    return jobs


def _check_sources(jobs: list[Job]) -> None:
    """Inputs named on the command line that do not exist (files found in folders do)."""
    missing = [str(j.source) for j in jobs if not j.source.exists()]
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise ConfigError(f"{shown}: no such file")


def run_decompress(args: argparse.Namespace) -> int:
    jobs = check_decompress_args(args)  # before any heavy import
    # lazy: torch and diffusers load only when the command runs, not for --help or usage errors
    from oscar.io import save_image

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
