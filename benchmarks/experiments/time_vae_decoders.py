"""Time candidate VAE decoders (``vae_decoder`` descriptions) with random weights, on CPU.

The VAE decoder is most of a one-step decode on CPU (BENCHMARKS.md), so a lighter one is the way
to a faster decoder and a larger 20-step/1-step ratio. This script times the decoder alone, as
the codec runs it (``prepare_vae_decoding``: in-place activations, sub-pixel upsampling,
channels-last on CPU; the tuned allocator, inference mode), for the model's own decoder and each
description given, on one latent of the image size asked. Speed does not depend on the weights'
values; quality does, and needs a training run (train_small_light_decoder.yaml here,
configs/train_small_fast_decoder.yaml).

    python benchmarks/experiments/time_vae_decoders.py     # the candidates of those recipes
    python benchmarks/experiments/time_vae_decoders.py --size 1920x1080 --repeats 5 \\
        '{"block_out_channels": [32, 64, 128], "layers_per_block": [1, 1, 0], "pixel_shuffle": 2}'

Times are medians of ``--repeats`` after two warm-up calls; the ratio column is the time over
the model's own decoder's time in the same run (steadier than the times on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from oscar.config import ModelConfig, VaeDecoderConfig
from oscar.models.inference import prepare_vae_decoding
from oscar.models.vae_decoder import build_vae
from oscar.runtime.allocator import tune_cpu_allocator
from oscar.runtime.device import inference_memory_format

ROOT = Path(__file__).resolve().parents[2]
CANDIDATES = [  # those measured in the two lighter-decoder recipes
    {"block_out_channels": [16, 32, 64, 128], "layers_per_block": 0, "pixel_shuffle": 1},
    {"block_out_channels": [32, 64, 128], "layers_per_block": 1, "pixel_shuffle": 2},
    {"block_out_channels": [32, 64, 128], "layers_per_block": [1, 1, 0], "pixel_shuffle": 2},
    {"block_out_channels": [32, 64, 128], "layers_per_block": 0, "pixel_shuffle": 2},
]


def time_decoder(vae, latent: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(2):
            vae.decode(latent)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            vae.decode(latent)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("decoders", nargs="*", help="vae_decoder descriptions (JSON)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "small.json"))
    parser.add_argument("--size", default="768x512", help="image WIDTHxHEIGHT (multiples of 8)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    descriptions = [json.loads(d) for d in args.decoders] or CANDIDATES
    config = ModelConfig.from_json_file(args.config)
    tune_cpu_allocator()
    torch.manual_seed(0)
    latent = torch.randn(1, config.vae.get("latent_channels", 4), height // 8, width // 8)
    memory_format = inference_memory_format(torch.device("cpu"))  # as OscarCodec on CPU
    latent = latent.contiguous(memory_format=memory_format)
    rows = [("the model's own decoder", None)]
    rows += [(json.dumps(d), VaeDecoderConfig.from_dict(d)) for d in descriptions]
    reference = None
    print(f"{args.size}, {torch.get_num_threads()} threads, median of {args.repeats}")
    for name, settings in rows:
        vae = build_vae(config.vae, settings).eval()
        prepare_vae_decoding(vae, memory_format)
        seconds = time_decoder(vae, latent, args.repeats)
        reference = reference or seconds
        params = sum(p.numel() for p in vae.decoder.parameters()) / 1e6
        print(f"{seconds * 1000:7.1f} ms  {seconds / reference:5.2f}x  {params:5.2f} M  {name}")


if __name__ == "__main__":
    main()
