"""``oscar convert-official``: import the original release's ``oscar.pkl``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    # lazy: oscar.cli imports this module
    from oscar.cli import HelpFormatter

    p = sub.add_parser(
        "convert-official",
        help="import the original OSCAR checkpoint (oscar.pkl) on a Stable Diffusion 2.1 folder",
        formatter_class=HelpFormatter,
        description="Read the original release's oscar.pkl with a weights-only loader, map every "
        "tensor to this implementation's layout (hyper-coders of the 8 levels, the three UNet "
        "LoRA adapters, conv_in, the learned prompt), and write a model directory that "
        "references the Stable Diffusion 2.1 (768, v) diffusers folder instead of copying it. "
        "Unknown, missing or misshapen keys are refused. Afterwards fit entropy priors with "
        "`oscar fit-priors MODEL_DIR IMAGES`, or compress with --coder fixed.",
    )
    p.add_argument("checkpoint", metavar="oscar.pkl", help="the original release's checkpoint")
    p.add_argument(
        "--base-model",
        required=True,
        metavar="DIR",
        help="Stable Diffusion 2.1 diffusers folder (vae/, unet/, scheduler/)",
    )
    p.add_argument("-o", "--output", required=True, metavar="MODEL_DIR", help="folder to write")
    p.add_argument("-f", "--force", action="store_true", help="write into a non-empty folder")
    p.set_defaults(handler=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    # lazy: torch and diffusers load only when the command runs, not for --help or usage errors
    from oscar.store.convert_official import convert_official

    report = convert_official(args.checkpoint, args.base_model, args.output, force=args.force)
    lora = ", ".join(f"{name} {count}" for name, count in report.lora_modules.items())
    print(f"converted {args.checkpoint} -> {args.output}")
    print(f"  hyper-coders   {report.levels} levels, {report.hyper_tensors} tensors read")
    print(f"  dropped        {len(report.dropped)} codebook EMA buffers (training state only)")
    print(f"  UNet LoRA      rank {report.lora_rank}, modules: {lora}")
    print(f"  prompt         {report.prompt_shape[0]} x {report.prompt_shape[1]}")
    if report.conv_in_difference is not None:
        print(f"  conv_in        max difference from the base UNet {report.conv_in_difference:.3g}")
    for note in report.notes:
        print(f"  note: {note}")
    if report.fingerprint is not None:
        print(f"  fingerprint    {report.fingerprint[:4].hex()}")
    print(
        f"next: `oscar fit-priors {args.output} IMAGES...` for entropy coding, or compress "
        "with --coder fixed"
    )
    return 0
