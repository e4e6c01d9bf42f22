"""Stage 0, for models trained from scratch (docs/method.md §5): the latent autoencoder, then the
diffusion UNet as an ordinary latent diffusion model on that autoencoder's latents.

VAE stage losses: ``l1``·L1 + ``perceptual``·P + ``kl``·KL + ``adversarial``·hinge (PatchGAN,
from step ``adversarial_start``). At the end the latent scaling factor is set to 1/std of the
posterior means over training crops, so scaled latents have unit variance (as SD's 0.18215 does).

Diffusion stage: MSE between the UNet output and the target of the scheduler's prediction type,
t uniform in [0, T), conditioned on the learned prompt embedding (trained with the UNet).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from oscar.training.discriminators import PatchDiscriminator
from oscar.training.loop import backward_and_step, make_optimized
from oscar.training.losses import hinge_d_loss, hinge_g_loss, kl_loss, l1, make_perceptual, value
from oscar.training.stage_base import Stage

log = logging.getLogger(__name__)


class _VAEForward(nn.Module):
    """x → (x_hat, KL) with a posterior sample drawn from ``generator``."""

    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        posterior = self.vae.encode(x).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(x.device, x.dtype)
        z = posterior.mean + posterior.std * noise
        return self.vae.decode(z).sample, kl_loss(posterior)


class VAEStage(Stage):
    def setup(self) -> None:
        sc = self.stage
        self.model.requires_grad_(False)
        self.model.vae.requires_grad_(True)
        self.model.vae.train()
        if self.ctx.config.gradient_checkpointing:
            self.model.vae.enable_gradient_checkpointing()
        self.gen = make_optimized(self.ctx, "vae", _VAEForward(self.model.vae), sc.lr, sc.steps)
        self.perceptual, self.perceptual_name = make_perceptual(
            sc.loss.perceptual_kind, sc.loss.perceptual_fallback, self.ctx.config.weights_dir
        )
        self.disc = None
        if sc.loss.adversarial > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.ctx.config.seed + 1)
                d = PatchDiscriminator()
            self.disc = make_optimized(self.ctx, "discriminator", d, sc.discriminator_lr, sc.steps)

    def train_step(self, step: int) -> dict[str, float]:
        loss_cfg = self.stage.loss
        adversarial = self.disc is not None and step >= loss_cfg.adversarial_start
        logs: dict[str, float] = {}
        losses, last = [], None
        for i, x in enumerate(self.micro_batches()):
            with self.autocast():
                x_hat, kl = self.gen.module(x, self.ctx.generator(step, 10 + i))
                rec = l1(x_hat, x)
                perc = self.perceptual(x_hat, x)
                loss = loss_cfg.l1 * rec + loss_cfg.perceptual * perc + loss_cfg.kl * kl
                if adversarial:
                    d = self.unwrap(self.disc.module)  # no DDP sync: D's grads are cleared below
                    g_adv = hinge_g_loss(d(x_hat))
                    loss = loss + loss_cfg.adversarial * g_adv
                    logs["loss/g_adv"] = value(g_adv)
            losses.append(loss)
            last = (x, x_hat)
            logs.update(
                {
                    "loss/l1": value(rec),
                    f"loss/{self.perceptual_name}": value(perc),
                    "loss/kl": value(kl),
                    "loss/total": value(loss),
                }
            )
        backward_and_step(self.ctx, self.gen, losses)
        if adversarial:
            x, x_hat = last
            with self.autocast():
                logits = self.disc.module(torch.cat([x, x_hat.detach()]))
                real, fake = logits.chunk(2)
                d_loss = hinge_d_loss(real, fake)
            backward_and_step(self.ctx, self.disc, [d_loss])
            logs["loss/d"] = value(d_loss)
        return logs

    def validate(self, step: int) -> dict[str, float]:
        return autoencoder_psnr(self, step)

    @torch.no_grad()
    def finish(self):
        """Set the latent scaling factor so that scaled latents have unit variance."""
        vae = self.model.vae
        vae.eval()
        # Crops the training never used, the same on every process so all agree on the factor.
        self.start_data(10**6, shard=False)
        means = [vae.encode(x).latent_dist.mean for _ in range(8) for x in self.micro_batches()]
        std = float(torch.cat([m.flatten() for m in means]).float().std())
        factor = 1.0 / max(std, 1e-6)
        vae.register_to_config(scaling_factor=factor)
        self.model.config = replace(self.model.config, vae=dict(vae.config))
        log.info("latent std %.4f: scaling_factor set to %.5f", std, factor)
        return self.model


@torch.no_grad()
def autoencoder_psnr(stage: Stage, step: int) -> dict[str, float]:
    """Mean PSNR of the autoencoder's own reconstruction of the held-out images (logged)."""
    if not stage.validation_images or not stage.ctx.is_main:
        return {}
    from oscar.evaluation.metrics import psnr
    from oscar.io import crop, image_to_tensor, load_image, pad, tensor_to_image

    vae = stage.model.vae
    was_training = vae.training
    vae.eval()
    values = []
    for path in stage.validation_images:
        rgb = load_image(path).rgb
        x = image_to_tensor(rgb).to(stage.ctx.device)
        x_hat = vae.decode(vae.encode(pad(x, 8)).latent_dist.mean).sample.clamp(-1, 1)
        values.append(psnr(rgb, tensor_to_image(crop(x_hat, *rgb.shape[:2]))))
    vae.train(was_training)
    metrics = {"val/vae_psnr": sum(values) / len(values)}
    stage.log_validation(metrics, step)
    return metrics


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
