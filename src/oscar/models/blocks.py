"""Convolutional blocks of the PerCo-style hyper-coder (docs/method.md §3).

Layer order and sub-module names follow the original release exactly
(docs/official-checkpoint.md §2.2), so that importing its weights is a renaming and
not a re-implementation.
"""

from __future__ import annotations

import torch
from torch import nn


def conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1)


def conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)


def down_conv(in_ch: int, out_ch: int) -> nn.Conv2d:
    """5×5 stride-2 convolution: n → ceil(n / 2)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=5, stride=2, padding=2)


def up_conv(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    """5×5 stride-2 transposed convolution: n → 2n."""
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=5, stride=2, padding=2, output_padding=1)


class ResidualBottleneckBlock(nn.Module):
    """x + (1×1 C→C/2, ReLU, 3×3, ReLU, 1×1 C/2→C)(x); no activation after the sum."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        mid = channels // 2
        self.layers = nn.Sequential(
            conv1x1(channels, mid),
            nn.ReLU(),
            conv3x3(mid, mid),
            nn.ReLU(),
            conv1x1(mid, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class ResidualUnit(nn.Module):
    """ReLU(x + (1×1 C→C/2, ReLU, 3×3, ReLU, 1×1 C/2→C)(x)), as in CompressAI's attention."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        mid = channels // 2
        self.conv = nn.Sequential(
            conv1x1(channels, mid),
            nn.ReLU(),
            conv3x3(mid, mid),
            nn.ReLU(),
            conv1x1(mid, channels),
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.conv(x))


class AttentionBlock(nn.Module):
    """CompressAI's simplified attention: x + a(x) · sigmoid(b(x)) (Cheng et al. 2020)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_a = nn.Sequential(*(ResidualUnit(channels) for _ in range(3)))
        self.conv_b = nn.Sequential(
            *(ResidualUnit(channels) for _ in range(3)), conv1x1(channels, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_a(x) * torch.sigmoid(self.conv_b(x))
