"""What plain vector quantisation of a model's latent gives, in the scaled and the energy space.

    python benchmarks/experiments/latent_vq_floor.py TRAIN_DIR HELDOUT_DIR MODEL_DIR

k-means codebooks (no context, no learning beyond k-means) of each level's token shape: a token
is the g×g latent positions of one grid cell (g = grid factor / 8), K codewords fitted on 60
training images. Each held-out photograph of coarse_latent.py (whole, cropped to a multiple of
64) is quantised token by token and decoded by the autoencoder alone. "scaled": k-means on the
latent as the UNet sees it; "energy": on the latent divided by its per-channel scale, where a
channel counts as much as it moves the pixels. With one scale for all channels the two agree.
Used for the version-2 diagnosis in docs/training-log.md.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from coarse_latent import IMAGES
from PIL import Image

from oscar.evaluation.metrics import psnr
from oscar.io import image_to_tensor, tensor_to_image
from oscar.store.pretrained import load_model

SHAPES = ((8, 256), (8, 16), (16, 2048), (16, 256), (32, 1024))  # (grid factor, K)


def load(path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    h, w = rgb.shape[:2]
    return rgb[: h // 64 * 64, : w // 64 * 64]


def tokens(y: torch.Tensor, g: int) -> torch.Tensor:
    return F.unfold(y, g, stride=g)[0].T  # (tokens, C·g·g)


def kmeans(x: torch.Tensor, k: int, iters: int = 25) -> torch.Tensor:
    centres = x[torch.randperm(len(x))[:k]].clone()
    for _ in range(iters):
        nearest = torch.cdist(x, centres).argmin(1)
        for j in range(k):
            members = x[nearest == j]
            centres[j] = members.mean(0) if len(members) else x[torch.randint(len(x), (1,))][0]
    return centres


@torch.no_grad()
def main() -> None:
    train_dir, heldout, model_dir = map(Path, sys.argv[1:4])
    torch.manual_seed(0)
    model = load_model(model_dir).model.eval()
    paths = sorted(train_dir.iterdir())
    random.Random(0).shuffle(paths)
    train = [model.encode_latent(image_to_tensor(load(p))) for p in paths[:60]]
    photos = [load(heldout / f"{name}.jpg") for name in IMAGES]
    latents = [model.encode_latent(image_to_tensor(rgb)) for rgb in photos]
    scale = model.vae.channel_scale(latents[0])
    for space, weight in (("scaled", torch.ones_like(scale)), ("energy", 1 / scale)):
        for grid, k in SHAPES:
            g = grid // 8
            centres = kmeans(torch.cat([tokens(y * weight, g) for y in train]), k)
            values = []
            for rgb, y in zip(photos, latents, strict=True):
                t = tokens(y * weight, g)
                q = centres[torch.cdist(t, centres).argmin(1)]
                y_q = F.fold(q.T[None], y.shape[-2:], g, stride=g) / weight
                values.append(psnr(rgb, tensor_to_image(model.decode_latent(y_q))))
            print(f"{space} f={grid} K={k}: {np.mean(values):.2f} dB", flush=True)


if __name__ == "__main__":
    main()
