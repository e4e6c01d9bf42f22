"""``oscar info``: what a .oscar file holds, or, given no file, what a model directory is."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from oscar.commands.common import add_limit_options, read_input_file
from oscar.errors import ConfigError, OscarError


def register(sub: argparse._SubParsersAction) -> None:
    # lazy: oscar.cli imports this module
    from oscar.cli import HelpFormatter

    p = sub.add_parser(
        "info",
        help="show the header and rates of .oscar files, or describe a model",
        formatter_class=HelpFormatter,
        description="Parse .oscar files and show their fields, measured bpp (file bytes × 8 / "
        "pixels) and the nominal bpp of their level; this reads the model's configuration only. "
        "Without FILE, describe the model instead (loading its weights): full fingerprint, "
        "parameters per part, decoder, priors and rate table.",
    )
    p.add_argument("inputs", nargs="*", metavar="FILE")
    p.add_argument(
        "--model",
        metavar="DIR",
        default=None,
        help="model whose rate table to use, or to describe (default: the embedded model)",
    )
    p.add_argument(
        "--base-model",
        metavar="DIR",
        default=None,
        help="Stable Diffusion 2.1 folder, for a model that references one",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per file or model")
    add_limit_options(p)
    p.set_defaults(handler=run_info)


def run_info(args: argparse.Namespace) -> int:
    if not args.inputs:
        return _print_model(args)
    return _print_files(args)


# ----------------------------------------------------------------------------- files
def _print_files(args: argparse.Namespace) -> int:
    # lazy: light (no torch), but --help does not need it
    from oscar.coding.bitstream import Limits
    from oscar.coding.file_info import describe_file
    from oscar.store.model_files import MODEL_FILE, read_config, resolve_model_dir  # no torch

    limits = Limits(max_pixels=args.max_pixels)
    try:
        config = read_config(resolve_model_dir(args.model), args.base_model)
        note = "(not in the model's rate table)"
    except OscarError as exc:
        if args.model is not None:
            raise
        config = None
        note = f"(no rate table: {exc})"
    failed = 0
    for text in args.inputs:
        path = Path(text)
        try:
            if (path / MODEL_FILE).is_file():
                raise ConfigError(
                    f"{path} is a model directory: `oscar info --model {path}` describes it"
                )
            data = read_input_file(path, limits.max_file_bytes)  # its errors name the path
        except OscarError as exc:
            print(f"oscar: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        try:
            info = describe_file(data, config, limits)
        except OscarError as exc:
            print(f"oscar: error: {path}: {exc}", file=sys.stderr)
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


# ----------------------------------------------------------------------------- model
def _millions(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f} M"
    return f"{n / 1e3:.1f} k" if n >= 10_000 else str(n)


def _print_model(args: argparse.Namespace) -> int:
    # lazy: torch and diffusers load only when the command runs, not for --help or usage errors
    from oscar.store.model_info import describe_model
    from oscar.store.pretrained import load_model, resolve_model_dir

    loaded = load_model(resolve_model_dir(args.model), args.base_model)
    info = describe_model(loaded)
    if args.json:
        print(json.dumps(info))
        return 0
    n = info["parameters"]
    print(f"{info['model']}" + ("  (the embedded model)" if info["embedded"] else ""))
    print(f"  name            {info['name']}")
    print(f"  fingerprint     {info['fingerprint']}")
    print(f"                  (files made with it carry {info['file_fingerprint']})")
    print(
        f"  parameters      {_millions(n['total'])}: VAE encoder {_millions(n['vae_encoder'])}, "
        f"VAE decoder {_millions(n['vae_decoder'])}, UNet {_millions(n['unet'])}, "
        f"hyper-coders {_millions(n['hyper_coders'])}, prompt {_millions(n['prompt'])}"
    )
    base = info["base_model"]
    print(f"  base model      {base if base else 'none (every weight is in the directory)'}")
    lora = info["lora"]
    print(
        "  UNet LoRA       "
        + (
            f"rank {lora['rank']}, alpha {lora['alpha']:g}, {lora['modules']} modules "
            f"(merged into the UNet when loaded)"
            if lora
            else "none"
        )
    )
    dec = info["vae_decoder"]
    print(
        "  VAE decoder     "
        + (
            f"its own: widths {', '.join(map(str, dec['block_out_channels']))}; ResNet blocks "
            f"{', '.join(map(str, dec['layers_per_block']))}; pixel shuffle {dec['pixel_shuffle']}"
            if dec
            else "the autoencoder's own"
        )
    )
    print(
        "  priors          "
        + ("fitted (entropy coding)" if info["priors"] else "none: fixed-length coding only")
    )
    print("  levels")
    print("    level  nominal bpp  grid  codebook  timestep  cosine  prior entropy (bits/index)")
    for lv in info["levels"]:
        cosine = "-" if lv["cosine"] is None else f"{lv['cosine']:.3f}"
        if lv["prior_entropy_bits"] is None:
            entropy = "-"
        else:
            entropy = f"{lv['prior_entropy_bits']:.2f} of {math.log2(lv['codebook_size']):g}"
        print(
            f"    {lv['level']:>5}  {lv['nominal_bpp']:>11.5f}  {lv['grid_factor']:>4}  "
            f"{lv['codebook_size']:>8}  {lv['timestep']:>8}  {cosine:>6}  {entropy}"
        )
    return 0
