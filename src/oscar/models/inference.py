"""Inference-time adjustments of the diffusers VAE that change no computed value.

- **In-place SiLU** after each GroupNorm of the VAE's ResNet blocks and before its output
  convolutions: the normalised tensor is used only by the activation, so overwriting it saves one
  full-size activation per block. At 3840×2160 a 32-channel float32 activation of the decoder's
  last stage is about 1 GB, and the decoder's peak holds three of them (input, norm, activation);
  in-place activations remove one. Under autograd the activation stays out of place, so a model
  adjusted here can still be trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.resnet import ResnetBlock2D
from torch import nn


class InplaceSiLU(nn.SiLU):
    """SiLU that overwrites its input when no gradient is being recorded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return F.silu(x)
        return F.silu(x, inplace=True)


def use_inplace_activations(vae: AutoencoderKL) -> int:
    """Swap the VAE's SiLU modules whose input is a fresh GroupNorm output; returns how many.

    Only ResNet blocks without a time embedding qualify (with one, the same module also
    activates the shared embedding, which must not be overwritten).
    """
    swapped = 0
    for module in vae.modules():
        if (
            isinstance(module, ResnetBlock2D)
            and module.time_emb_proj is None
            and type(module.nonlinearity) is nn.SiLU
        ):
            module.nonlinearity = InplaceSiLU()
            swapped += 1
    for part in (vae.encoder, vae.decoder):
        if type(getattr(part, "conv_act", None)) is nn.SiLU:
            part.conv_act = InplaceSiLU()
            swapped += 1
    return swapped
