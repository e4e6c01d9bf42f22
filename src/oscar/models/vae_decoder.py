"""A VAE whose decoder has its own widths and depth (``ModelConfig.vae_decoder``).

diffusers' AutoencoderKL builds its decoder with the encoder's widths and depth. On CPU the
decoder is most of a one-step decode (it runs at full image resolution: BENCHMARKS.md), so a
model may use a lighter one: diffusers' own ``Decoder`` class with other
``block_out_channels`` and ``layers_per_block``, whose last block may stop below full resolution
and whose output convolution gives 3 · r² channels that ``pixel_shuffle`` rearranges into r × r
pixels (depth-to-space, as in sub-pixel super-resolution networks). Everything else is
diffusers' code, so the inference adjustments of ``oscar.models.inference`` apply unchanged.

The VAE stays an ``AutoencoderKL`` (its ``encode``/``decode`` and the ``post_quant_conv`` are
used as they are); only ``vae.decoder`` is another module. Its weights are stored under the
same ``decoder.`` names in ``vae/``; ``oscar.json`` says which architecture they belong to.
Version 1 of the embedded model used one from fingerprint bb2087d1 on
(configs/train_small_fast_decoder.yaml; benchmarks/experiments/train_small_light_decoder.yaml was
an earlier, lighter try, not shipped); version 2's block-PCA autoencoder has its own decoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import Decoder
from diffusers.models.unets.unet_2d_blocks import get_up_block

from oscar.config import VaeDecoderConfig
from oscar.errors import ConfigError
from oscar.models.patch_autoencoder import PatchAutoencoder


class PixelShuffleDecoder(Decoder):
    """diffusers' ``Decoder`` followed by ``pixel_shuffle`` (identity when the factor is 1)."""

    def __init__(self, settings: VaeDecoderConfig, vae_config: Mapping[str, Any]) -> None:
        r = settings.pixel_shuffle
        super().__init__(
            in_channels=vae_config.get("latent_channels", 4),
            out_channels=vae_config.get("out_channels", 3) * r * r,
            up_block_types=("UpDecoderBlock2D",) * len(settings.block_out_channels),
            block_out_channels=settings.block_out_channels,
            layers_per_block=min(settings.depths),
            norm_num_groups=vae_config.get("norm_num_groups", 32),
            act_fn=vae_config.get("act_fn", "silu"),
            mid_block_add_attention=vae_config.get("mid_block_add_attention", True),
        )
        # Per-block depths: diffusers' Decoder takes one number, so it is built at the smallest
        # and the deeper blocks are built again as it builds them (never more than twice the
        # final size, within the loader's element budget). up_blocks run from the lowest
        # resolution, the reverse of block_out_channels.
        for i, depth in enumerate(reversed(settings.depths)):
            if depth != self.layers_per_block:
                self.up_blocks[i] = _up_block(self.up_blocks[i], depth, vae_config)
        self.pixel_shuffle = r

    def forward(self, sample: torch.Tensor, latent_embeds: torch.Tensor | None = None):
        sample = super().forward(sample, latent_embeds)
        return F.pixel_shuffle(sample, self.pixel_shuffle) if self.pixel_shuffle > 1 else sample


def _up_block(like: torch.nn.Module, depth: int, vae_config: Mapping[str, Any]) -> torch.nn.Module:
    """``like`` (an UpDecoderBlock2D) with ``depth`` + 1 ResNet blocks: the arguments are the
    ones diffusers' ``Decoder`` gives ``get_up_block``."""
    first = like.resnets[0]
    return get_up_block(
        "UpDecoderBlock2D",
        num_layers=depth + 1,
        in_channels=first.in_channels,
        out_channels=first.out_channels,
        prev_output_channel=first.in_channels,
        add_upsample=like.upsamplers is not None,
        resnet_eps=1e-6,
        resnet_act_fn=vae_config.get("act_fn", "silu"),
        resnet_groups=vae_config.get("norm_num_groups", 32),
        attention_head_dim=first.out_channels,
        temb_channels=None,
        resnet_time_scale_shift="group",
    )


def vae_class(vae_config: Mapping[str, Any]) -> type:
    """The autoencoder class a VAE config names (``_class_name``; AutoencoderKL by default)."""

    name = vae_config.get("_class_name", "AutoencoderKL")
    classes = {"AutoencoderKL": AutoencoderKL, "PatchAutoencoder": PatchAutoencoder}
    if name not in classes:
        raise ConfigError(
            f"expected an AutoencoderKL or a PatchAutoencoder, config declares {name}"
        )
    return classes[name]


def build_vae(vae_config: Mapping[str, Any], settings: VaeDecoderConfig | None):
    """The autoencoder a config names (AutoencoderKL or PatchAutoencoder); an AutoencoderKL
    gets the decoder ``settings`` describe (None: its own).

    With settings, AutoencoderKL is built with no up blocks (its decoder is then only an input
    convolution and a middle block, at the encoder's deepest width, so never larger than the
    encoder) and that placeholder is replaced at once: the full-size default decoder is never
    built, which keeps ``safe_build``'s element budgets meaningful.
    """
    cls = vae_class(vae_config)
    if settings is not None and cls is not AutoencoderKL:
        raise ConfigError("vae_decoder applies to an AutoencoderKL only")
    if settings is None:
        return cls.from_config(dict(vae_config))
    vae = AutoencoderKL.from_config({**vae_config, "up_block_types": []})
    vae.decoder = PixelShuffleDecoder(settings, vae_config)
    # vae.config stays the config given (saved to vae/config.json as it came).
    vae.register_to_config(up_block_types=vae_config.get("up_block_types", ("UpDecoderBlock2D",)))
    return vae


def replace_decoder(vae: AutoencoderKL, settings: VaeDecoderConfig) -> list[str]:
    """Give ``vae`` a new decoder of ``settings``, starting from the old decoder's tensors where
    name and shape agree (training a lighter decoder from a trained one); returns the names of
    the tensors that start fresh (diffusers' initialisation, from torch's random state)."""
    old = vae.decoder.state_dict()
    new = PixelShuffleDecoder(settings, vae.config).to(
        device=next(vae.parameters()).device, dtype=next(vae.parameters()).dtype
    )
    own = new.state_dict()
    kept = {k: old[k] for k, v in own.items() if k in old and old[k].shape == v.shape}
    new.load_state_dict(kept, strict=False)
    vae.decoder = new
    return sorted(set(own) - set(kept))
