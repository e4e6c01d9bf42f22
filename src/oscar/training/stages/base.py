"""What every training stage shares: the model, batches, validation, and the way out.

A stage trains through wrapper modules whose ``forward`` computes what it needs, because
DistributedDataParallel synchronises gradients only for calls through ``forward``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from oscar.coding.codec import OscarCodec
from oscar.errors import ConfigError
from oscar.evaluation.runner import aggregate, evaluate_oscar
from oscar.models.oscar import OscarModel
from oscar.store.pretrained import LoadedModel
from oscar.training.data import CropDataset, crop_loader, list_images
from oscar.training.loop import LoopContext
from oscar.training.losses import energy_space

log = logging.getLogger(__name__)

# Each stage kind draws its crops from its own stream of sample numbers.
DATA_STREAMS = {"vae": 1, "diffusion": 2, "hyper": 3, "joint": 4, "decoder": 5}


class Stage:
    """Base class: subclasses set up trainable modules and implement ``train_step``."""

    def __init__(self, ctx: LoopContext, model: OscarModel) -> None:
        self.ctx = ctx
        self.model = model
        self.stage = ctx.stage
        self._batches: Iterator[torch.Tensor] | None = None
        self.validation_images = self._validation_images()

    # ------------------------------------------------------------------ data
    @property
    def patch_size(self) -> int:
        return self.stage.patch_size or self.ctx.config.data.patch_size

    def check_patch_size(self) -> None:
        """Crops must divide by every level's grid factor (and the UNet's downsampling)."""
        multiple = self.model.config.pad_multiple
        if self.patch_size % multiple:
            raise ConfigError(
                f"stage {self.stage.kind}: patch_size {self.patch_size} must be a multiple of "
                f"{multiple} for this model's rate table"
            )

    def start_data(self, start_step: int, shard: bool = True) -> None:
        """Batches from ``start_step`` on; ``shard=False`` gives every process the same ones."""
        cfg, sc, acc = self.ctx.config, self.stage, self.ctx.accelerator
        rank, world = (acc.process_index, acc.num_processes) if shard else (0, 1)
        dataset = CropDataset(
            list_images(cfg.data.train),
            self.patch_size,
            cfg.seed,
            cache=cfg.data.cache_images,
            colour_augment=cfg.data.colour_augment,
        )
        loader = crop_loader(
            dataset,
            sc.batch_size,
            start_step * sc.grad_accumulation,
            rank,
            world,
            cfg.data.num_workers,
            DATA_STREAMS[sc.kind],
        )
        self._batches = iter(loader)

    def micro_batches(self) -> list[torch.Tensor]:
        """The ``grad_accumulation`` micro-batches of one optimiser step, on the device."""
        assert self._batches is not None, "start_data() first"
        count = self.stage.grad_accumulation
        return [next(self._batches).to(self.ctx.device) for _ in range(count)]

    def _validation_images(self) -> list[Path]:
        data = self.ctx.config.data
        if not data.validation:
            return []
        return list_images(data.validation)[: data.max_validation_images]

    # ------------------------------------------------------------------ hooks
    def train_step(self, step: int) -> dict[str, float]:
        raise NotImplementedError

    def validate(self, step: int) -> dict[str, float]:
        """Held-out metrics through the project's evaluation code; logged. Default: none."""
        return {}

    def finish(self) -> OscarModel:
        """The model to write as this stage's output (EMA weights swapped in by the caller)."""
        return self.model

    # ------------------------------------------------------------------ helpers
    def weigh_latent(self, y: torch.Tensor) -> torch.Tensor:
        """The latent in the space of the stage's latent cosine (``loss.latent_weighting``)."""
        if self.stage.loss.latent_weighting == "energy":
            return energy_space(self.model.vae, y)
        return y

    def unwrap(self, module: nn.Module) -> nn.Module:
        return self.ctx.accelerator.unwrap_model(module)

    def autocast(self):
        return self.ctx.accelerator.autocast()

    def log_validation(self, metrics: dict[str, float], step: int) -> None:
        if metrics:
            self.ctx.accelerator.log(metrics, step=step)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
            log.info("validation at step %d: %s", step, shown)

    def validate_codec(self, step: int, levels: list[int]) -> dict[str, float]:
        """Encode and decode the held-out images at ``levels`` with the in-memory model."""
        if not self.validation_images or not self.ctx.is_main:
            return {}

        was_training = self.model.training
        self.model.eval()
        try:
            # optimize=False: channels-last weights and in-place VAE blocks are for inference;
            # the model goes on training (optimiser state, DDP buckets keep their strides).
            codec = OscarCodec(
                LoadedModel.from_model(self.model), device=self.ctx.device, optimize=False
            )
            save_dir = self.ctx.stage_dir / "samples" / f"step-{step:07d}"
            records = evaluate_oscar(
                codec,
                self.validation_images,
                levels,
                metrics=("psnr", "ms_ssim"),
                save_dir=save_dir,
            )
            metrics = {}
            for row in aggregate(records):
                metrics[f"val/level{row.level}/bpp"] = row.bpp
                for name, value in row.metrics.items():
                    if value is not None:
                        metrics[f"val/level{row.level}/{name}"] = float(value)
        finally:
            self.model.train(was_training)
        self.log_validation(metrics, step)
        return metrics


def resolve_levels(model: OscarModel, levels) -> list[int]:
    """A stage's ``levels`` setting (``all`` or a list) as level numbers of ``model``."""
    available = list(model.config.level_numbers)
    if levels == "all":
        return available
    unknown = sorted(set(levels) - set(available))
    if unknown:
        raise ValueError(f"levels {unknown} are not in the model's rate table {available}")
    return list(levels)
