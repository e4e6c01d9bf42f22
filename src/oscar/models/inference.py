"""Inference-time adjustments of the diffusers VAE that change no computed value.

- **In-place SiLU** after each GroupNorm of the VAE's ResNet blocks and before its output
  convolutions: the normalised tensor is used only by the activation, so overwriting it saves one
  full-size activation per block.
- **In-place residual sum** in the VAE's ResNet blocks: diffusers computes
  ``(input + h) / output_scale_factor``, two new tensors and a division by 1.0; ``h += input``
  gives the same values in place.

At 3840×2160 one 32-channel float32 activation of the decoder's last stage is about 1 GB; the
block's input stays alive during the whole block, so every extra full-size temporary raises the
peak by 0.5–1 GB. Under autograd (``torch.is_grad_enabled()``) everything runs as diffusers
wrote it, so a model adjusted here can still be trained.
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


class InferenceResnetBlock2D(ResnetBlock2D):
    """diffusers' ResnetBlock2D without time embedding or resampling, with fewer temporaries.

    Same operations in the same order as ``ResnetBlock2D.forward`` for this case; only the
    residual sum is done in place and the division is skipped when the factor is 1.
    """

    def forward(self, input_tensor: torch.Tensor, temb=None, *args, **kwargs) -> torch.Tensor:
        if torch.is_grad_enabled() or temb is not None or args or kwargs:
            return super().forward(input_tensor, temb, *args, **kwargs)
        hidden_states = self.nonlinearity(self.norm1(input_tensor))
        hidden_states = self.conv1(hidden_states)
        hidden_states = self.nonlinearity(self.norm2(hidden_states))
        hidden_states = self.conv2(self.dropout(hidden_states))
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        hidden_states += input_tensor
        if self.output_scale_factor != 1:
            hidden_states /= self.output_scale_factor
        return hidden_states


def _plain_block(module: nn.Module) -> bool:
    """A ResnetBlock2D whose forward InferenceResnetBlock2D reproduces exactly."""
    return (
        type(module) is ResnetBlock2D
        and module.time_emb_proj is None
        and module.upsample is None
        and module.downsample is None
        and module.time_embedding_norm in ("default", "group")
        and isinstance(module.norm1, nn.GroupNorm)
        and isinstance(module.norm2, nn.GroupNorm)
    )


def use_inplace_activations(vae: AutoencoderKL) -> int:
    """Make the VAE's ResNet blocks and output activations work in place; returns how many.

    Only blocks without a time embedding qualify (with one, the activation module also
    activates the shared embedding, which must not be overwritten).
    """
    swapped = 0
    for module in vae.modules():
        if _plain_block(module) and type(module.nonlinearity) is nn.SiLU:
            module.nonlinearity = InplaceSiLU()
            module.__class__ = InferenceResnetBlock2D
            swapped += 1
    for part in (vae.encoder, vae.decoder):
        if type(getattr(part, "conv_act", None)) is nn.SiLU:
            part.conv_act = InplaceSiLU()
            swapped += 1
    return swapped
