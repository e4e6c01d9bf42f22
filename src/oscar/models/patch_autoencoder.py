"""A latent autoencoder that starts at the block-PCA floor and learns what a linear code misses.

::

    x (B,3,H,W) ─unshuffle 8─► blocks (B,192,H/8,W/8) ─┬─ PCA projection (1×1) ────┐
                                                       └─ residual branch (zero init)─┴─► ·s ─► y
    y ─/s─► u (B,C,H/8,W/8) ─┬─ PCA reconstruction (1×1) ───────────────┐
                             └─ latent residual branch (zero init) ─────┴─► + ─shuffle 8─► x_lin
    x_lin ─unshuffle 2─► pixel residual branch at H/2 (zero init) ─shuffle 2─► + x_lin ─► x_hat

An 8×8 block of RGB pixels is 192 numbers; the best linear code of it with C numbers is its
first C principal components (block PCA). Its projection and reconstruction are the 1×1
convolutions ``encoder.project`` and ``decoder.reconstruct``, initialised from a PCA of training
blocks (:func:`fit_block_pca`, :meth:`PatchAutoencoder.init_from_pca`). The non-linear branches
end in zero-initialised convolutions, so an untrained model *is* the block-PCA codec and training
only has to improve on it: the linear floor is reached at step 0 (a random-init autoencoder spends
its first thousands of steps getting there). The pixel branch works at half resolution
(depth-to-space by 2) across block edges, where a block code leaves seams.

``s`` (``latent_scale``, one number per channel) gives every latent channel unit variance over
the training data, as a diffusion prior wants; PCA coefficients otherwise span orders of
magnitude. ``scaling_factor`` stays 1 so the rest of the model treats ``y`` as already scaled.

No normalisation layers: a tile decodes like the whole image away from its border (tiling,
oscar.runtime.tiling), and nothing depends on batch or image statistics.

It has the interface of diffusers' ``AutoencoderKL`` that OSCAR uses: ``encode(x).latent_dist``
(deterministic: ``mean`` is the latent, ``std`` zero, KL zero) and ``decode(y).sample``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class ResidualBlock(nn.Module):
    """x + conv3x3(SiLU(conv3x3(SiLU(x)))), no normalisation (see the module doc)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


def _branch(c_in: int, width: int, blocks: int, c_out: int) -> nn.Sequential:
    """conv3x3 → residual blocks → SiLU → zero-initialised 1×1 out (the branch starts at 0)."""
    out = nn.Conv2d(width, c_out, 1)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    layers = [nn.Conv2d(c_in, width, 3, padding=1)]
    layers += [ResidualBlock(width) for _ in range(blocks)]
    layers += [nn.SiLU(), out]
    return nn.Sequential(*layers)


class PatchEncoder(nn.Module):
    def __init__(self, block_values: int, latent_channels: int, width: int, blocks: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(block_values, latent_channels, 1)
        self.residual = _branch(block_values, width, blocks, latent_channels)

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        return self.project(blocks) + self.residual(blocks)


class PatchDecoder(nn.Module):
    def __init__(
        self,
        latent_channels: int,
        block_values: int,
        patch_size: int,
        width: int,
        blocks: int,
        pixel_width: int,
        pixel_blocks: int,
        out_channels: int,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.reconstruct = nn.Conv2d(latent_channels, block_values, 1)
        self.residual = _branch(latent_channels, width, blocks, block_values)
        self.pixel = (
            _branch(out_channels * 4, pixel_width, pixel_blocks, out_channels * 4)
            if pixel_blocks > 0
            else None
        )

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x = F.pixel_shuffle(self.reconstruct(u) + self.residual(u), self.patch_size)
        if self.pixel is not None:
            x = x + F.pixel_shuffle(self.pixel(F.pixel_unshuffle(x, 2)), 2)
        return x


class PatchAutoencoder(ModelMixin, ConfigMixin):
    """Block-PCA autoencoder with zero-initialised non-linear residual branches (module doc).

    Config: ``latent_channels`` C, ``patch_size`` (8: the latent is H/8 × W/8, as the UNet and
    the rate table assume), the encoder branch's width and residual blocks, the decoder's latent
    branch and its half-resolution pixel branch (``decoder_pixel_blocks`` 0 leaves it out).
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        latent_channels: int = 16,
        patch_size: int = 8,
        encoder_width: int = 64,
        encoder_blocks: int = 2,
        decoder_width: int = 96,
        decoder_blocks: int = 3,
        decoder_pixel_width: int = 32,
        decoder_pixel_blocks: int = 1,
        scaling_factor: float = 1.0,
    ) -> None:
        super().__init__()
        if in_channels != out_channels:
            raise ValueError("in_channels and out_channels must agree (the PCA is shared)")
        values = in_channels * patch_size * patch_size
        if not 1 <= latent_channels <= values:
            raise ValueError(f"latent_channels must be in 1..{values}, got {latent_channels}")
        self.encoder = PatchEncoder(values, latent_channels, encoder_width, encoder_blocks)
        self.decoder = PatchDecoder(
            latent_channels,
            values,
            patch_size,
            decoder_width,
            decoder_blocks,
            decoder_pixel_width,
            decoder_pixel_blocks,
            out_channels,
        )
        self.register_buffer("latent_scale", torch.ones(latent_channels))
        # AutoencoderKL's 1×1 convolutions around the latent, which code that handles both
        # classes looks for; here the projections themselves are the 1×1 convolutions.
        self.quant_conv = self.post_quant_conv = None

    def channel_scale(self, like: torch.Tensor) -> torch.Tensor:
        """``latent_scale`` shaped (1, C, 1, 1) in ``like``'s dtype: latent = unscaled · this."""
        return self.latent_scale.to(like.dtype)[None, :, None, None]

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """x (B,3,H,W) in [-1,1], sides divisible by patch_size → latent (B,C,H/8,W/8)."""
        blocks = F.pixel_unshuffle(x, self.config.patch_size)
        y = self.encoder(blocks) * self.channel_scale(blocks)
        # A deterministic "posterior": mean = y, std = 0, KL = 0 (diffusers' own class).
        posterior = DiagonalGaussianDistribution(torch.cat([y, torch.zeros_like(y)], 1), True)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, y: torch.Tensor, return_dict: bool = True):
        """Latent (B,C,h,w) → image (B,3,8h,8w), unclamped."""
        x = self.decoder(y / self.channel_scale(y))
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x).latent_dist.mean).sample

    @torch.no_grad()
    def init_from_pca(self, pca: BlockPCA) -> None:
        """Set the linear path to ``pca`` (its first C components) and the latent scale to
        1/std of each component, so the untrained model is the block-PCA codec."""
        c = self.config.latent_channels
        components = pca.components[:c].to(self.encoder.project.weight)  # (C, 192)
        mean = pca.mean.to(components)
        self.encoder.project.weight.copy_(components[:, :, None, None])
        self.encoder.project.bias.copy_(-(components @ mean))
        self.decoder.reconstruct.weight.copy_(components.t()[:, :, None, None])
        self.decoder.reconstruct.bias.copy_(mean)
        self.latent_scale.copy_(pca.variances[:c].clamp_min(1e-12).rsqrt().to(self.latent_scale))


class BlockPCA:
    """Principal components of flattened p×p RGB blocks (``pixel_unshuffle`` order).

    ``components`` (192, 192) rows sorted by decreasing variance, ``mean`` (192,), ``variances``
    (192,), all float32 on CPU. Fitted in float64.
    """

    def __init__(
        self, components: torch.Tensor, mean: torch.Tensor, variances: torch.Tensor, patch: int
    ) -> None:
        self.components, self.mean, self.variances, self.patch = components, mean, variances, patch

    def reconstruct(self, x: torch.Tensor, channels: int) -> torch.Tensor:
        """x (B,3,H,W), sides divisible by the patch → its C-component block-PCA code decoded:
        the linear floor an autoencoder of latent width C should beat."""
        blocks = F.pixel_unshuffle(x.float(), self.patch)
        comps = self.components[:channels].to(blocks)
        mean = self.mean.to(blocks)[None, :, None, None]
        coeffs = torch.einsum("kv,bvhw->bkhw", comps, blocks - mean)
        return F.pixel_shuffle(torch.einsum("kv,bkhw->bvhw", comps, coeffs) + mean, self.patch)


def fit_block_pca(images: list[torch.Tensor], patch: int = 8) -> BlockPCA:
    """Block PCA of images (each (B,3,H,W) in [-1,1], sides divisible by ``patch``)."""
    total, outer, count = None, None, 0
    for x in images:
        blocks = F.pixel_unshuffle(x.double(), patch)  # (B, V, h, w)
        flat = blocks.permute(0, 2, 3, 1).reshape(-1, blocks.shape[1])
        total = flat.sum(0) if total is None else total + flat.sum(0)
        gram = flat.t() @ flat
        outer = gram if outer is None else outer + gram
        count += flat.shape[0]
    if count < 2:
        raise ValueError("block PCA needs at least two blocks")
    mean = total / count
    covariance = outer / count - torch.outer(mean, mean)
    variances, vectors = torch.linalg.eigh(covariance)  # ascending
    order = torch.argsort(variances, descending=True)
    components = vectors[:, order].t()
    # A fixed sign per component (largest entry positive), so a refit gives the same latents.
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    components = components * signs
    return BlockPCA(components.float(), mean.float(), variances[order].clamp_min(0).float(), patch)
