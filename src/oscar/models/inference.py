"""Inference-time adjustments of the diffusers networks (under autograd they run as written).

Two change no computed value:

- **In-place SiLU** after each GroupNorm of the VAE's ResNet blocks and before its output
  convolutions: the normalised tensor is used only by the activation, so overwriting it saves one
  full-size activation per block.
- **In-place residual sum** in the VAE's ResNet blocks: diffusers computes
  ``(input + h) / output_scale_factor``, two new tensors and a division by 1.0; ``h += input``
  gives the same values in place.

One changes values only by float rounding (about 1e-6 of the activations' scale):

- **Sub-pixel upsampling** in the VAE decoder and the UNet: diffusers' ``Upsample2D`` repeats
  every pixel 2×2 (nearest neighbour) and runs a 3×3 convolution on the result. Each of the four
  output phases (even/odd row × even/odd column) sees only a 2×2 neighbourhood of the input, with
  some of the 3×3 taps summed, so the same result is four 2×2 convolutions at the input's
  resolution: 4/9 of the multiply-adds and no upsampled copy (the VAE decoder's three upsampling
  convolutions were a quarter of its time at 768×512; BENCHMARKS.md). PyTorch has no such
  operator; :func:`nearest2x_conv3x3` is it, in terms of ``conv2d``.

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
from diffusers.models.upsampling import Upsample2D
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


def _fold_taps(weight: torch.Tensor, phase: int, dim: int) -> torch.Tensor:
    """The two taps along ``dim`` that a 3-tap kernel has for one phase of a 2× nearest upsampling.

    Output row 2i sees upsampled rows 2i-1, 2i, 2i+1, i.e. input rows i-1, i, i: taps
    (w0, w1 + w2) on rows (i-1, i). Output row 2i+1 sees input rows i, i, i+1: taps
    (w0 + w1, w2) on rows (i, i+1).
    """
    w0, w1, w2 = weight.unbind(dim)
    pair = (w0, w1 + w2) if phase == 0 else (w0 + w1, w2)
    return torch.stack(pair, dim)


def subpixel_weights(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> (4·C_out, C_in, 2, 2): the 2×2 kernels of the output phases
    (even row, even column), (even, odd), (odd, even), (odd, odd), in that order."""
    phases = []
    for row in (0, 1):
        rows_folded = _fold_taps(weight, row, 2)
        for col in (0, 1):
            phases.append(_fold_taps(rows_folded, col, 3))
    return torch.cat(phases, 0)


def nearest2x_conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)``, computed
    as one 2×2 convolution with four times the output channels on ``x`` itself.

    With padding 1 a 2×2 convolution gives (H+1)×(W+1) positions; phase (a, b) takes rows a..a+H-1
    and columns b..b+W-1 of its channel group (a = 1 needs input rows i and i+1, one further down).
    The result keeps ``x``'s memory format (channels-last or contiguous).
    """
    n, _, h, w = x.shape
    c = weight.shape[0]
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    # Taps are summed in float32 so that half-precision weights lose nothing in the sums.
    kernel = subpixel_weights(weight.float()).to(weight.dtype).contiguous(memory_format=layout)
    phases = F.conv2d(x, kernel, None if bias is None else bias.repeat(4), padding=1)
    if channels_last:
        out = x.new_empty((n, h, 2, w, 2, c))
        source = phases.permute(0, 2, 3, 1)  # a view: channels-last memory is NHWC
        for a in (0, 1):
            for b in (0, 1):
                group = slice((2 * a + b) * c, (2 * a + b + 1) * c)
                out[:, :, a, :, b, :] = source[:, a : a + h, b : b + w, group]
        return out.view(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)
    out = x.new_empty((n, c, h, 2, w, 2))
    for a in (0, 1):
        for b in (0, 1):
            group = slice((2 * a + b) * c, (2 * a + b + 1) * c)
            out[:, :, :, a, :, b] = phases[:, group, a : a + h, b : b + w]
    return out.view(n, c, 2 * h, 2 * w)


def _upsampling_conv(module: Upsample2D) -> nn.Module | None:
    return getattr(module, "conv" if module.name == "conv" else "Conv2d_0", None)


def _plain_upsampler(module: nn.Module) -> bool:
    """An Upsample2D that is nearest 2× then a plain 3×3, stride 1, padding 1 convolution."""
    if type(module) is not Upsample2D:
        return False
    conv = _upsampling_conv(module)
    return (
        module.use_conv
        and not module.use_conv_transpose
        and module.interpolate
        and module.norm is None
        and type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


class SubpixelUpsample2D(Upsample2D):
    """diffusers' Upsample2D computed by :func:`nearest2x_conv3x3` when no gradient is recorded.

    Only for an exact 2× upsampling: an ``output_size`` other than twice the input (the UNet
    passes one when the latent's sides are not multiples of its total downsampling) and
    anything under autograd go through diffusers' code.
    """

    def forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs):
        h, w = hidden_states.shape[-2:]
        exact_2x = output_size is None or tuple(output_size) == (2 * h, 2 * w)
        if torch.is_grad_enabled() or args or kwargs or not exact_2x:
            return super().forward(hidden_states, output_size, *args, **kwargs)
        conv = _upsampling_conv(self)
        return nearest2x_conv3x3(hidden_states, conv.weight, conv.bias)


def use_subpixel_upsampling(network: nn.Module) -> int:
    """Make a network's plain upsampling layers sub-pixel convolutions; returns how many."""
    swapped = 0
    for module in network.modules():
        if _plain_upsampler(module):
            module.__class__ = SubpixelUpsample2D
            swapped += 1
    return swapped


def prepare_vae_decoding(
    vae: AutoencoderKL, memory_format: torch.memory_format, optimize: bool = True
) -> None:
    """The VAE as the codec decodes with it: with ``optimize``, in-place activations and
    sub-pixel upsampling in the decoder; the decoder path (``post_quant_conv``, ``decoder``) in
    ``memory_format``. The encoder keeps its layout, so the bytes written stay the same."""
    if optimize:
        use_inplace_activations(vae)
        use_subpixel_upsampling(vae.decoder)
    for part in (vae.post_quant_conv, vae.decoder):
        if part is not None:
            part.to(memory_format=memory_format)
