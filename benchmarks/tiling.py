"""Tiled vs untiled coding: output differences, index agreement, memory (benchmarks/tiling.md).

Usage (CPU, one thread, random models made with `oscar init`)::

    python benchmarks/tiling.py quality MODEL_DIR --size 1024 --tile 256 512
    python benchmarks/tiling.py memory MODEL_DIR --height 2160 --width 3840 --max-memory 512M
    python benchmarks/tiling.py calibrate configs/sd21.json decoder 16 32 48

Memory is the peak resident set above the loaded model (Linux: VmHWM after resetting it through
/proc/self/clear_refs), measured in a fresh process per run so freed heap is not reused.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _status(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) * 1024


def measure_peak(fn):
    """(result, peak bytes above the current RSS) of fn()."""
    gc.collect()
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    out = fn()
    return out, _status("VmHWM") - before


def test_image(height: int, width: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack(
        [128 + 100 * np.sin(xx / 17 + seed), 128 + 100 * np.cos(yy / 23), (xx + yy) % 256], axis=2
    )
    return np.clip(base + rng.normal(0, 12, size=(height, width, 3)), 0, 255).astype(np.uint8)


def psnr(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    if isinstance(a, torch.Tensor):
        a = ((a.clamp(-1, 1) + 1) * 127.5).round().numpy()
        b = ((b.clamp(-1, 1) + 1) * 127.5).round().numpy()
    mse = float(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2))
    return 10 * np.log10(255**2 / mse) if mse else float("inf")


def quality(args: argparse.Namespace) -> None:
    from oscar.coding.codec import OscarCodec
    from oscar.runtime.tiling import StageTiles, Tiling

    codec = OscarCodec.from_pretrained(args.model, device="cpu")
    m = codec.model
    image = test_image(args.size, args.size)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    record = codec.encode(image, 7)
    indices = torch.from_numpy(record.indices)[None]
    codes = torch.from_numpy(record.rms_codes)[None]
    with torch.inference_mode():
        y = m.encode_latent(x)
        z = m.to_noisy_latent(m.hyper_coder(7).decode(indices), codes)
        y_hat = m.denoise(z, m.rate(7).timestep)
        x_hat = m.decode_latent(y_hat)
    for tile_px in args.tile:
        t = tile_px // 8
        tiles = Tiling(StageTiles(t, t // 4), StageTiles(t, t // 4), StageTiles(t, t // 4))
        with torch.inference_mode():
            dec = m.decode_latent(y_hat, tiles)
            m.vae.enable_tiling()
            m.vae.tile_latent_min_size, m.vae.tile_sample_min_size = t, 8 * t
            theirs = m.vae.decode(y_hat / m.scaling_factor).sample.clamp(-1, 1)
            y_theirs = m.vae.encode(x).latent_dist.mean * m.scaling_factor
            m.vae.disable_tiling()
            y_tiled = m.encode_latent(x, tiles)
            y_hat_tiled = m.denoise(z, m.rate(7).timestep, tiles)
            both = m.decode_latent(y_hat_tiled, tiles)

        def rel(a, b):
            return float((a - b).norm() / b.norm())

        tiled_codec = OscarCodec.from_pretrained(args.model, device="cpu", tile_size=tile_px)
        agree = {}
        for level in (0, 3, 7):
            a, b = codec.encode(image, level), tiled_codec.encode(image, level)
            agree[level] = round(float(np.mean(a.indices == b.indices)), 3)
        print(
            json.dumps(
                {
                    "image": args.size,
                    "tile_px": tile_px,
                    "decoder_psnr_db": round(psnr(x_hat, dec), 1),
                    "decoder_psnr_db_diffusers_enable_tiling": round(psnr(x_hat, theirs), 1),
                    "encoder_latent_rel_error": round(rel(y_tiled, y), 4),
                    "encoder_latent_rel_error_diffusers": round(rel(y_theirs, y), 4),
                    "unet_y_hat_rel_error": round(rel(y_hat_tiled, y_hat), 4),
                    "decode_psnr_db_unet_and_decoder_tiled": round(psnr(x_hat, both), 1),
                    "indices_equal_tiled_encoder": agree,
                }
            ),
            flush=True,
        )


MEMORY_CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
from tiling import measure_peak, test_image
from oscar.coding.codec import OscarCodec
from oscar.rates import padded_size
from oscar.runtime.tiling import estimated_peak
model, h, w, budget, tile, direction = sys.argv[2:8]
h, w = int(h), int(w)
kwargs = {}
if budget != "-":
    from oscar.runtime.tiling import parse_memory
    kwargs["max_memory"] = parse_memory(budget)
if tile != "-":
    kwargs["tile_size"] = int(tile)
image = test_image(h, w)
codec = OscarCodec.from_pretrained(model, device="cpu", **kwargs)
ph, pw = padded_size(h, w, codec.pad_multiple)
if direction == "decode":
    data = OscarCodec.from_pretrained(model, device="cpu", tile_size=512).compress(image, 7)
    del image
    fn = lambda: codec.decompress(data)
else:
    fn = lambda: codec.compress(image, 7)
tiling = codec.tiling(direction, ph, pw)
start = time.time()
_, peak = measure_peak(fn)
print(json.dumps({"image": f"{w}x{h}", "direction": direction, "max_memory": budget,
                  "tile_px": tile, "tiling": str(tiling), "seconds": round(time.time() - start, 1),
                  "peak_mib": round(peak / 2**20),
                  "estimate_mib": round(estimated_peak(codec.model.config, ph, pw, direction,
                                                       tiling) / 2**20)}))
"""


def memory(args: argparse.Namespace) -> None:
    for direction in ("decode", "encode"):
        for budget in args.max_memory:
            run = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    MEMORY_CHILD,
                    str(Path(__file__).parent),
                    args.model,
                    str(args.height),
                    str(args.width),
                    budget,
                    args.tile or "-",
                    direction,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            print(run.stdout.strip() or run.stderr.strip().splitlines()[-1], flush=True)


def calibrate(args: argparse.Namespace) -> None:
    """Peak memory of one pass of a network at several tile sizes vs the planner's estimate."""
    for size in args.sizes:
        child = rf"""
import sys, json, time, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
torch.set_num_threads(1)
from tiling import measure_peak
from diffusers import AutoencoderKL, UNet2DConditionModel
from oscar.config import ModelConfig
from oscar.runtime.tiling import stage_bytes
cfg = ModelConfig.from_json_file({args.config!r}); stage, t = {args.stage!r}, {size}
if stage == "unet":
    with torch.device("meta"):
        net = UNet2DConditionModel.from_config(cfg.unet)
    net = net.to_empty(device="cpu")
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.02)
    z, ctx = torch.randn(1, 4, t, t), torch.randn(1, cfg.prompt_length, cfg.cross_attention_dim)
    fn = lambda: net(z, torch.tensor([500]), encoder_hidden_states=ctx).sample
else:
    net = AutoencoderKL.from_config(cfg.vae).eval()
    if stage == "decoder":
        z = torch.randn(1, 4, t, t)
        fn = lambda: net.decode(z).sample
    else:
        x = torch.randn(1, 3, 8 * t, 8 * t)
        fn = lambda: net.encode(x).latent_dist.mean
with torch.inference_mode():
    start = time.time()
    _, peak = measure_peak(fn)
est = stage_bytes(stage, cfg, t, t)
print(json.dumps({{"config": cfg.name, "stage": stage, "tile_px": 8 * t,
                  "peak_mib": round(peak / 2**20), "estimate_mib": round(est / 2**20),
                  "seconds": round(time.time() - start, 1)}}))
"""
        run = subprocess.run(
            [sys.executable, "-c", child], capture_output=True, text=True, check=False
        )
        print(run.stdout.strip() or run.stderr.strip().splitlines()[-1], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("quality")
    p.add_argument("model")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--tile", type=int, nargs="+", default=[256, 512])
    p.set_defaults(run=quality)
    p = sub.add_parser("memory")
    p.add_argument("model")
    p.add_argument("--height", type=int, default=2160)
    p.add_argument("--width", type=int, default=3840)
    p.add_argument("--max-memory", nargs="+", default=["512M"])
    p.add_argument("--tile", default=None)
    p.set_defaults(run=memory)
    p = sub.add_parser("calibrate")
    p.add_argument("config")
    p.add_argument("stage", choices=("encoder", "decoder", "unet"))
    p.add_argument("sizes", type=int, nargs="+", help="tile sides in latent positions")
    p.set_defaults(run=calibrate)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    args.run(args)
    print(f"# {time.time() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
