"""``oscar init`` and ``oscar fit-priors``: make and complete model directories."""

from __future__ import annotations

import argparse
from pathlib import Path

from oscar.commands.common import add_effort_option
from oscar.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    # lazy: oscar.cli imports this module
    from oscar.cli import HelpFormatter

    p = sub.add_parser(
        "init",
        help="build a randomly initialised model directory from an architecture config",
        formatter_class=HelpFormatter,
        description="Build a model with random weights from CONFIG.json (configs/tiny.json, "
        "configs/small.json, configs/sd21.json) and write it as a model directory.",
    )
    p.add_argument("config", metavar="CONFIG.json")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="model directory to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    p.add_argument(
        "--base-model",
        metavar="DIR",
        default=None,
        help="take the VAE, UNet and scheduler from this diffusers folder (Stable Diffusion "
        "2.1) and reference it instead of copying it; only the model's own parts are new",
    )
    p.add_argument("-f", "--force", action="store_true", help="write into a non-empty folder")
    p.set_defaults(handler=run_init)

    p = sub.add_parser(
        "fit-priors",
        help="fit the entropy coder's per-level index priors on a set of images",
        formatter_class=HelpFormatter,
        description="Encode every image (whole, at its own size) at each level, count the "
        "indices, and write integer frequency tables to MODEL/priors.safetensors. This changes "
        "the model's fingerprint: files made with the old priors no longer decode with it.",
    )
    p.add_argument("model_dir", metavar="MODEL", help="model directory to update")
    p.add_argument("data", nargs="+", metavar="DATA", help="image files or folders")
    p.add_argument("--levels", default="all", help="comma-separated level numbers, or 'all'")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="use at most N")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--base-model", metavar="DIR", default=None, help=argparse.SUPPRESS)
    add_effort_option(
        p,
        help="encoder effort whose indices are counted (default: the encoder's default, so the "
        "tables fit the files `oscar compress` writes; the embedded model's were fitted at 0)",
    )
    p.set_defaults(handler=run_fit_priors)

    p = sub.add_parser(
        "export",
        help="copy a model directory, converting its weights' storage dtype",
        formatter_class=HelpFormatter,
        description="Write MODEL to DIR with floating-point weights stored as --dtype (the "
        "embedded model ships as float16; computation stays float32). The fingerprint changes "
        "with the weights, and the priors are copied as they are: refit them on the exported "
        "model (oscar fit-priors) so that they match its indices. A model on Stable Diffusion "
        "2.1 keeps referencing its base folder (only its own parts are converted), and a UNet "
        "LoRA stays a separate adapter.",
    )
    p.add_argument("model_dir", metavar="MODEL")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    p.add_argument("--base-model", metavar="DIR", default=None, help=argparse.SUPPRESS)
    p.add_argument("-f", "--force", action="store_true", help="write into a non-empty folder")
    p.set_defaults(handler=run_export)


def run_init(args: argparse.Namespace) -> int:
    # lazy: torch and diffusers load only when the command runs, not for --help or usage errors
    import torch

    from oscar.config import ModelConfig
    from oscar.models.oscar import OscarModel
    from oscar.store.pretrained import model_on_base, save_model

    config = ModelConfig.from_json_file(args.config)
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise ConfigError(f"{out} exists and is not empty; pass --force to write into it")
    if args.base_model is not None:
        model = model_on_base(config, args.base_model, args.seed)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            model = OscarModel(config)
    digest = save_model(model, out, include_base=args.base_model is None)
    count = sum(p.numel() for p in model.parameters())
    print(f"wrote {config.name} model ({count:,} parameters) to {out}")
    print(f"fingerprint {digest[:4].hex()} (no priors yet: run `oscar fit-priors {out} IMAGES`)")
    return 0


def parse_levels(text: str, available: tuple[int, ...]) -> list[int]:
    if text == "all":
        return list(available)
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            f"--levels must be 'all' or comma-separated integers, got {text!r}"
        ) from None
    unknown = sorted(set(levels) - set(available))
    if unknown or not levels:
        raise ConfigError(f"unknown levels {unknown}; this model has {list(available)}")
    return levels


def run_fit_priors(args: argparse.Namespace) -> int:
    # lazy: torch and diffusers load only when the command runs, not for --help or usage errors
    from oscar.coding.codec import OscarCodec
    from oscar.coding.prior_fitting import find_images, fit_priors
    from oscar.coding.priors import IndexPriors
    from oscar.io import atomic_output
    from oscar.store.pretrained import PRIORS_FILE, load_model

    codec = OscarCodec.from_pretrained(
        args.model_dir, device=args.device, base_model=args.base_model, effort=args.effort
    )
    levels = parse_levels(args.levels, codec.model.config.level_numbers)
    images = find_images(args.data)[: args.max_images]
    if not images:
        raise ConfigError("no images found in " + ", ".join(args.data))
    priors, reports = fit_priors(codec, images, levels)
    if codec.loaded.priors is not None:  # keep tables of levels not refitted
        kept = {lv: t for lv, t in codec.loaded.priors.tables.items() if lv not in levels}
        priors = IndexPriors({**kept, **priors.tables})
    target = Path(args.model_dir) / PRIORS_FILE
    with atomic_output(target, force=True) as out:
        priors.save(out)
    print(
        f"{'level':>5} {'tokens':>10} {'used':>11} {'entropy':>8} {'coded':>8} {'fixed':>6}"
        "  (bits per token)"
    )
    for r in reports:
        print(
            f"{r.level:>5} {r.tokens:>10} {r.used_entries:>5}/{r.codebook_size:<5} "
            f"{r.entropy_bits:>8.3f} {r.coded_bits:>8.3f} {r.fixed_bits:>6}"
        )
    digest = load_model(args.model_dir, base_model=args.base_model).fingerprint
    print(f"wrote {target} from {len(images)} images; model fingerprint is now {digest[:4].hex()}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    # lazy: torch and diffusers load only when the command runs, not for --help or usage errors
    import torch

    from oscar.store.pretrained import load_model, save_model

    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise ConfigError(f"{out} exists and is not empty; pass --force to write into it")
    # merge_lora=False: the LoRA factors stay apart from the base weights they would change.
    loaded = load_model(args.model_dir, base_model=args.base_model, merge_lora=False)
    dtype = getattr(torch, args.dtype)
    include_base = loaded.model.config.base_model is None
    digest = save_model(
        loaded.model, out, priors=loaded.priors, dtype=dtype, include_base=include_base
    )
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({args.dtype}, {size / 2**20:.1f} MiB), fingerprint {digest[:4].hex()}")
    return 0
