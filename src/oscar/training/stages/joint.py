"""The ``joint`` stage (docs/method.md §5, the paper's stage 2): hyper-coders + UNet (full
fine-tuning or LoRA) + prompt embedding, VAE frozen, one level drawn per step.

``train_unet``: ``full`` trains every UNet weight; ``lora`` only a LoRA on it (peft, as the
original; the model config's ``lora`` gives rank, alpha and target modules), which the written
model stores as ``unet_lora.*`` tensors (oscar.models.lora) and merges at load time; ``frozen``
leaves the shared denoiser alone, the UNet and the prompt embedding: only the selected levels'
hyper-coders train, so every other level decodes bit for bit as before (refining some levels of
a finished model, as configs/train_small_refine.yaml does).

Loss: ``l1``·L1(x_hat, x) + ``perceptual``·P(x_hat, x) + ``edge_perceptual``·P(Sobel(x_hat),
Sobel(x)) + ``cosine``·(1 − cos(y_tilde, y)) + ``commitment``·VQ terms + ``codebook``·codebook
term + ``adversarial``·G loss from the discriminator on frozen diffusion-UNet features of
latents noised at t in ``discriminator_timesteps`` (real y, fake y_hat; from step
``adversarial_start``). The loss preset (oscar.training.config.LossConfig) picks each term's
form: ours (hinge, RGB Sobel maps, whole-latent cosine) or the original's (``paper``: L1 on
[0, 1], grey Sobel maps, per-channel cosine, softplus / BCE). Either way the generator's
adversarial gradient reaches y_hat and through it the UNet, prompt and hyper-coders
(tests/test_training_stages.py checks it), which the original's never did (docs/method.md §6.2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from oscar.errors import ConfigError
from oscar.models.lora import add_lora, has_peft_lora, lora_parameters
from oscar.training.discriminators import UNetFeatureDiscriminator
from oscar.training.loop import backward_and_step, make_optimized
from oscar.training.losses import (
    alignment_loss,
    bce_d_loss,
    edge_perceptual,
    hinge_d_loss,
    hinge_g_loss,
    l1,
    make_perceptual,
    paper_edge_perceptual,
    paper_l1,
    softplus_g_loss,
    value,
)
from oscar.training.stages.base import Stage, resolve_levels


@dataclass(frozen=True)
class LossTerms:
    """The form of each stage-2 term under a loss preset (docs/method.md §6.2)."""

    l1: Callable
    edge: Callable
    cosine: str  # oscar.training.losses.alignment_loss form
    g_loss: Callable
    d_loss: Callable

    @classmethod
    def for_preset(cls, preset: str) -> LossTerms:
        if preset == "paper":
            return cls(paper_l1, paper_edge_perceptual, "channel", softplus_g_loss, bce_d_loss)
        return cls(l1, edge_perceptual, "global", hinge_g_loss, hinge_d_loss)


def require_perceptual(loss, used: str, weights_dir: str | None) -> None:
    """The ``paper`` preset trains with its perceptual distance or not at all: a fallback would
    no longer be the original's loss."""
    if loss.preset != "paper" or loss.perceptual == 0 or used == loss.perceptual_kind:
        return
    reason = None
    try:
        from oscar.evaluation.perceptual import unavailable_reason  # lazy, guarded: losses.py

        reason = unavailable_reason(loss.perceptual_kind, weights_dir)
    except (ImportError, KeyError):
        pass
    raise ConfigError(
        f"loss preset paper needs {loss.perceptual_kind}: {reason or 'unavailable'} "
        "(set the recipe's weights_dir, or choose perceptual_kind yourself)"
    )


class JointStage(Stage):
    def setup(self) -> None:
        sc = self.stage
        model = self.model
        self.levels = resolve_levels(model, sc.levels)
        self.check_patch_size()
        model.requires_grad_(False)
        model.vae.eval()
        for lv in self.levels:
            model.hyper[str(lv)].requires_grad_(True).train()
        if sc.train_unet != "frozen":  # the prompt conditions every level, like the UNet
            model.prompt_embedding.requires_grad_(True)
        if sc.train_unet == "full":
            model.unet.requires_grad_(True).train()
        elif sc.train_unet == "lora":
            self.setup_lora()
        if self.ctx.config.gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
        self.disc = None
        if sc.loss.adversarial > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.ctx.config.seed + 2)
                d = UNetFeatureDiscriminator(model.unet)
            d.to(self.ctx.device)
        self.gen = make_optimized(self.ctx, "generator", model, sc.lr, sc.steps)
        if sc.loss.adversarial > 0:
            self.disc = make_optimized(self.ctx, "discriminator", d, sc.discriminator_lr, sc.steps)
        self.perceptual, self.perceptual_name = make_perceptual(
            sc.loss.perceptual_kind, sc.loss.perceptual_fallback, self.ctx.config.weights_dir
        )
        require_perceptual(sc.loss, self.perceptual_name, self.ctx.config.weights_dir)
        self.terms = LossTerms.for_preset(sc.loss.preset)

    def setup_lora(self) -> None:
        """Train a LoRA on the frozen UNet (rank, alpha, targets: the model config's ``lora``).

        A model that already has one (loaded for training: peft layers holding the stored
        factors) trains it further; otherwise a new one starts as the identity (B = 0), its A
        drawn from the recipe's seed. Only the factors take gradients, so the base UNet stays
        bit-identical, and the stage's model directory stores the factors as ``unet_lora.*``
        beside the base weights (or, on Stable Diffusion 2.1, instead of them).
        """

        unet = self.model.unet
        if self.model.config.lora is None:
            raise ConfigError(
                "train_unet: lora needs `lora` settings (rank, alpha, target_modules) in the "
                "model config"
            )
        if not has_peft_lora(unet):
            g = torch.Generator().manual_seed(self.ctx.config.seed + 3)
            add_lora(unet, self.model.config.lora, generator=g)
        for p in lora_parameters(unet):
            p.requires_grad_(True)
        unet.train()

    def level_for_step(self, step: int) -> int:
        """The same level on every process: drawn from (seed, step) only."""
        rng = np.random.default_rng([self.ctx.config.seed, step, 7])
        return self.levels[int(rng.integers(len(self.levels)))]

    def disc_inputs(self, step: int, y: torch.Tensor):
        g = self.ctx.generator(step, 30)
        noise = torch.randn(y.shape, generator=g).to(y.device, y.dtype)
        low, high = self.stage.loss.discriminator_timesteps
        t = torch.randint(low, high, (y.shape[0],), generator=g).to(y.device)
        context = self.unwrap(self.gen.module).prompt(y.shape[0]).detach().to(y.dtype)
        return noise, t, context

    def adversarial_term(self, step: int, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        d = self.unwrap(self.disc.module)  # no DDP sync here: D's gradients are cleared below
        noise, t, context = self.disc_inputs(step, y)
        return self.terms.g_loss(d(y_hat, noise, t, self.model.schedule.alphas_cumprod, context))

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.stage.loss
        level = self.level_for_step(step)
        adversarial = self.disc is not None and step >= cfg.adversarial_start
        losses, logs, last = [], {"level": float(level)}, None
        for x in self.micro_batches():
            with self.autocast():
                out = self.gen.module(x, level)
                terms = self.terms
                rec, perc = terms.l1(out.x_hat, x), self.perceptual(out.x_hat, x)
                edge = terms.edge(self.perceptual, out.x_hat, x)
                weigh = self.weigh_latent
                cos = alignment_loss(terms.cosine, weigh(out.y_tilde), weigh(out.y))
                loss = (
                    cfg.l1 * rec
                    + cfg.perceptual * perc
                    + cfg.edge_perceptual * edge
                    + cfg.cosine * cos
                    + cfg.commitment * out.commitment_loss
                )
                if cfg.codebook:
                    loss = loss + cfg.codebook * out.codebook_loss
                if adversarial:
                    g_adv = self.adversarial_term(step, out.y.detach(), out.y_hat)
                    loss = loss + cfg.adversarial * g_adv
                    logs["loss/g_adv"] = value(g_adv)
            losses.append(loss)
            last = (out.y.detach(), out.y_hat.detach())
            logs.update(
                {
                    "loss/l1": value(rec),
                    f"loss/{self.perceptual_name}": value(perc),
                    "loss/edge": value(edge),
                    "cos/latent": 1 - value(cos),
                    "loss/total": value(loss),
                }
            )
        backward_and_step(self.ctx, self.gen, losses)
        if adversarial:
            y, y_hat = last
            noise, t, context = self.disc_inputs(step, y)
            with self.autocast():
                logits = self.disc.module(
                    torch.cat([y, y_hat]),
                    torch.cat([noise, noise]),
                    torch.cat([t, t]),
                    self.model.schedule.alphas_cumprod,
                    torch.cat([context, context]),
                )
                real, fake = logits.chunk(2)
                d_loss = self.stage.loss.discriminator * self.terms.d_loss(real, fake)
            backward_and_step(self.ctx, self.disc, [d_loss])
            logs["loss/d"] = value(d_loss)
        return logs

    def validate(self, step: int) -> dict[str, float]:
        return self.validate_codec(step, self.levels)
