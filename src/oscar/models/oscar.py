"""The OSCAR model: a diffusers VAE and UNet, one hyper-coder per level, a learned prompt.

::

    x (B,3,H,W) in [-1,1] ─VAE enc (mean)·s─► y (B,4,H/8,W/8) ─g_a, VQ─► indices (B,H/f,W/f)
    indices ─codebook, g_s─► y_tilde ─rescale to sent RMS─► z_t
            ─UNet(z_t, t_L, prompt)─► y_hat (one-step x0) ─/s, VAE dec─► x_hat (B,3,H,W)

s is the VAE's ``scaling_factor``. The model never pads or crops: the codec does that
(``oscar.coding.codec``), so every tensor here has sides divisible by the level's grid factor and
by the UNet's downsampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from oscar.config import ModelConfig
from oscar.models.hyper import HyperCoder, HyperOutput
from oscar.models.norms import (
    channel_rms,
    dequantize_rms,
    quantize_rms,
    rescale_channels,
    rescale_global,
)
from oscar.models.schedule import (
    NoiseSchedule,
    ddim_step,
    ddim_timesteps,
    epsilon_estimate,
    x0_estimate,
)
from oscar.models.vae_decoder import build_vae
from oscar.rates import VAE_FACTOR, RateLevel
from oscar.runtime import stages
from oscar.runtime.tiling import Tiling, tiled_map


def vae_decode(vae, y: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Scaled latent (B,4,h,w) → the VAE's image (B,3,8h,8w), unclamped, in the VAE's dtype."""
    return vae.decode((y / scaling_factor).to(vae.dtype)).sample


@dataclass(frozen=True)
class OscarOutput:
    """Everything a training step needs from one forward pass (shapes as in the module doc)."""

    x_hat: torch.Tensor
    y: torch.Tensor
    y_tilde: torch.Tensor
    z_t: torch.Tensor
    y_hat: torch.Tensor
    indices: torch.Tensor
    commitment_loss: torch.Tensor
    codebook_loss: torch.Tensor | None = None


class OscarModel(nn.Module):
    """OSCAR's networks and the per-level maths; no I/O, no padding, no bytes."""

    def __init__(
        self,
        config: ModelConfig,
        vae: AutoencoderKL | None = None,
        unet: UNet2DConditionModel | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.vae = vae if vae is not None else build_vae(config.vae, config.vae_decoder)
        self.unet = unet if unet is not None else UNet2DConditionModel.from_config(config.unet)
        self.schedule = NoiseSchedule.from_config(config.scheduler)
        latent_channels = self.vae.config.latent_channels
        self.hyper = nn.ModuleDict(
            {str(lv.level): HyperCoder(lv, config.hyper, latent_channels) for lv in config.levels}
        )
        # The learned "prompt" (docs/method.md §1): no text, one tensor shared by every level.
        self.prompt_embedding = nn.Parameter(
            torch.randn(config.prompt_length, config.cross_attention_dim) * 0.02
        )
        # LoRA factors merged into self.unet at load time (oscar.models.lora.UnetAdapter), kept
        # so that the model can be saved again; None without LoRA or while peft wraps the UNet.
        self.unet_adapter = None

    # ------------------------------------------------------------------------ properties
    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def levels(self) -> tuple[RateLevel, ...]:
        return self.config.levels

    def rate(self, level: int) -> RateLevel:
        """The level's rate row; an unknown level is a ConfigError naming the rate table."""
        return self.config.level(level)

    def hyper_coder(self, level: int) -> HyperCoder:
        """The level's hyper-coder; callers have checked the level (an unknown one still gets
        the rate table's ConfigError, not a KeyError)."""
        key = str(level)
        if key not in self.hyper:
            self.config.level(level)  # raises
        return self.hyper[key]

    # ------------------------------------------------------------------------ stages
    def encode_latent(self, x: torch.Tensor, tiles: Tiling | None = None) -> torch.Tensor:
        """x (B,3,H,W) in [-1,1] → scaled latent y (B,4,H/8,W/8) float32: the posterior mean.

        No random draw. ``tiles`` runs the VAE encoder by blended tiles (oscar.runtime.tiling).
        """

        def encode(x: torch.Tensor) -> torch.Tensor:
            return self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean

        stage = tiles.encoder if tiles is not None else None
        return tiled_map(encode, x, stage, in_scale=VAE_FACTOR) * self.scaling_factor

    def decode_latent(self, y_hat: torch.Tensor, tiles: Tiling | None = None) -> torch.Tensor:
        """Scaled latent (B,4,h,w) → image (B,3,8h,8w) float32, clamped to [-1, 1]."""

        def decode(y: torch.Tensor) -> torch.Tensor:
            return vae_decode(self.vae, y, self.scaling_factor)

        stage = tiles.decoder if tiles is not None else None
        x_hat = tiled_map(decode, y_hat, stage, out_scale=VAE_FACTOR)
        # In place when no gradient is needed: a 4K image is 100 MB per float32 copy.
        return x_hat.clamp(-1, 1) if torch.is_grad_enabled() else x_hat.clamp_(-1, 1)

    def side_info(self, y: torch.Tensor) -> torch.Tensor:
        """The per-channel RMS codes (B, 4) uint8 that the file carries."""
        return quantize_rms(channel_rms(y))

    def to_noisy_latent(self, y_tilde: torch.Tensor, rms_codes: torch.Tensor) -> torch.Tensor:
        """Rescale y_tilde to the transmitted channel RMS: z_t, read as a noisy latent at t_L."""
        rescale = rescale_global if self.config.latent_rescale == "global" else rescale_channels
        return rescale(y_tilde, dequantize_rms(rms_codes))

    def prompt(self, batch: int) -> torch.Tensor:
        return self.prompt_embedding.unsqueeze(0).expand(batch, -1, -1)

    def unet_output(
        self, z_t: torch.Tensor, timesteps: torch.Tensor, tiles: Tiling | None = None
    ) -> torch.Tensor:
        """One UNet pass at per-sample timesteps (B,) int64; float32 out, any UNet dtype."""
        dtype = self.unet.dtype
        prompt = self.prompt(z_t.shape[0]).to(dtype)

        def run(z: torch.Tensor) -> torch.Tensor:
            return self.unet(z.to(dtype), timesteps, encoder_hidden_states=prompt).sample

        stage = tiles.unet if tiles is not None else None
        return tiled_map(run, z_t, stage, align=self.config.unet_downsample)

    def denoise(
        self, z_t: torch.Tensor, timestep: int, tiles: Tiling | None = None, *, steps: int = 1
    ) -> torch.Tensor:
        """x0 estimate y_hat (float32) from z_t at pseudo-timestep ``timestep``.

        ``steps=1`` is OSCAR's one UNet pass. ``steps=N`` runs N deterministic DDIM steps
        (η = 0, no noise drawn) at ``ddim_timesteps(timestep, N)`` and returns the last x0
        estimate (models/schedule.py); its first step is the one-step pass.
        """
        prediction_type = self.schedule.prediction_type
        timesteps = ddim_timesteps(timestep, steps)
        z = z_t.float()
        for i, t_i in enumerate(timesteps):
            if len(timesteps) > 1:
                stages.progress("step", i + 1, len(timesteps))
            t = torch.full((z.shape[0],), t_i, dtype=torch.long, device=z.device)
            out = self.unet_output(z, t, tiles)
            alpha_bar = self.schedule.alpha_bar(t_i)
            y_hat = x0_estimate(out, z, alpha_bar, prediction_type)
            if i + 1 < len(timesteps):
                epsilon = epsilon_estimate(out, z, alpha_bar, prediction_type)
                z = ddim_step(y_hat, epsilon, self.schedule.alpha_bar(timesteps[i + 1]))
        return y_hat

    # ------------------------------------------------------------------------ whole paths
    def code_latent(
        self, y: torch.Tensor, level: int
    ) -> tuple[HyperOutput, torch.Tensor, torch.Tensor]:
        """Latent y → (hyper-coder output, z_t, y_hat): the one-step codec in latent space,
        straight-through quantisation."""
        hyper = self.hyper_coder(level)(y)
        z_t = self.to_noisy_latent(hyper.y_tilde, self.side_info(y))
        return hyper, z_t, self.denoise(z_t, self.rate(level).timestep)

    def forward(self, x: torch.Tensor, level: int) -> OscarOutput:
        """Training/analysis pass with straight-through quantisation (same value as coding)."""
        y = self.encode_latent(x)
        hyper, z_t, y_hat = self.code_latent(y, level)
        x_hat = self.decode_latent(y_hat)
        return OscarOutput(
            x_hat,
            y,
            hyper.y_tilde,
            z_t,
            y_hat,
            hyper.indices,
            hyper.commitment_loss,
            hyper.codebook_loss,
        )
