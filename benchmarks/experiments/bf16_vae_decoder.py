"""What running only the VAE decoder in bfloat16 would buy and cost (a measurement, not an option).

On CPUs with native bfloat16 (AVX-512 BF16, AMX) the VAE decoder, most of a one-step decode on
CPU, runs about twice as fast in bfloat16; the UNet and everything else could stay float32.
This script decodes one file of the packaged sample (768×512, level 6, default encoder) with
the embedded model, float32 everywhere, then with the VAE decoder alone cast to bfloat16, with
1 and 20 steps each, and prints the medians, the 20-step/1-step ratios, and how far the decoded
pixels move (PSNR between the two outputs, share of changed pixel values, PSNR to the original):

    python benchmarks/experiments/bf16_vae_decoder.py [--repeats 5] [--level 6]

`--dtype bfloat16` (docs/usage.md, "Precision") casts the UNet too, which makes one-step decoding
faster still but the 20-step/1-step ratio smaller. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from oscar import sample_image_path
from oscar.coding.codec import OscarCodec
from oscar.evaluation.metrics import psnr


def timed(codec: OscarCodec, data: bytes, steps: int, repeats: int) -> tuple[float, np.ndarray]:
    codec.decompress(data, steps=steps)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = codec.decompress(data, steps=steps)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def decoder_in_bfloat16(codec: OscarCodec) -> None:
    """Cast the VAE decoder (and the convolution before it) to bfloat16, converting at its
    ends: the codec hands it float32 latents (the VAE's dtype is its encoder's) and expects a
    float32 image."""
    vae = codec.model.vae
    vae.post_quant_conv.to(torch.bfloat16)
    vae.decoder.to(torch.bfloat16)
    vae.post_quant_conv.register_forward_pre_hook(lambda m, args: (args[0].to(torch.bfloat16),))
    vae.decoder.register_forward_hook(lambda m, args, out: out.float())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--level", type=int, default=6)
    args = parser.parse_args()
    image = np.asarray(Image.open(sample_image_path()).convert("RGB"))
    codec = OscarCodec.from_pretrained(None, device="cpu")
    data = codec.compress(image, level=args.level)
    rows = {}
    for name in ("float32", "VAE decoder bfloat16"):
        if name != "float32":
            decoder_in_bfloat16(codec)
        one, out = timed(codec, data, 1, args.repeats)
        twenty, _ = timed(codec, data, 20, max(1, args.repeats // 2))
        rows[name] = out
        print(
            f"{name:>21}: 1 step {one:.3f} s, 20 steps {twenty:.3f} s, ratio {twenty / one:.2f}x, "
            f"PSNR to the original {psnr(out, image):.3f} dB"
        )
    ref, out = rows["float32"], rows["VAE decoder bfloat16"]
    changed = np.abs(out.astype(int) - ref.astype(int))
    print(
        f"bfloat16 decoder against float32: PSNR {psnr(out, ref):.2f} dB, "
        f"{100 * np.mean(changed > 0):.1f} % of values changed, at most by {changed.max()}"
    )


if __name__ == "__main__":
    main()
