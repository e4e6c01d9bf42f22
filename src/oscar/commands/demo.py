"""``oscar demo``: compress and decompress one image at every level and print what it cost.

The README's main job: with no arguments it codes the sample image shipped in the package
(``oscar/assets/sample.png``, a held-out photograph, CC BY 4.0: assets/SAMPLE-LICENSE.txt) with
the embedded model and prints, per level, the nominal and measured bpp, PSNR, MS-SSIM and
encode / decode times. Every rate is measured from the file's bytes; times are wall-clock medians
after a warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from oscar import sample_image_path
from oscar.commands.common import add_effort_option, add_model_options, load_codec, positive_int
from oscar.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    # lazy: oscar.cli imports this module
    from oscar.cli import HelpFormatter

    p = sub.add_parser(
        "demo",
        help="code an image at every level and print bpp, quality and times",
        formatter_class=HelpFormatter,
        description="Compress and decompress IMAGE (default: the sample shipped with oscar) "
        "at every level of the model, and print the measured bpp (file bytes x 8 / pixels), "
        "PSNR, MS-SSIM and the median encode and decode wall times.",
    )
    p.add_argument(
        "image",
        nargs="?",
        default=None,
        metavar="IMAGE",
        help="image to code (default: the packaged sample, 768x512)",
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="DIR",
        help="also write each level's .oscar file and decoded PNG here",
    )
    p.add_argument(
        "--repeats",
        type=positive_int,
        default=3,
        help="timed runs per level (after one warm-up); the median is shown",
    )
    p.add_argument("--coder", choices=("auto", "entropy", "fixed"), default="auto")
    add_effort_option(p)
    add_model_options(p)
    p.set_defaults(handler=run_demo)


def _median_seconds(fn, repeats: int):
    result, times = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


@contextmanager
def _row_status(text: str) -> Iterator[None]:
    """On a terminal, what the demo is measuring now, on stderr, erased when done."""
    if not sys.stderr.isatty():
        yield
        return
    print(f"  {text}", end="", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        print("\r\033[K", end="", file=sys.stderr, flush=True)


def run_demo(args: argparse.Namespace) -> int:
    # lazy: torch and diffusers load only when the command runs, not for --help or usage errors
    from oscar.evaluation.metrics import ms_ssim, psnr
    from oscar.io import load_image, save_image, write_bytes_atomic

    path = Path(args.image) if args.image else sample_image_path()
    if not path.is_file():  # before the model loads
        raise ConfigError(f"{path}: no such file")
    codec = load_codec(args)
    source = load_image(path, max_pixels=codec.limits.max_pixels)
    pixels = source.height * source.width
    print(
        f"image {path.name}: {source.width}x{source.height}; model "
        f"{codec.loaded.directory} (fingerprint {codec.fingerprint.hex()}), "
        f"device {codec.device}, encoder effort {codec.effort}",
        flush=True,
    )
    rates = sorted(codec.levels, key=lambda lv: lv.nominal_bpp)
    header = (
        f"{'level':>5} {'nominal bpp':>11} {'bpp':>8} {'bytes':>7} {'PSNR dB':>8} "
        f"{'MS-SSIM':>8} {'encode s':>9} {'decode s':>9}"
    )
    print(header)
    print("-" * len(header), flush=True)
    with _row_status("warming up"):
        codec.decompress(codec.compress(source, rates[0].level, args.coder))
    out = Path(args.output) if args.output else None
    for rate in rates:
        with _row_status(f"level {rate.level}: coding {args.repeats}× …"):
            data, enc = _median_seconds(
                lambda r=rate: codec.compress(source, r.level, args.coder), args.repeats
            )
            image, dec = _median_seconds(lambda d=data: codec.decompress(d), args.repeats)
        rgb = image if image.ndim == 3 else image[..., None].repeat(3, axis=2)
        quality, _ = ms_ssim(source.rgb, rgb)
        quality_text = f"{quality:8.4f}" if quality is not None else f"{'n/a':>8}"
        print(
            f"{rate.level:>5} {rate.nominal_bpp:>11.4f} {len(data) * 8 / pixels:>8.4f} "
            f"{len(data):>7} {psnr(source.rgb, rgb):>8.2f} {quality_text} "
            f"{enc:>9.3f} {dec:>9.3f}",
            flush=True,  # each row as soon as it is measured, also through a pipe
        )
        if out is not None:
            write_bytes_atomic(out / f"level{rate.level}.oscar", data, force=True)
            save_image(image, out / f"level{rate.level}.png", force=True)
    print(
        "bpp is measured from the file bytes (header and side info included); "
        "nominal bpp = log2(K) / f^2."
    )
    return 0
