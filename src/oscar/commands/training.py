"""``oscar train`` and ``oscar calibrate``."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from oscar.commands.models import parse_levels
from oscar.errors import ConfigError
from oscar.extras import require_extra


def register(sub: argparse._SubParsersAction) -> None:
    # lazy: oscar.cli imports this module
    from oscar.cli import HelpFormatter

    p = sub.add_parser(
        "train",
        help="run a training recipe (or one stage of it)",
        formatter_class=HelpFormatter,
        description="Run the stages of RECIPE (YAML or JSON) in order; finished stages are "
        "skipped. Works the same on one CPU process, a GPU, or several processes started with "
        "`accelerate launch` (GPUs) or `torchrun` (CPU processes).",
    )
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument(
        "--stage", default=None, help="run only this stage (its index in the recipe, or its kind)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an unfinished stage from its newest checkpoint",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        metavar="M",
        help="checkpoint and stop after M minutes (resume later with --resume)",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help="cap every training stage at N steps (a quick smoke run)",
    )
    p.add_argument(
        "--output-dir", default=None, metavar="DIR", help="override the recipe's output_dir"
    )
    p.set_defaults(handler=run_train)

    p = sub.add_parser(
        "calibrate",
        help="measure each level's cosine and set its pseudo-timestep",
        formatter_class=HelpFormatter,
        description="Measure the mean cosine between decoded and true latents per level on "
        "held-out images and set t = argmin |sqrt(alpha_bar_t) - cosine| (docs/method.md §4); both "
        "are written into MODEL's rate table. This changes the model's fingerprint.",
    )
    p.add_argument("model_dir", metavar="MODEL")
    p.add_argument(
        "--data", nargs="+", required=True, metavar="DIR", help="held-out images or folders"
    )
    p.add_argument("--levels", default="all", help="comma-separated levels, or 'all'")
    p.add_argument("--max-images", type=int, default=None, metavar="N")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--base-model", default=None, metavar="DIR", help=argparse.SUPPRESS)
    p.set_defaults(handler=run_calibrate)


def _stage_index(config, text: str | None) -> int | None:
    if text is None:
        return None
    if text.isdigit():
        index = int(text)
        if index >= len(config.stages):
            raise ConfigError(f"--stage {index}: the recipe has {len(config.stages)} stages")
        return index
    matches = [i for i, s in enumerate(config.stages) if s.kind == text]
    if len(matches) != 1:
        raise ConfigError(f"--stage {text!r} matches {len(matches)} stages; give its index")
    return matches[0]


def run_train(args: argparse.Namespace) -> int:
    require_extra("train", "oscar train")  # before any work
    # lazy: torch and diffusers load only when the command runs, not for --help or usage errors
    from oscar.training.config import TRAINING_KINDS, TrainConfig
    from oscar.training.recipe import run_recipe

    config = TrainConfig.load(args.recipe)
    if args.output_dir:
        config = replace(config, output_dir=args.output_dir)
    check_train_data(config, args.recipe)
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise ConfigError("--max-steps must be >= 1")
        stages = tuple(
            replace(
                s,
                steps=min(s.steps, args.max_steps),
                warmup_steps=min(s.warmup_steps, args.max_steps // 2),
            )
            if s.kind in TRAINING_KINDS
            else s
            for s in config.stages
        )
        config = replace(config, stages=stages)
    final = run_recipe(config, _stage_index(config, args.stage), args.resume, args.max_minutes)
    if os.environ.get("RANK", "0") != "0":  # one report per run, from the main process
        return 0
    if final is None:
        print("stopped before the end; continue with --resume")
        return 0
    print(f"model written to {final}")
    return 0


def check_train_data(config, recipe: str) -> None:
    """Before torch loads and before any stage folder is made: the recipe's image folders."""

    folders = [*config.data.train, *config.data.validation]
    missing = [f for f in folders if not Path(f).exists()]
    if missing:
        raise ConfigError(
            f"data folder(s) not found: {', '.join(missing)} (the header of {recipe} says "
            "how to make them)"
        )


def run_calibrate(args: argparse.Namespace) -> int:
    # lazy: torch and diffusers load only when the command runs, not for --help or usage errors
    from oscar.coding.prior_fitting import find_images
    from oscar.runtime.device import resolve_device
    from oscar.store.pretrained import load_model, write_model_config
    from oscar.training.calibration import calibrate, format_table

    device = resolve_device(args.device)
    loaded = load_model(args.model_dir, base_model=args.base_model, device=device)
    levels = parse_levels(args.levels, loaded.model.config.level_numbers)
    images = find_images(args.data)[: args.max_images]
    if not images:
        raise ConfigError("no images found in " + ", ".join(args.data))
    config, rows = calibrate(loaded.model, images, levels, device=device)
    write_model_config(args.model_dir, config)
    print(format_table(rows))
    digest = load_model(args.model_dir, base_model=args.base_model).fingerprint
    print(f"rate table of {args.model_dir} updated; model fingerprint is now {digest[:4].hex()}")
    return 0
