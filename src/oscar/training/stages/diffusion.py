"""The ``diffusion`` stage, for models trained from scratch (docs/method.md §5): the UNet as an
ordinary latent diffusion model on the ``vae`` stage's latents.

Loss: MSE between the UNet output and the target of the scheduler's prediction type,
t uniform in [0, T), conditioned on the learned prompt embedding (trained with the UNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from oscar.training.loop import backward_and_step, make_optimized
from oscar.training.losses import value
from oscar.training.stages.base import Stage


class _Denoiser(nn.Module):
    """(z_t, t) → UNet output with the learned prompt; trains the UNet and the prompt."""

    def __init__(self, unet, prompt: nn.Parameter) -> None:
        super().__init__()
        self.unet = unet
        self.prompt = prompt

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        context = self.prompt.unsqueeze(0).expand(z_t.shape[0], -1, -1).to(z_t.dtype)
        return self.unet(z_t, t, encoder_hidden_states=context).sample


class DiffusionStage(Stage):
    def setup(self) -> None:
        sc = self.stage
        self.model.requires_grad_(False)
        self.model.vae.eval()
        self.model.unet.requires_grad_(True).train()
        self.model.prompt_embedding.requires_grad_(True)
        if self.ctx.config.gradient_checkpointing:
            self.model.unet.enable_gradient_checkpointing()
        denoiser = _Denoiser(self.model.unet, self.model.prompt_embedding)
        self.gen = make_optimized(self.ctx, "unet", denoiser, sc.lr, sc.steps)

    def train_step(self, step: int) -> dict[str, float]:
        schedule = self.model.schedule
        losses = []
        for i, x in enumerate(self.micro_batches()):
            with torch.no_grad():
                y = self.model.encode_latent(x)
            g = self.ctx.generator(step, 20 + i)
            noise = torch.randn(y.shape, generator=g).to(y.device, y.dtype)
            t = torch.randint(0, schedule.num_train_timesteps, (y.shape[0],), generator=g)
            t = t.to(y.device)
            z_t = schedule.add_noise(y, noise, t)
            with self.autocast():
                out = self.gen.module(z_t, t)
                loss = F.mse_loss(out.float(), schedule.training_target(y, noise, t).float())
            losses.append(loss)
        backward_and_step(self.ctx, self.gen, losses)
        return {"loss/diffusion": sum(value(v) for v in losses) / len(losses)}
