"""The ``hyper`` stage (docs/method.md §5, the paper's stage 1): each level's hyper-coder alone
against the frozen autoencoder.

Loss per level: ``cosine``·(1 − cos(y_tilde, y)) + ``commitment``·(codebook + β·commitment) +
``codebook``·codebook term. With the ``ours`` loss preset the cosine is taken over the whole
latent of each sample (oscar.training.losses.global_cosine); with ``paper`` over the channels at
each latent position, as the original's stage 1, which has no VQ term in its loss (the preset
keeps the codebook term, in place of the original's EMA codebook update). The
selected levels all train on the same batch, sharing one VAE encoding; train them in one run
(``levels: all``) or separately (``levels: [3]``).

Dead codebook entries: every ``dead_code_interval`` steps, entries no token chose during the
interval (counted over all processes) are re-seeded with projected features p̂ of the current
batch, gathered from all processes and picked with a generator seeded by the step alone, so every
process makes the identical change. Codebook usage per level is logged and reported.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from oscar.models.hyper import HyperCoder, HyperOutput
from oscar.training.loop import backward_and_step, make_optimized
from oscar.training.losses import alignment_loss, value
from oscar.training.stages.base import Stage, resolve_levels

log = logging.getLogger(__name__)


class _HyperForward(nn.Module):
    """y → {level: HyperOutput} for the trained levels."""

    def __init__(self, hyper: nn.ModuleDict, levels: list[int]) -> None:
        super().__init__()
        self.hyper = hyper
        self.levels = levels

    def forward(self, y: torch.Tensor) -> dict[int, HyperOutput]:
        return {lv: self.hyper[str(lv)](y) for lv in self.levels}


class HyperStage(Stage):
    def setup(self) -> None:
        sc = self.stage
        self.levels = resolve_levels(self.model, sc.levels)
        self.check_patch_size()
        self.model.requires_grad_(False)
        self.model.eval()
        for lv in self.levels:
            self.model.hyper[str(lv)].requires_grad_(True).train()
        self.gen = make_optimized(
            self.ctx, "hyper", _HyperForward(self.model.hyper, self.levels), sc.lr, sc.steps
        )
        self.usage = {
            lv: torch.zeros(
                self.model.rate(lv).codebook_size, dtype=torch.long, device=self.ctx.device
            )
            for lv in self.levels
        }
        self.usage_report: dict[int, float] = {}

    def train_step(self, step: int) -> dict[str, float]:
        loss_cfg = self.stage.loss
        losses, logs, last_y = [], {}, None
        for x in self.micro_batches():
            with torch.no_grad():
                y = self.model.encode_latent(x)
            last_y = y
            with self.autocast():
                outputs = self.gen.module(y)
                total = 0.0
                form = "position" if loss_cfg.preset == "paper" else "global"
                weigh = self.weigh_latent
                for lv, out in outputs.items():
                    cos = alignment_loss(form, weigh(out.y_tilde), weigh(y))
                    commit = out.commitment_loss
                    total = total + loss_cfg.cosine * cos + loss_cfg.commitment * commit
                    if loss_cfg.codebook:
                        total = total + loss_cfg.codebook * out.codebook_loss
                    logs[f"cos/level{lv}"] = 1.0 - value(cos)
                    self.usage[lv] += torch.bincount(
                        out.indices.flatten(), minlength=self.usage[lv].numel()
                    )
            losses.append(total)
        backward_and_step(self.ctx, self.gen, losses)
        logs["loss/hyper"] = sum(value(v) for v in losses) / len(losses)
        if self.stage.dead_code_interval and (step + 1) % self.stage.dead_code_interval == 0:
            logs.update(self.reseed_dead_codes(step, last_y))
        return logs

    @torch.no_grad()
    def reseed_dead_codes(self, step: int, y: torch.Tensor) -> dict[str, float]:
        acc = self.ctx.accelerator
        logs = {}
        for lv in self.levels:
            counts = acc.reduce(self.usage[lv].clone(), reduction="sum")
            used = float((counts > 0).float().mean())
            self.usage_report[lv] = used
            logs[f"codebook_usage/level{lv}"] = used
            dead = torch.nonzero(counts == 0).flatten()
            if dead.numel():
                coder: HyperCoder = self.unwrap(self.gen.module).hyper[str(lv)]
                p_hat = coder.quantizer.project(coder.g_a(y)).flatten(0, 2).float()
                p_hat = acc.gather(p_hat.contiguous())
                g = torch.Generator().manual_seed(self.ctx.config.seed * 1_000_003 + step)
                pick = torch.randint(p_hat.shape[0], (dead.numel(),), generator=g)
                jitter = 0.01 * torch.randn(dead.numel(), p_hat.shape[1], generator=g)
                book = coder.quantizer.codebook
                book.data[dead] = (p_hat[pick].cpu() + jitter).to(book.device, book.dtype)
                log.info("level %d: re-seeded %d dead codebook entries", lv, dead.numel())
            self.usage[lv].zero_()
        return logs

    def validate(self, step: int) -> dict[str, float]:
        return self.validate_codec(step, self.levels)
