"""Loss terms of the training stages (docs/method.md §5).

Images are (B, 3, H, W) in [-1, 1]; latents (B, 4, h, w). Every function returns a scalar mean
unless it says otherwise. The ``paper_*`` functions and the ``channel``/``position`` cosines are
the original release's forms, used by the ``paper`` loss preset (docs/method.md §6.2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

PerceptualFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def global_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine between a and b flattened per sample (all channels and positions): (B,).

    This is the cosine of docs/method.md §4: for z = √ᾱ·y + √(1−ᾱ)·ε with unit-variance y and ε its
    expectation is √ᾱ. Calibration measures the same quantity.
    """
    return F.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=1, eps=1e-8)


def cosine_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − cos(a, b), averaged over the batch (stage 1's −cos up to a constant)."""
    return (1.0 - global_cosine(a, b)).mean()


def channel_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine between a and b per sample and channel, over positions: (B, C). The original's
    stage-2 latent term (its ``normalize(latents.flatten(2), dim=-1)``)."""
    a = F.normalize(a.flatten(2).float(), dim=-1)
    b = F.normalize(b.flatten(2).float(), dim=-1)
    return (a * b).sum(-1)


def position_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine between a and b per sample and position, over channels: (B, h·w). The original's
    stage-1 term (latents flattened to (B, h·w, C), normalised over C)."""
    a = F.normalize(a.flatten(2).transpose(1, 2).float(), dim=-1)
    b = F.normalize(b.flatten(2).transpose(1, 2).float(), dim=-1)
    return (a * b).sum(-1)


def alignment_loss(form: str, y_tilde: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 − the mean cosine of ``form``: ``global`` (ours, whole latent), ``channel`` (the
    original's stage 2) or ``position`` (the original's stage 1). The original minimises −cos;
    the constant 1 changes no gradient and keeps the logged value ≥ 0."""
    if form == "global":
        return cosine_loss(y_tilde, y)
    if form == "channel":
        return 1.0 - channel_cosine(y_tilde, y).mean()
    if form == "position":
        return 1.0 - position_cosine(y_tilde, y).mean()
    raise ValueError(f"unknown cosine form {form!r}")


def energy_space(vae, y: torch.Tensor) -> torch.Tensor:
    """``y`` divided by the autoencoder's per-channel latent scale, if it has one: there, each
    channel weighs as much as it moves the pixels (for the block-PCA autoencoder, about its share
    of the image's energy). A global scale leaves every cosine unchanged, so other autoencoders
    return ``y`` as it is."""
    channel_scale = getattr(vae, "channel_scale", None)
    return y if channel_scale is None else y / channel_scale(y)


def sobel_edges(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude per channel, (B, C, H, W), zero-padded borders."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
    kernel = torch.stack([kx, kx.t()]).unsqueeze(1).to(x.dtype)  # (2, 1, 3, 3)
    b, c, h, w = x.shape
    g = F.conv2d(x.reshape(b * c, 1, h, w), kernel, padding=1)
    return g.square().sum(dim=1).add(1e-12).sqrt().reshape(b, c, h, w)


def _ms_ssim_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 − MS-SSIM on [0, 1] images; the window shrinks for small patches (5 scales need
    side > 16·(window − 1)); below 64 px single-scale SSIM is used."""
    from pytorch_msssim import ms_ssim, ssim  # lazy: optional, only this loss needs it

    a = ((x_hat.float() + 1) / 2).clamp(0, 1)
    b = ((x.float() + 1) / 2).clamp(0, 1)
    side = min(a.shape[-2:])
    for win in (11, 9, 7, 5, 3):
        if side > 16 * (win - 1):
            return 1 - ms_ssim(a, b, data_range=1.0, win_size=win)
    return 1 - ssim(a, b, data_range=1.0, win_size=min(11, side - (1 - side % 2)))


def make_perceptual(kind: str, fallback: str, weights_dir: str | None) -> tuple[PerceptualFn, str]:
    """The perceptual distance to train with, and the name of the one actually used.

    LPIPS and DISTS need pretrained backbone weights from local files
    (oscar.evaluation.perceptual); when those are missing the ``fallback`` runs, and the log
    says so.
    """
    if kind in ("lpips_vgg", "lpips_alex", "dists"):
        module, reason = None, "oscar.evaluation is not available"
        try:
            # lazy and guarded: without the evaluation modules the fallback loss runs
            from oscar.evaluation.perceptual import load_perceptual, unavailable_reason

            module = load_perceptual(kind, weights_dir)
            reason = "" if module is not None else unavailable_reason(kind, weights_dir)
        except ImportError:
            pass
        if module is not None:
            module.requires_grad_(False).eval()
            log.info("perceptual loss: %s", kind)
            return (lambda a, b: module(a, b).mean()), kind
        log.warning("perceptual loss %s unavailable (%s); using %s", kind, reason, fallback)
        if fallback in ("lpips_vgg", "lpips_alex", "dists"):
            return make_perceptual(fallback, "none", weights_dir)
        kind = fallback
    if kind == "ms_ssim":
        log.info("perceptual loss: ms_ssim")
        return _ms_ssim_loss, "ms_ssim"
    if kind == "none":
        return (lambda a, b: a.new_zeros(())), "none"
    raise ValueError(f"unknown perceptual loss {kind!r}")


def edge_perceptual(perceptual: PerceptualFn, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The perceptual distance between Sobel edge maps, mapped to about [-1, 1]."""
    scale = 1.0 / 4.0  # Sobel magnitude of a [-1, 1] image lies in [0, ~8]
    ex = (sobel_edges(x) * scale).clamp(0, 2) - 1
    ey = (sobel_edges(x_hat) * scale).clamp(0, 2) - 1
    return perceptual(ey, ex)


# torchvision's Grayscale (ITU-R 601-2 luma), which the original's edge loss calls.
GREY_WEIGHTS = (0.2989, 0.587, 0.114)


def paper_sobel_magnitude(x01: torch.Tensor) -> torch.Tensor:
    """The original's edge map: grey (B, 1, H, W) Sobel gradient magnitude √(g_x² + g_y² + 1e-6)
    of a [0, 1] image (B, 3, H, W), zero-padded borders."""
    w = torch.tensor(GREY_WEIGHTS, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
    grey = (x01 * w).sum(dim=1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x01.device)
    kernel = torch.stack([kx, kx.t()]).unsqueeze(1).to(x01.dtype)  # (2, 1, 3, 3): g_x, g_y
    g = F.conv2d(grey, kernel, padding=1)
    return (g.square().sum(dim=1, keepdim=True) + 1e-6).sqrt()


def paper_edge_perceptual(
    perceptual: PerceptualFn, x_hat: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """The original's edge term: the perceptual distance between the grey Sobel-magnitude maps
    of the [0, 1] images. The maps are given to ``perceptual`` (which takes [-1, 1] RGB) as
    2·map − 1 on three equal channels: DISTS then sees the map itself as its [0, 1] input, as
    the original's DISTS does (a one-channel input broadcasts to the same values)."""

    def as_input(img: torch.Tensor) -> torch.Tensor:
        return (paper_sobel_magnitude((img + 1) / 2) * 2 - 1).expand(-1, 3, -1, -1)

    return perceptual(as_input(x_hat), as_input(x))


def paper_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 on [0, 1] images (the original's): half our [-1, 1] L1."""
    return ((a - b) / 2).abs().mean()


def softplus_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss softplus(−D(fake)), the original's."""
    return F.softplus(-fake_logits).mean()


def bce_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The original's discriminator loss: (BCE(real, 1) + BCE(fake, 0)) / 2 with logits, i.e.
    (softplus(−real) + softplus(fake)) / 2."""
    return (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()) / 2


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def kl_loss(posterior) -> torch.Tensor:
    """KL of the VAE posterior to N(0, I), summed over latent elements, averaged over the batch."""
    return posterior.kl().mean()


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean()


def value(t: torch.Tensor) -> float:
    """A loss as a plain number for logging."""
    return float(t.detach())
