"""The ``decoder`` stage (optional, for models trained from scratch): refine the VAE decoder alone.

The `small` recipe trains its autoencoder for a few thousand steps (minutes on two CPU cores),
after which everything else is fitted to that autoencoder's latent space. The decoder can keep
learning without moving the latent space: this stage trains only ``vae.decoder`` and
``vae.post_quant_conv``; the encoder, the hyper-coders, the UNet and the prompt stay
bit-identical, so every file's indices, the rate table and the entropy priors are unchanged.

Each step draws its latents (from the recipe's seed and the step only, the same on every
process): with probability ``clean_latent_fraction`` the encoder's latents of the crops (what
the autoencoder's own reconstruction decodes), otherwise the one-step codec's denoised latents
y_hat at one of the stage's ``levels`` (what the decoder meets when decoding files; computed
without gradients, nearest-codeword indices). Loss: ``l1``·L1(x_hat, x) + ``perceptual``·P.
The other loss weights are not read.

With ``distill`` the target is not the crop x but a teacher decoder's output for the same latent:
``true`` takes the stage's input model's decoder (a frozen copy taken before training), a model
directory takes that model's (its encoder must equal this model's: same latents), so that a later
stage can keep distilling from the first teacher. The new decoder learns the teacher's function
of the latent, which is defined for any latent, where the crops only show the colours and
textures of the training images (a small set; configs/train_small_fast_decoder.yaml).
``latent_shift`` and ``latent_log_scale`` (with ``distill`` only) widen the latents it learns
that function on: each sample's channels are shifted and scaled at random (jitter_latents)
before both decoders see them. A latent channel's offset moves the decoded colours, so this
reaches colours that neither the crops nor their recolourings encode to.

With ``vae_decoder`` the stage first gives the VAE a decoder of that architecture
(oscar.models.vae_decoder): tensors whose names and shapes match the input model's decoder
start from it, the others from diffusers' initialisation (seeded by the recipe's seed); the
saved model's config records the new architecture.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from oscar.config import VaeDecoderConfig
from oscar.errors import ConfigError
from oscar.models.oscar import vae_decode
from oscar.models.vae_decoder import replace_decoder
from oscar.store.pretrained import load_model, require_fingerprint
from oscar.training.loop import backward_and_step, make_optimized
from oscar.training.losses import l1, make_perceptual, value
from oscar.training.stages.base import Stage, resolve_levels
from oscar.training.stages.vae import autoencoder_psnr

log = logging.getLogger(__name__)


class _Teacher:
    """A frozen VAE that no one else trains, decoding as ``OscarModel.decode_latent`` does; not
    an ``nn.Module`` attribute of the trained module, so it is neither optimised nor
    checkpointed."""

    def __init__(self, vae, scaling_factor: float) -> None:
        self.vae = vae.requires_grad_(False).eval()
        self.scaling_factor = scaling_factor

    @torch.no_grad()
    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return vae_decode(self.vae, y, self.scaling_factor).clamp_(-1, 1)


def jitter_latents(
    y: torch.Tensor, shift: float, log_scale: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Per sample and channel: y·exp(log_scale·a) + shift·b·std, with a, b ~ N(0, 1) drawn
    on the CPU from ``generator`` (None: torch's global one), so every device draws the same,
    and std the channel's spatial standard deviation."""
    b, c = y.shape[:2]
    a, n = torch.randn(2, b, c, 1, 1, generator=generator).to(y)
    std = y.std(dim=(2, 3), keepdim=True)
    return y * torch.exp(log_scale * a) + shift * n * std


class _DecoderForward(nn.Module):
    """(x, level or None) → (x_hat, target): gradients reach the VAE decoder only. The target is
    x, or the teacher's decoding of the same latent."""

    def __init__(
        self,
        model,
        teacher: _Teacher | None = None,
        latent_shift: float = 0.0,
        latent_log_scale: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.teacher = teacher
        self.jitter = (latent_shift, latent_log_scale)

    def forward(
        self, x: torch.Tensor, level: int | None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        with torch.no_grad():
            y = model.encode_latent(x)
            if level is not None:
                _, _, y = model.code_latent(y, level)
            if any(self.jitter):
                y = jitter_latents(y, *self.jitter, generator)
            target = x if self.teacher is None else self.teacher(y)
        return model.decode_latent(y), target


class DecoderStage(Stage):
    def setup(self) -> None:
        sc = self.stage
        model = self.model
        self.check_patch_size()
        # Not ``levels``: recipe._still_valid drops the priors of a stage's ``levels``, and no
        # level's indices change here.
        self.latent_levels = resolve_levels(model, sc.levels)
        teacher = self.teacher(sc.distill) if sc.distill else None
        if sc.vae_decoder is not None and sc.vae_decoder != model.config.vae_decoder:
            self.new_decoder(sc.vae_decoder)
        model.requires_grad_(False)
        model.eval()
        vae = model.vae
        self.trained_parts = [p for p in (vae.decoder, vae.post_quant_conv) if p is not None]
        for part in self.trained_parts:
            part.requires_grad_(True).train()
        if self.ctx.config.gradient_checkpointing:
            vae.enable_gradient_checkpointing()
        self.gen = make_optimized(
            self.ctx,
            "decoder",
            _DecoderForward(model, teacher, sc.latent_shift, sc.latent_log_scale),
            sc.lr,
            sc.steps,
        )
        self.perceptual, self.perceptual_name = make_perceptual(
            sc.loss.perceptual_kind, sc.loss.perceptual_fallback, self.ctx.config.weights_dir
        )

    def teacher(self, distill: bool | str) -> _Teacher:
        """The stage's input model (also when resuming: setup runs on it again), or the model
        in the directory ``distill`` names, which must share this model's encoder."""
        if distill is True:  # a copy: this model's own VAE is about to be trained
            return _Teacher(copy.deepcopy(self.model.vae), self.model.scaling_factor)
        loaded = load_model(distill, device=self.ctx.device)
        require_fingerprint(
            loaded, self.stage.distill_fingerprint, "distill", "distill_fingerprint"
        )
        other = loaded.model
        own = self.model.vae.encoder.state_dict()
        theirs = other.vae.encoder.state_dict()
        same = own.keys() == theirs.keys() and all(
            own[k].shape == theirs[k].shape and torch.equal(own[k], theirs[k].to(own[k]))
            for k in own
        )
        if not same or other.scaling_factor != self.model.scaling_factor:
            raise ConfigError(f"distill: {distill} has another VAE encoder (other latents)")
        return _Teacher(other.vae, other.scaling_factor)

    def new_decoder(self, settings: VaeDecoderConfig) -> None:
        model = self.model
        if model.config.base_model is not None:
            raise ConfigError("vae_decoder: a model on a base folder keeps the base's decoder")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.ctx.config.seed)
            fresh = replace_decoder(model.vae, settings)
        model.config = replace(model.config, vae_decoder=settings)
        log.info("new VAE decoder %s; fresh tensors: %s", settings, ", ".join(fresh) or "none")

    def latent_for_step(self, step: int) -> int | None:
        """None (the encoder's latents) or a level; from (seed, step) only."""
        rng = np.random.default_rng([self.ctx.config.seed, step, 11])
        if rng.random() < self.stage.clean_latent_fraction:
            return None
        return self.latent_levels[int(rng.integers(len(self.latent_levels)))]

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.stage.loss
        level = self.latent_for_step(step)
        losses, logs = [], {"level": -1.0 if level is None else float(level)}
        for i, x in enumerate(self.micro_batches()):
            with self.autocast():
                x_hat, target = self.gen.module(x, level, self.ctx.generator(step, 40 + i))
                rec, perc = l1(x_hat, target), self.perceptual(x_hat, target)
                loss = cfg.l1 * rec + cfg.perceptual * perc
            losses.append(loss)
            logs.update(
                {
                    "loss/l1": value(rec),
                    f"loss/{self.perceptual_name}": value(perc),
                    "loss/total": value(loss),
                }
            )
        backward_and_step(self.ctx, self.gen, losses)
        return logs

    def validate(self, step: int) -> dict[str, float]:
        metrics = autoencoder_psnr(self, step)
        metrics.update(self.validate_codec(step, self.latent_levels))
        for part in self.trained_parts:  # both checks leave the whole model in eval mode
            part.train()
        return metrics
