"""How good is a model's autoencoder alone, against the linear floor of its latent width?

The autoencoder bounds everything the codec can reach: no level decodes better than the
autoencoder reconstructs. A linear f8 code of the same width, the block PCA of 8×8 RGB blocks
fitted on training images (oscar.models.patch_autoencoder), is the floor a trained autoencoder
must beat; one below it on a photograph is undertrained or has learned the wrong colours. The
channel-mean error (the largest difference of a colour channel's image mean, in 8-bit levels)
catches colour casts that PSNR averages away.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from oscar.evaluation.metrics import colour_shift, psnr
from oscar.io import crop, image_to_tensor, load_image, pad, tensor_to_image
from oscar.models.patch_autoencoder import BlockPCA, fit_block_pca
from oscar.rates import VAE_FACTOR

FIT_CROP = 256  # side of the crops the floor's PCA is fitted on
FIT_CROPS_PER_IMAGE = 4


@dataclass(frozen=True)
class AutoencoderResult:
    """One image: the autoencoder's PSNR, the linear floor's, and its worst channel-mean error."""

    image: str
    psnr: float
    floor_psnr: float
    channel_mean_error: float  # 8-bit levels, the largest over R, G, B

    @property
    def margin(self) -> float:
        return self.psnr - self.floor_psnr


def fit_floor(train_images: Sequence[Path], seed: int = 0) -> BlockPCA:
    """Block PCA of fixed random crops of the training images (a few per image)."""
    rng = random.Random(seed)
    crops = []
    for path in sorted(train_images):
        x = image_to_tensor(load_image(path).rgb)
        h, w = x.shape[-2:]
        for _ in range(FIT_CROPS_PER_IMAGE):
            if h < FIT_CROP or w < FIT_CROP:
                crops.append(crop(x, h - h % VAE_FACTOR, w - w % VAE_FACTOR))
                break
            top, left = rng.randrange(h - FIT_CROP + 1), rng.randrange(w - FIT_CROP + 1)
            crops.append(x[..., top : top + FIT_CROP, left : left + FIT_CROP])
    return fit_block_pca(crops, VAE_FACTOR)


@torch.no_grad()
def reconstruct(vae, rgb: np.ndarray) -> np.ndarray:
    """The autoencoder's own reconstruction (posterior mean, no hyper-coding), 8-bit."""
    x = image_to_tensor(rgb).to(device=vae.device, dtype=vae.dtype)
    y = vae.encode(pad(x, VAE_FACTOR)).latent_dist.mean
    return tensor_to_image(crop(vae.decode(y).sample.float(), *rgb.shape[:2]))


def evaluate_autoencoder(vae, images: Sequence[Path], floor: BlockPCA) -> list[AutoencoderResult]:
    """Per image: the autoencoder against the floor of its own latent width."""
    width = int(vae.config.latent_channels)
    results = []
    for path in images:
        rgb = load_image(path).rgb
        x_hat = reconstruct(vae, rgb)
        x = pad(image_to_tensor(rgb), VAE_FACTOR)
        linear = tensor_to_image(crop(floor.reconstruct(x, width).clamp(-1, 1), *rgb.shape[:2]))
        results.append(
            AutoencoderResult(
                Path(path).name, psnr(rgb, x_hat), psnr(rgb, linear), colour_shift(rgb, x_hat)
            )
        )
    return results
