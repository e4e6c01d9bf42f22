"""The ``vae`` stage, for models trained from scratch (docs/method.md §5): the latent autoencoder.

Losses: ``l1``·L1 + ``mse``·MSE + ``lowpass``·L1 of 8×8 block means + ``perceptual``·P
+ ``kl``·KL + ``adversarial``·hinge (PatchGAN, from step ``adversarial_start``); a weight of 0
skips its term. At the end the latent scaling factor is set to 1/std of the posterior means over
training crops, so scaled latents have unit variance (as SD's 0.18215 does); a PatchAutoencoder
gets one factor per channel instead, or with ``latent_scale: global`` one factor for all its
channels, so each keeps its share of the pixel energy. With ``pca_init`` a PatchAutoencoder
starts at the block PCA of training crops (oscar.models.patch_autoencoder).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from oscar.errors import ConfigError
from oscar.evaluation.metrics import psnr
from oscar.io import crop, image_to_tensor, load_image, pad, tensor_to_image
from oscar.models.patch_autoencoder import PatchAutoencoder, fit_block_pca
from oscar.training.discriminators import PatchDiscriminator
from oscar.training.loop import backward_and_step, make_optimized
from oscar.training.losses import hinge_d_loss, hinge_g_loss, kl_loss, l1, make_perceptual, value
from oscar.training.stages.base import Stage

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


PCA_INIT_BATCHES = 64  # training crops for the block PCA: 64 batches (64 × 8 × 256 blocks at 128²)


class VAEStage(Stage):
    def setup(self) -> None:
        sc = self.stage
        vae = self.model.vae
        if sc.pca_init:
            if not isinstance(vae, PatchAutoencoder):
                raise ConfigError("pca_init needs a PatchAutoencoder (vae._class_name)")
            self._init_from_pca(vae)
        self.model.requires_grad_(False)
        self.model.vae.requires_grad_(True)
        self.model.vae.train()
        if self.ctx.config.gradient_checkpointing:
            self.model.vae.enable_gradient_checkpointing()
        self.gen = make_optimized(self.ctx, "vae", _VAEForward(self.model.vae), sc.lr, sc.steps)
        self.perceptual = None
        if sc.loss.perceptual > 0:
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
                loss = loss_cfg.l1 * rec + loss_cfg.kl * kl
                if self.perceptual is not None:
                    perc = self.perceptual(x_hat, x)
                    loss = loss + loss_cfg.perceptual * perc
                    logs[f"loss/{self.perceptual_name}"] = value(perc)
                if loss_cfg.mse > 0:
                    mse = F.mse_loss(x_hat, x)
                    loss = loss + loss_cfg.mse * mse
                    logs["loss/mse"] = value(mse)
                if loss_cfg.lowpass > 0:
                    low = l1(F.avg_pool2d(x_hat, 8), F.avg_pool2d(x, 8))
                    loss = loss + loss_cfg.lowpass * low
                    logs["loss/lowpass"] = value(low)
                if adversarial:
                    d = self.unwrap(self.disc.module)  # no DDP sync: D's grads are cleared below
                    g_adv = hinge_g_loss(d(x_hat))
                    loss = loss + loss_cfg.adversarial * g_adv
                    logs["loss/g_adv"] = value(g_adv)
            losses.append(loss)
            last = (x, x_hat)
            logs.update({"loss/l1": value(rec), "loss/kl": value(kl), "loss/total": value(loss)})
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

    @torch.no_grad()
    def _init_from_pca(self, vae: PatchAutoencoder) -> None:
        """Fit the block PCA on training crops (the same on every process) and start there."""
        self.start_data(2 * 10**6, shard=False)
        crops = [x.cpu() for _ in range(PCA_INIT_BATCHES) for x in self.micro_batches()]
        pca = fit_block_pca(crops, vae.config.patch_size)
        vae.init_from_pca(pca)
        c = vae.config.latent_channels
        kept = float(pca.variances[:c].sum() / pca.variances.sum())
        log.info(
            "block PCA of %d crops: %d components keep %.2f%% of the variance",
            len(crops) * crops[0].shape[0],
            c,
            100 * kept,
        )

    def validate(self, step: int) -> dict[str, float]:
        return autoencoder_psnr(self, step)

    @torch.no_grad()
    def finish(self):
        """Set the latent scaling so that scaled latents have unit variance."""
        vae = self.model.vae
        vae.eval()
        # Crops the training never used, the same on every process so all agree on the factor.
        self.start_data(10**6, shard=False)
        means = [vae.encode(x).latent_dist.mean for _ in range(8) for x in self.micro_batches()]
        if isinstance(vae, PatchAutoencoder):
            # Per channel, on the unscaled latents (the current factors divided out).
            unscaled = torch.cat(means).float() / vae.channel_scale(means[0]).float()
            std = unscaled.transpose(0, 1).flatten(1).std(dim=1).clamp_min(1e-6)
            if self.stage.latent_scale == "global":
                # One factor: unit variance over all channels, each keeping its energy.
                std = std.square().mean().sqrt().expand_as(std)
            vae.latent_scale.copy_(std.reciprocal().to(vae.latent_scale))
            log.info(
                "latent std per channel %s: latent_scale refitted (%s)",
                [round(float(v), 3) for v in std],
                self.stage.latent_scale,
            )
            return self.model
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
