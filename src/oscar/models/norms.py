"""Per-channel norm rescaling and its side information (docs/method.md §1, "Norm rescaling").

The decoder rescales each channel of y_tilde to the size of the same channel of the true latent
y (or, with the model setting ``latent_rescale: "global"``, the whole of y_tilde by one gain to
y's total size). The original release used y's norms at decode time without transmitting them
(docs/method.md §6.2); we transmit them.

What is sent: the per-channel RMS (L2 norm over positions / √positions), which, unlike the raw
norm, does not grow with the image size. Each RMS is quantised to one byte on a log2 grid::

    code = round((log2(rms) − LOG2_MIN) / STEP),  STEP = (LOG2_MAX − LOG2_MIN) / 255

with [LOG2_MIN, LOG2_MAX] = [−6, 3], i.e. RMS from 0.016 to 8 (scaled latents have RMS near 1).
The worst-case relative error of the decoded RMS is 2^(STEP/2) − 1 ≈ 1.2 %. Cost: 4 channels ×
8 bits = 32 bits per image (0.00008 bpp at 768×512), counted in every measured rate.
"""

from __future__ import annotations

import torch

LOG2_MIN = -6.0
LOG2_MAX = 3.0
NORM_BITS = 8
_LEVELS = 2**NORM_BITS - 1
STEP = (LOG2_MAX - LOG2_MIN) / _LEVELS
_EPS = 1e-12


def channel_rms(y: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, C) root-mean-square over positions, computed in float32."""
    return y.float().pow(2).mean(dim=(2, 3)).sqrt()


def quantize_rms(rms: torch.Tensor) -> torch.Tensor:
    """(B, C) RMS → (B, C) uint8 codes."""
    log_rms = torch.log2(rms.double().clamp_min(_EPS))
    codes = torch.round((log_rms - LOG2_MIN) / STEP).clamp(0, _LEVELS)
    return codes.to(torch.uint8)


def dequantize_rms(codes: torch.Tensor) -> torch.Tensor:
    """(B, C) uint8 codes → (B, C) float32 RMS."""
    return torch.exp2(LOG2_MIN + codes.double() * STEP).to(torch.float32)


def rescale_global(y_tilde: torch.Tensor, target_rms: torch.Tensor) -> torch.Tensor:
    """Scale y_tilde (B, C, H, W) by one gain per image so its RMS over all channels equals
    that of target_rms (B, C). Channels y_tilde leaves near zero stay near zero, where
    :func:`rescale_channels` would blow them up to full size."""
    current = channel_rms(y_tilde).square().mean(1).sqrt().clamp_min(1e-6)
    target = target_rms.to(current.device).square().mean(1).sqrt()
    return y_tilde * (target / current).to(y_tilde.dtype)[:, None, None, None]


def rescale_channels(y_tilde: torch.Tensor, target_rms: torch.Tensor) -> torch.Tensor:
    """Scale each channel of y_tilde (B, C, H, W) so its RMS equals target_rms (B, C)."""
    current = channel_rms(y_tilde).clamp_min(1e-6)
    gain = (target_rms.to(current.device) / current).to(y_tilde.dtype)
    return y_tilde * gain[:, :, None, None]
