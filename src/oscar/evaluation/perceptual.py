"""LPIPS (AlexNet, VGG) and DISTS as differentiable torch modules, for evaluation and training.

Interface (also used by the training losses)::

    from oscar.evaluation.perceptual import load_perceptual, unavailable_reason

    loss_fn = load_perceptual("lpips_vgg", weights_dir=None)    # nn.Module, or None
    if loss_fn is None:
        print(unavailable_reason("lpips_vgg"))                   # which file to put where
    d = loss_fn(x_hat, x)          # x_hat, x: (B, 3, H, W) in [-1, 1]  ->  d: (B,) distances

- ``name`` is ``"lpips_alex"``, ``"lpips_vgg"`` or ``"dists"``.
- The returned module is in eval mode with frozen parameters (``requires_grad=False``); gradients
  flow to its inputs, so ``d.mean()`` can be a training loss. Move it with ``.to(device)``.
- Lower is more similar for all three. Identical inputs give 0 for LPIPS and ≈ 0 for DISTS.

The computations follow the reference implementations: LPIPS v0.1 (Zhang et al. 2018: scaling
layer, unit-normalised features, squared difference, 1×1 linear layer, spatial mean, sum over
five layers) and DISTS (Ding et al. 2020: VGG16 with L2 pooling, ImageNet normalisation, texture
and structure terms over the image and five stages, weights alpha/beta). Images are compared at
full resolution (DISTS's demo resizes to 256 on the short side; we do not).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from oscar.errors import ModelError
from oscar.evaluation.backbones import AlexNetFeatures, VGG16Features, load_backbone
from oscar.evaluation.weights import find_weight, load_into, load_state_dict, missing_message

log = logging.getLogger(__name__)

PerceptualName = Literal["lpips_alex", "lpips_vgg", "dists"]
PERCEPTUAL_NAMES: tuple[str, ...] = ("lpips_alex", "lpips_vgg", "dists")
_LABELS = {"lpips_alex": "LPIPS-Alex", "lpips_vgg": "LPIPS-VGG", "dists": "DISTS"}
# weight files each metric needs (keys of oscar.evaluation.weights.WEIGHT_FILES)
REQUIRED_WEIGHTS: dict[str, tuple[str, str]] = {
    "lpips_alex": ("alexnet", "lpips_alex"),
    "lpips_vgg": ("vgg16", "lpips_vgg"),
    "dists": ("vgg16", "dists"),
}


class NetLinLayer(nn.Module):
    """LPIPS's 1×1 linear layer; ``model.1.weight`` as in the reference weight files."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance: ``forward(x, y)`` with x, y (B, 3, H, W) in [-1, 1] → (B,).

    State dict keys: ``net.features.*`` (torchvision backbone) and ``lin{0..4}.model.1.weight``
    (the reference LPIPS linear layers).
    """

    def __init__(self, net: Literal["alex", "vgg"]) -> None:
        super().__init__()
        self.net = AlexNetFeatures() if net == "alex" else VGG16Features()
        for k, c in enumerate(self.net.channels):
            setattr(self, f"lin{k}", NetLinLayer(c))
        self.register_buffer(
            "shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0])
        for k, (a, b) in enumerate(zip(fx, fy, strict=True)):
            diff = (_unit(a) - _unit(b)) ** 2
            total = total + getattr(self, f"lin{k}")(diff).mean(dim=(1, 2, 3))
        return total


def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt((x**2).sum(dim=1, keepdim=True)) + eps)


class DISTS(nn.Module):
    """DISTS distance: ``forward(x, y)`` with x, y (B, 3, H, W) in [-1, 1] → (B,).

    State dict keys: ``net.features.*`` (torchvision VGG16) plus ``alpha`` and ``beta``
    (1, 1475, 1, 1) from the reference ``weights.pt``.
    """

    chns = (3, 64, 128, 256, 512, 512)

    def __init__(self) -> None:
        super().__init__()
        self.net = VGG16Features(pool="l2")
        self.alpha = nn.Parameter(torch.full((1, sum(self.chns), 1, 1), 0.1))
        self.beta = nn.Parameter(torch.full((1, sum(self.chns), 1, 1), 0.1))
        self.register_buffer(
            "mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False
        )

    def _features(self, x01: torch.Tensor) -> list[torch.Tensor]:
        return [x01, *self.net((x01 - self.mean) / self.std)]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self._features((x + 1) / 2)
        fy = self._features((y + 1) / 2)
        c1 = c2 = 1e-6
        w_sum = self.alpha.sum() + self.beta.sum()
        alpha = torch.split(self.alpha / w_sum, list(self.chns), dim=1)
        beta = torch.split(self.beta / w_sum, list(self.chns), dim=1)
        dist1 = dist2 = x.new_zeros(x.shape[0], 1, 1, 1)
        for k in range(len(self.chns)):
            mx = fx[k].mean([2, 3], keepdim=True)
            my = fy[k].mean([2, 3], keepdim=True)
            s1 = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
            dist1 = dist1 + (alpha[k] * s1).sum(1, keepdim=True)
            vx = ((fx[k] - mx) ** 2).mean([2, 3], keepdim=True)
            vy = ((fy[k] - my) ** 2).mean([2, 3], keepdim=True)
            cov = (fx[k] * fy[k]).mean([2, 3], keepdim=True) - mx * my
            s2 = (2 * cov + c2) / (vx + vy + c2)
            dist2 = dist2 + (beta[k] * s2).sum(1, keepdim=True)
        return 1 - (dist1 + dist2).flatten()


def build_perceptual(name: str) -> nn.Module:
    """The network for ``name`` with untrained weights; see :func:`load_perceptual`."""
    if name == "lpips_alex":
        return LPIPS("alex")
    if name == "lpips_vgg":
        return LPIPS("vgg")
    if name == "dists":
        return DISTS()
    raise ValueError(f"unknown perceptual metric {name!r}; use one of {PERCEPTUAL_NAMES}")


def unavailable_reason(name: str, weights_dir: str | Path | None = None) -> str | None:
    """Why ``load_perceptual(name, weights_dir)`` would return None (one line), or None if not."""
    missing = [k for k in REQUIRED_WEIGHTS[name] if find_weight(k, weights_dir) is None]
    if not missing:
        return None
    return missing_message(_LABELS[name], missing, weights_dir)


def load_perceptual(name: str, weights_dir: str | Path | None = None) -> nn.Module | None:
    """LPIPS-Alex, LPIPS-VGG or DISTS with pretrained weights from local files, or None.

    Returns None when a weight file is missing (:func:`unavailable_reason` says which); raises
    :class:`oscar.errors.ModelError` when a file exists but does not fit. The module is in eval
    mode on the CPU with ``requires_grad=False`` on every parameter.
    """
    if name not in PERCEPTUAL_NAMES:
        raise ValueError(f"unknown perceptual metric {name!r}; use one of {PERCEPTUAL_NAMES}")
    if unavailable_reason(name, weights_dir) is not None:
        return None
    backbone_key, head_key = REQUIRED_WEIGHTS[name]
    backbone_path = find_weight(backbone_key, weights_dir)
    head_path = find_weight(head_key, weights_dir)
    assert backbone_path is not None and head_path is not None
    module = build_perceptual(name)
    load_backbone(module.net, backbone_path)
    head = load_state_dict(head_path)
    if name == "dists":
        load_into_params(module, head, ("alpha", "beta"), head_path)
    else:
        lins = nn.ModuleDict({f"lin{k}": getattr(module, f"lin{k}") for k in range(5)})
        load_into(lins, head, head_path)
    log.info("%s: backbone %s, head %s", name, backbone_path, head_path)
    module.eval()
    module.requires_grad_(False)
    return module


def load_into_params(
    module: nn.Module, state: dict[str, torch.Tensor], names: tuple[str, ...], path: Path
) -> None:
    """Copy named top-level parameters (DISTS's alpha, beta) from a state dict, shapes checked."""

    for name in names:
        if name not in state:
            raise ModelError(f"{path}: no tensor named {name!r}")
        param = getattr(module, name)
        if tuple(state[name].shape) != tuple(param.shape):
            shape = tuple(state[name].shape)
            raise ModelError(f"{path}: {name} has shape {shape}, expected {tuple(param.shape)}")
        with torch.no_grad():
            param.copy_(state[name])
