"""``oscar compress``, ``oscar decompress`` and ``oscar info``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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

    p = sub.add_parser(
        "info",
        help="show the header and rates of .oscar files",
        formatter_class=HelpFormatter,
        description="Parse .oscar files and show their fields, measured bpp (file bytes × 8 / "
        "pixels) and the nominal bpp of their level. Reads the model's configuration only.",
    )
    p.add_argument("inputs", nargs="+", metavar="FILE")
    p.add_argument(
        "--model",
        metavar="DIR",
        default=None,
        help="model whose rate table to use (default: the embedded model)",
    )
    p.add_argument("--base-model", metavar="DIR", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON object per file")
    add_limit_options(p)
    p.set_defaults(handler=run_info)


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
    """Fail before any work when an output exists, unless --force."""
    if force:
        return
    existing = [str(j.target) for j in jobs if j.target.exists()]
    if existing:
        shown = ", ".join(existing[:3]) + (
            f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        )
        raise ConfigError(f"output exists: {shown}; pass --force to overwrite")


def describe_file(data: bytes, config, limits) -> dict:
    """Header fields and rates of one file, as a JSON-ready dict."""
    from oscar import bitstream

    container = bitstream.read(data, limits)
    h = container.header
    pixels = h.height * h.width
    info = {
        "format_version": bitstream.VERSION,
        "level": h.level,
        "coder": h.coder_name,
        "fingerprint": h.fingerprint.hex(),
        "height": h.height,
        "width": h.width,
        "grey": h.grey,
        "file_bytes": container.total_bytes,
        "payload_bytes": len(container.payload),
        "overhead_bytes": container.overhead_bytes,
        "measured_bpp": container.total_bytes * 8 / pixels,
        "payload_bpp": len(container.payload) * 8 / pixels,
    }
    if config is not None and h.level in config.level_numbers:
        rate = config.level(h.level)
        gh, gw = config.token_grid(h.height, h.width, h.level)
        info.update(
            {
                "grid_factor": rate.grid_factor,
                "codebook_size": rate.codebook_size,
                "timestep": rate.timestep,
                "tokens": [gh, gw],
                "nominal_bpp": rate.nominal_bpp,
                "fixed_payload_bytes": -(-gh * gw * rate.bits_per_index // 8),
            }
        )
    return info


def run_info(args: argparse.Namespace) -> int:
    from oscar.bitstream import Limits
    from oscar.errors import OscarError
    from oscar.pretrained import read_config, resolve_model_dir

    limits = Limits(max_pixels=args.max_pixels)
    try:
        config = read_config(resolve_model_dir(args.model), args.base_model)
    except OscarError as exc:
        if args.model is not None:
            raise
        config = None
        note = f"(no rate table: {exc})"
    failed = 0
    for text in args.inputs:
        path = Path(text)
        try:
            info = describe_file(read_input_file(path, limits.max_file_bytes), config, limits)
        except OscarError as exc:
            print(f"oscar: error: {path}: {exc}", file=__import__("sys").stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps({"file": str(path), **info}))
            continue
        print(f"{path}")
        print(
            f"  image           {info['width']} x {info['height']}"
            + ("  (greyscale)" if info["grey"] else "")
        )
        print(f"  level           {info['level']}", end="")
        if "grid_factor" in info:
            print(
                f"  (grid factor {info['grid_factor']}, codebook {info['codebook_size']}, "
                f"timestep {info['timestep']})"
            )
            print(f"  tokens          {info['tokens'][0]} x {info['tokens'][1]}")
        else:
            print(f"  {note}")
        print(f"  coder           {info['coder']}")
        print(f"  fingerprint     {info['fingerprint']}")
        print(
            f"  bytes           {info['file_bytes']} = payload {info['payload_bytes']} "
            f"+ overhead {info['overhead_bytes']} (header, side info, checksum)"
        )
        print(
            f"  measured bpp    {info['measured_bpp']:.5f}  (payload only "
            f"{info['payload_bpp']:.5f})"
        )
        if "nominal_bpp" in info:
            print(
                f"  nominal bpp     {info['nominal_bpp']:.5f}  (fixed-length payload "
                f"{info['fixed_payload_bytes']} bytes)"
            )
    return 1 if failed else 0
