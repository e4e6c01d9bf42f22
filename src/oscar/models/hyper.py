"""Per-level hyper-coder: analysis g_a, cosine vector quantiser, synthesis g_s (docs/method.md §3).

::

    y (B, 4, H/8, W/8) ─g_a─► u (B, M, h, w) ─quantiser─► indices (B, h, w)
    indices ─codebook─► û (B, M, h, w) ─g_s─► y_tilde (B, 4, H/8, W/8)

with h = H / f and w = W / f for the level's grid factor f. The analysis has three stages of
three residual bottleneck blocks; the last ``num_stride2_stages`` of its three resampling
positions are 5×5 stride-2 convolutions and the others 1×1 (as in the original release, whose
weights therefore map onto these modules index for index).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from oscar.config import HyperConfig
from oscar.models.blocks import (
    AttentionBlock,
    ResidualBottleneckBlock,
    conv1x1,
    down_conv,
    up_conv,
)
from oscar.models.quantizer import CosineVectorQuantizer
from oscar.rates import RateLevel


def _resample_flags(num_stride2_stages: int) -> tuple[bool, bool, bool]:
    """Which of the three resampling positions are strided; they fill from the last one."""
    return tuple(i >= 3 - num_stride2_stages for i in range(3))  # type: ignore[return-value]


class HyperAnalysis(nn.Sequential):
    """g_a: latent y (B, C_lat, H', W') → features u (B, M, H'/s, W'/s), s = 2**stages."""

    def __init__(self, latent_channels: int, hidden: int, features: int, stages: int) -> None:
        strided = _resample_flags(stages)

        def resample(i: int, in_ch: int) -> nn.Module:
            return down_conv(in_ch, hidden) if strided[i] else conv1x1(in_ch, hidden)

        def blocks() -> list[nn.Module]:
            return [ResidualBottleneckBlock(hidden) for _ in range(3)]

        super().__init__(
            resample(0, latent_channels),  # 0
            *blocks(),  # 1-3
            resample(1, hidden),  # 4
            *blocks(),  # 5-7
            AttentionBlock(hidden),  # 8
            resample(2, hidden),  # 9
            *blocks(),  # 10-12
            conv1x1(hidden, features),  # 13
            AttentionBlock(features),  # 14
        )


class HyperSynthesis(nn.Sequential):
    """g_s: features û (B, M, h, w) → y_tilde (B, C_lat, h·s, w·s), mirror of g_a."""

    def __init__(self, latent_channels: int, features: int, stages: int) -> None:
        # Same positions as the analysis (the original's proj.0/4/8 follow backbone.0/4/9).
        strided = _resample_flags(stages)

        def resample(i: int) -> nn.Module:
            return up_conv(features, features) if strided[i] else conv1x1(features, features)

        def blocks() -> list[nn.Module]:
            return [ResidualBottleneckBlock(features) for _ in range(3)]

        super().__init__(
            resample(0),  # 0
            *blocks(),  # 1-3
            resample(1),  # 4
            *blocks(),  # 5-7
            resample(2),  # 8
            *blocks(),  # 9-11
            conv1x1(features, latent_channels),  # 12
        )


@dataclass(frozen=True)
class HyperOutput:
    """Training-mode result: y_tilde (B, 4, H', W'), indices (B, h, w), commitment loss and
    its codebook part (oscar.models.quantizer.QuantizerOutput)."""

    y_tilde: torch.Tensor
    indices: torch.Tensor
    commitment_loss: torch.Tensor
    codebook_loss: torch.Tensor | None = None


class HyperCoder(nn.Module):
    """The hyper-coder of one rate level."""

    def __init__(self, rate: RateLevel, config: HyperConfig, latent_channels: int = 4) -> None:
        super().__init__()
        stages = rate.num_stride2_stages
        self.g_a = HyperAnalysis(
            latent_channels, config.hidden_channels, config.feature_channels, stages
        )
        self.quantizer = CosineVectorQuantizer(
            config.feature_channels, rate.codebook_size, config.codebook_dim
        )
        self.g_s = HyperSynthesis(latent_channels, config.feature_channels, stages)
        self.codebook_size = rate.codebook_size
        self.latent_downsample = rate.latent_downsample

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        """Latent y (B, 4, H', W'), sides divisible by f/8 → indices (B, H'·8/f, W'·8/f)."""
        return self.quantizer.quantize(self.g_a(y))

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, h, w) → y_tilde (B, 4, h·f/8, w·f/8)."""
        return self.g_s(self.quantizer.dequantize(indices))

    def forward(self, y: torch.Tensor) -> HyperOutput:
        q = self.quantizer(self.g_a(y))
        return HyperOutput(self.g_s(q.features), q.indices, q.commitment_loss, q.codebook_loss)
