"""AlexNet and VGG16 feature extractors, layer for layer as torchvision builds them.

The modules keep torchvision's indices inside ``features`` (``features.0.weight`` …), so the
standard ImageNet files (``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``) load directly:
:func:`load_backbone` keeps the ``features.*`` tensors and ignores the classifier. No torchvision.

Both return the five activations LPIPS and DISTS tap (after the ReLU that ends each stage):

- AlexNet: relu1 … relu5, channels (64, 192, 384, 256, 256)
- VGG16:   relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, channels (64, 128, 256, 512, 512)

Inputs are already normalised by the caller (LPIPS and DISTS use different normalisations).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from oscar.evaluation.weights import load_into, load_state_dict

ALEXNET_CHANNELS = (64, 192, 384, 256, 256)
VGG16_CHANNELS = (64, 128, 256, 512, 512)


class L2Pooling(nn.Module):
    """DISTS's L2 pooling: sqrt of a Hann-weighted (3×3) blur of x², stride 2, per channel.

    Replaces VGG's max pooling in DISTS (Ding et al. 2020) to avoid aliasing. The filter is fixed
    and not part of any weight file (a non-persistent buffer).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = np.hanning(5)[1:-1]
        g = torch.tensor(a[:, None] * a[None, :], dtype=torch.float32)
        g = g / g.sum()
        self.channels = channels
        self.register_buffer("filter", g[None, None], persistent=False)  # (1, 1, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One filter for every channel: channels folded into the batch, a plain convolution
        # (same result as the reference's grouped one, much faster on CPU).
        b, c, h, w = x.shape
        out = F.conv2d((x**2).reshape(b * c, 1, h, w), self.filter, stride=2, padding=1)
        return (out.reshape(b, c, out.shape[-2], out.shape[-1]) + 1e-12).sqrt()


class AlexNetFeatures(nn.Module):
    """torchvision ``alexnet().features`` (indices 0–12) returning the five ReLU outputs."""

    channels = ALEXNET_CHANNELS
    _taps = (1, 4, 7, 9, 11)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _run_taps(self.features, x, self._taps)


class VGG16Features(nn.Module):
    """torchvision ``vgg16().features`` (indices 0–30) returning relu1_2 … relu5_3.

    ``pool="l2"`` swaps the four max-pooling layers before the taps for :class:`L2Pooling`, as
    DISTS does; the weight keys are unchanged.
    """

    channels = VGG16_CHANNELS
    _taps = (3, 8, 15, 22, 29)

    def __init__(self, pool: Literal["max", "l2"] = "max") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
        cin = 3
        for item in cfg:
            if item == "M":
                layers.append(L2Pooling(cin) if pool == "l2" else nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(item), kernel_size=3, padding=1), nn.ReLU()]
                cin = int(item)
        layers.append(nn.MaxPool2d(2, 2))  # index 30, never reached (kept for the layout)
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _run_taps(self.features, x, self._taps)


def _run_taps(layers: nn.Sequential, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
    out = []
    for index, layer in enumerate(layers):
        x = layer(x)
        if index in taps:
            out.append(x)
            if index == taps[-1]:
                break
    return out


def load_backbone(module: AlexNetFeatures | VGG16Features, path: Path) -> None:
    """Load the ``features.*`` tensors of a torchvision ImageNet file into ``module``."""
    state = load_state_dict(path)
    load_into(module, {k: v for k, v in state.items() if k.startswith("features.")}, path)
