"""Inference optimisations: in-place VAE activations change nothing; optimised codec, same bytes."""

from __future__ import annotations

import copy

import numpy as np
import torch

from conftest import build_tiny_model, make_image
from oscar.codec import OscarCodec
from oscar.models.inference import InplaceSiLU, use_inplace_activations


def test_inplace_activations_change_no_value_and_keep_gradients():
    vae = build_tiny_model(0).vae.eval()
    fast = copy.deepcopy(vae)
    assert use_inplace_activations(fast) > 0
    assert any(isinstance(m, InplaceSiLU) for m in fast.modules())
    x = torch.rand(1, 3, 64, 48) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(fast.encode(x).latent_dist.mean, vae.encode(x).latent_dist.mean)
        z = vae.encode(x).latent_dist.mean
        assert torch.equal(fast.decode(z).sample, vae.decode(z).sample)
    x.requires_grad_(True)
    fast.decode(fast.encode(x).latent_dist.mean).sample.mean().backward()  # still trainable
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_optimised_codec_writes_the_same_bytes(tiny_model_dir, tiny_codec):
    plain = OscarCodec.from_pretrained(tiny_model_dir, device="cpu", optimize=False)
    assert plain.memory_format == torch.contiguous_format
    assert tiny_codec.memory_format == torch.channels_last  # CPU default
    for seed, level in [(0, 0), (1, 4), (2, 7)]:
        image = make_image(72, 104, seed=seed)
        data = tiny_codec.compress(image, level)
        assert data == plain.compress(image, level)
        diff = tiny_codec.decompress(data).astype(int) - plain.decompress(data).astype(int)
        assert np.abs(diff).max() <= 1
