"""Inference optimisations: in-place VAE activations change nothing; optimised codec, same bytes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers.models.upsampling import Upsample2D

from helpers import build_tiny_model, make_image
from oscar.coding.codec import OscarCodec
from oscar.models.inference import (
    InplaceSiLU,
    SubpixelUpsample2D,
    subpixel_weights,
    use_inplace_activations,
    use_subpixel_upsampling,
)


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


def _upsampler(channels: int, seed: int) -> Upsample2D:
    torch.manual_seed(seed)
    return Upsample2D(channels, use_conv=True).eval()


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(
    ("batch", "channels", "height", "width"), [(1, 8, 5, 7), (2, 3, 1, 4), (1, 16, 6, 6)]
)
def test_subpixel_upsampling_matches_diffusers(layout, batch, channels, height, width):
    """Nearest 2x then 3x3 conv == the sub-pixel form, up to float rounding, in either layout."""
    plain = _upsampler(channels, seed=height)
    fast = copy.deepcopy(plain)
    assert use_subpixel_upsampling(fast) == 1 and isinstance(fast, SubpixelUpsample2D)
    x = torch.randn(batch, channels, height, width).contiguous(memory_format=layout)
    with torch.inference_mode():
        expected, got = plain(x), fast(x)
    assert got.shape == expected.shape == (batch, channels, 2 * height, 2 * width)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.is_contiguous(memory_format=layout)


def test_subpixel_weights_fold_the_taps_of_each_phase():
    """Each 2x2 phase kernel is the sum of the 3x3 taps that land on the same input pixel."""
    weight = torch.arange(9.0).reshape(1, 1, 3, 3)  # rows (0 1 2), (3 4 5), (6 7 8)
    phases = subpixel_weights(weight)[:, 0]
    even_even = torch.tensor([[0.0, 1 + 2], [3 + 6, 4 + 5 + 7 + 8]])
    odd_odd = torch.tensor([[0.0 + 1 + 3 + 4, 2 + 5], [6 + 7, 8]])
    assert torch.equal(phases[0], even_even) and torch.equal(phases[3], odd_odd)


def test_subpixel_upsampling_defers_to_diffusers_when_it_cannot_apply():
    """Other output sizes and autograd run diffusers' code (same values, gradients kept)."""
    plain = _upsampler(4, seed=0)
    fast = copy.deepcopy(plain)
    use_subpixel_upsampling(fast)
    x = torch.randn(1, 4, 5, 6)
    with torch.inference_mode():
        assert torch.equal(fast(x, output_size=(11, 12)), plain(x, output_size=(11, 12)))
    x.requires_grad_(True)
    out = fast(x)
    assert torch.equal(out, plain(x))  # the diffusers path exactly
    out.sum().backward()
    assert x.grad is not None
    # Only nearest-neighbour 3x3 upsamplers qualify.
    assert use_subpixel_upsampling(Upsample2D(4, use_conv=False)) == 0
    assert use_subpixel_upsampling(Upsample2D(4, use_conv=True, kernel_size=5, padding=2)) == 0


def test_codec_networks_use_subpixel_upsampling(tiny_codec):
    """The decoder's networks are swapped; the VAE encoder (the bytes written) has no upsampler."""
    decoder_ups = [m for m in tiny_codec.model.vae.decoder.modules() if isinstance(m, Upsample2D)]
    unet_ups = [m for m in tiny_codec.model.unet.modules() if isinstance(m, Upsample2D)]
    assert decoder_ups and unet_ups
    assert all(isinstance(m, SubpixelUpsample2D) for m in decoder_ups + unet_ups)
