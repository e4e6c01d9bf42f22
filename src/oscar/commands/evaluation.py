"""``oscar eval``: our codec and classical baselines on a folder of images, with a report."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from oscar.commands.common import (
    add_effort_option,
    add_limit_options,
    add_model_options,
    add_steps_option,
    load_codec,
    positive_int,
)
from oscar.commands.models import parse_levels
from oscar.errors import ConfigError
from oscar.extras import require_extra
from oscar.filetypes import find_files

DEFAULT_BASELINES = "jpeg,webp,avif,jxl,jpeg2000"


def register(sub: argparse._SubParsersAction) -> None:
    # lazy: oscar.cli imports this module
    from oscar.cli import HelpFormatter

    p = sub.add_parser(
        "eval",
        help="evaluate the codec and classical baselines on images; writes an HTML report",
        formatter_class=HelpFormatter,
        description="Code every image at each level with our codec and with each baseline at the "
        "setting whose measured bpp is closest to ours, sweep each baseline's own range, score "
        "everything against the original, and write per-image and aggregate tables, BD-rates, "
        "rate-distortion plots and report.html to OUT. Rates come from real bytes. Metrics whose "
        "pretrained weights are not on disk are skipped with one line saying which file to put "
        "where (see docs/evaluation.md). Several processes: `accelerate launch -m oscar.cli eval "
        "...` shards the images and merges the results.",
    )
    p.add_argument("data", nargs="+", metavar="DATA", help="image folder(s) or files")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    p.add_argument("--levels", default="all", help="comma-separated levels of ours, or 'all'")
    p.add_argument(
        "--baselines",
        default=DEFAULT_BASELINES,
        help="comma-separated classical codecs (jpeg, webp, avif, jxl, jpeg2000) or 'none'",
    )
    p.add_argument(
        "--metrics",
        default="psnr,ms_ssim,colour_shift,lpips_alex,lpips_vgg,dists,fid,kid",
        help="comma-separated: psnr, ms_ssim, colour_shift, lpips_alex, lpips_vgg, dists, fid, "
        "kid, fid_whole",
    )
    p.add_argument(
        "--anchor",
        default=None,
        help="codec the BD-rates are measured against (default: the first baseline, else oscar)",
    )
    p.add_argument(
        "--weights-dir",
        metavar="DIR",
        default=None,
        help="folder with the LPIPS / DISTS / FID weight files (also searched: "
        "$TORCH_HOME/hub/checkpoints, ~/.cache/torch/hub/checkpoints)",
    )
    p.add_argument("--fid-patch", type=positive_int, default=256, help="FID/KID patch size")
    p.add_argument(
        "--fid-no-shift",
        action="store_true",
        help="FID/KID on the non-overlapping patch grid only (default: also the grid shifted "
        "by half a patch)",
    )
    p.add_argument("--fid-whole", action="store_true", help="add whole-image FID (fid_whole)")
    p.add_argument("--kid-subsets", type=positive_int, default=100, help="KID subsets")
    p.add_argument("--kid-subset-size", type=positive_int, default=1000, help="KID subset size")
    p.add_argument("--no-sweep", action="store_true", help="skip the baselines' own sweeps")
    p.add_argument(
        "--downscaled",
        choices=("floor", "always"),
        default="floor",
        help="when to also code each baseline on a 2x and 4x smaller copy, upscaled back: "
        "floor (only where its lowest setting is above our rate) or always (every level)",
    )
    p.add_argument(
        "--crops", type=int, default=3, metavar="N", help="images shown as crops in the report"
    )
    p.add_argument("--crop-size", type=positive_int, default=192, help="crop side in pixels")
    p.add_argument("--max-images", type=positive_int, default=None, metavar="N")
    p.add_argument(
        "--published",
        metavar="CSV",
        default=None,
        help="published results to overlay (codec,bpp,metric,value[,source]); shown as not "
        "re-measured",
    )
    p.add_argument(
        "--protocol",
        choices=("ours", "paper"),
        default="ours",
        help="ours: code and score the untouched images. paper: as the original's test script "
        "(Lanczos resize to multiples of 128, scored against the resized image; our encoder at "
        "effort 0, output truncated to 8 bits); see docs/evaluation.md",
    )
    p.add_argument("-f", "--force", action="store_true", help="write into a non-empty OUT")
    add_effort_option(p)
    add_steps_option(p)
    add_model_options(p)
    add_limit_options(p)
    p.set_defaults(handler=run_eval)


def check_eval_extras(args: argparse.Namespace) -> None:
    """Before any work: the [eval] extras this run needs (the baselines need imagecodecs; the
    plots matplotlib; the BD-rates bjontegaard)."""

    modules = ["matplotlib", "bjontegaard"]
    if args.baselines.strip().lower() != "none":
        modules.insert(0, "imagecodecs")
    require_extra("eval", "oscar eval", modules)


def check_eval_args(args: argparse.Namespace) -> list[int] | None:
    """Before torch or the model load: OUT, the data paths, the baseline names and the levels
    against the model's rate table. Returns the levels asked for (None: all)."""
    # lazy: numpy and Pillow (the baselines) and the model files, which --help does not need
    from oscar.evaluation.baselines import get_baselines
    from oscar.store.model_files import read_config, resolve_model_dir

    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise ConfigError(f"{out} exists and is not empty; pass --force to write into it")
    missing = [d for d in args.data if not Path(d).exists()]
    if missing:
        raise ConfigError(f"{', '.join(missing)}: no such file or folder")
    if not find_files(args.data):
        raise ConfigError("no images found in " + ", ".join(args.data))
    get_baselines(args.baselines)
    config = read_config(resolve_model_dir(args.model), args.base_model)
    levels = parse_levels(args.levels, config.level_numbers)
    return None if args.levels == "all" else levels


def run_eval(args: argparse.Namespace) -> int:
    check_eval_extras(args)
    levels = check_eval_args(args)
    # lazy: torch and diffusers load only when the command runs, not for --help or usage errors
    from oscar.evaluation.runner import EvalOptions
    from oscar.evaluation.session import EvalRequest, run_evaluation

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if args.fid_whole and "fid_whole" not in metrics:
        metrics.append("fid_whole")
    options = EvalOptions(
        levels=None if levels is None else tuple(levels),
        sweep=not args.no_sweep,
        downscaled=args.downscaled,
        crops=args.crops,
        crop_size=args.crop_size,
        max_images=args.max_images,
        steps=args.steps,
        protocol=args.protocol,
    )
    request = EvalRequest(
        data=args.data,
        output=Path(args.output),
        baselines=args.baselines,
        metrics=metrics,
        options=options,
        anchor=args.anchor,
        weights_dir=args.weights_dir,
        fid_patch=args.fid_patch,
        fid_shifted=not args.fid_no_shift,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        published=args.published,
        force=args.force,
    )

    def load(device: str):
        args.device = device
        return load_codec(args)

    outcome = run_evaluation(
        request, load, args.device, notice=lambda line: print(f"oscar: {line}", file=sys.stderr)
    )
    if outcome is not None:  # process 0 of several, or the only one
        _print_summary(outcome.result, outcome.metrics, Path(args.output))
    return 0


def _print_summary(result, metrics, out: Path) -> None:
    def fmt(v):
        return "-" if v is None or not math.isfinite(v) else f"{v:.4f}"

    print(f"{'codec':<16} {'level':>5} {'bpp':>8} " + " ".join(f"{m:>10}" for m in metrics))
    for a in result.aggregates:
        if a.kind == "sweep":
            continue
        flag = f"  (floor on {a.statuses['floor']})" if a.statuses.get("floor") else ""
        print(
            f"{a.codec:<16} {a.level!s:>5} {a.bpp:>8.4f} "
            + " ".join(f"{fmt(a.all_metrics.get(m)):>10}" for m in metrics)
            + flag
        )
    print(f"wrote {out / 'report.html'} and tables in {out}")
