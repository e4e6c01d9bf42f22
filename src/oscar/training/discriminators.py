"""Discriminators: a PatchGAN on images (stage 0 VAE) and one on diffusion-UNet features of
noised latents (stage 2, docs/method.md §5).

The stage-2 discriminator runs a *frozen* copy of the diffusion UNet's encoder path (conv_in,
down blocks, mid block) on z_t = √ᾱ·y + √(1−ᾱ)·ε for a random t, and small trainable heads turn
each scale's features into patch logits. The frozen copy's parameters take no gradient, but the
computation is kept in the graph (no ``torch.no_grad``): the generator's gradient flows through
it into y_hat. The original release computed these features under no-grad, so its adversarial
term never reached the generator (docs/method.md §6.5).
"""

from __future__ import annotations

import copy

import torch
from diffusers import UNet2DConditionModel
from torch import nn


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): (B, 3, H, W) image → (B, 1, H/8, W/8) logits."""

    def __init__(self, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers):
            c_next = min(channels * 2**i, channels * 8)
            mods += [nn.Conv2d(c, c_next, 4, 2, 1), nn.GroupNorm(8, c_next), nn.LeakyReLU(0.2)]
            c = c_next
        mods += [
            nn.Conv2d(c, c, 3, 1, 1),
            nn.GroupNorm(8, c),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c, 1, 3, 1, 1),
        ]
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class UNetFeatureDiscriminator(nn.Module):
    """Patch logits from frozen diffusion-UNet encoder features of noised latents."""

    def __init__(self, unet: UNet2DConditionModel, max_timestep: int = 500) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(unet)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        # Drop what the encoder path never uses, to save memory.
        self.backbone.up_blocks = nn.ModuleList()
        self.backbone.conv_norm_out = None
        self.backbone.conv_out = nn.Identity()
        self.max_timestep = max_timestep
        channels = [b.resnets[-1].out_channels for b in self.backbone.down_blocks]
        channels.append(self.backbone.mid_block.resnets[-1].out_channels)
        self.heads = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, c // 2, 3, padding=1),
                nn.GroupNorm(min(8, c // 2), c // 2),
                nn.SiLU(),
                nn.Conv2d(c // 2, 1, 1),
            )
            for c in channels
        )

    def train(self, mode: bool = True) -> UNetFeatureDiscriminator:
        super().train(mode)
        self.backbone.eval()  # the frozen copy never switches to training behaviour
        return self

    def features(
        self, z_t: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor
    ) -> list[torch.Tensor]:
        unet = self.backbone
        emb = unet.time_embedding(unet.time_proj(timesteps).to(z_t.dtype))
        h = unet.conv_in(z_t)
        out = []
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=context)
            else:
                h, _ = block(hidden_states=h, temb=emb)
            out.append(h)
        out.append(unet.mid_block(h, emb, encoder_hidden_states=context))
        return out

    def forward(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        alphas_cumprod: torch.Tensor,
        context: torch.Tensor,
    ) -> torch.Tensor:
        """Logits (B, N) for latents noised with ``noise`` at ``timesteps`` (B,)."""
        ab = alphas_cumprod.to(latents.device)[timesteps].to(latents.dtype).view(-1, 1, 1, 1)
        z_t = ab.sqrt() * latents + (1 - ab).sqrt() * noise
        feats = self.features(z_t, timesteps, context)
        return torch.cat(
            [head(f).flatten(1) for head, f in zip(self.heads, feats, strict=True)], dim=1
        )
