"""Rate → pseudo-timestep calibration (docs/method.md §4).

For each level, the mean cosine c_L between the decoded noisy latent z_t (y_tilde rescaled to
the transmitted channel RMS, exactly what the UNet sees) and the true latent y, over held-out
whole images coded as the codec codes them (padded, not cropped or resized). The cosine is taken
over all channels and positions of each image (oscar.training.losses.global_cosine) and averaged
over images. Then t_L = argmin_t |√ᾱ_t − c_L|. Both are written into the model's rate table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from oscar.coding.codec import OscarCodec
from oscar.config import ModelConfig
from oscar.models.oscar import OscarModel
from oscar.models.schedule import NoiseSchedule
from oscar.store.pretrained import LoadedModel
from oscar.training.losses import global_cosine


@dataclass(frozen=True)
class CalibrationRow:
    level: int
    grid_factor: int
    codebook_size: int
    images: int
    cosine: float
    timestep: int
    previous_timestep: int
    sqrt_alpha_bar: float


def choose_timesteps(schedule: NoiseSchedule, cosines: dict[int, float]) -> dict[int, int]:
    """t_L = argmin_t |√ᾱ_t − c_L| for each level."""
    return {level: schedule.timestep_for_cosine(c) for level, c in cosines.items()}


@torch.no_grad()
def measure_cosines(
    model: OscarModel,
    images: Sequence[Path],
    levels: Sequence[int],
    device: torch.device,
    progress: bool = True,
) -> dict[int, list[float]]:
    """Per level, cos(z_t, y) of every image."""

    # optimize=False: the inference tuning would change the layout of the model being trained
    codec = OscarCodec(LoadedModel.from_model(model), device=device, optimize=False)
    found: dict[int, list[float]] = {lv: [] for lv in levels}
    for path in tqdm(images, desc="calibrating", unit="img", disable=not progress):
        y, codes = codec.encode_latents([codec.prepare_image(path)])
        codes_t = torch.from_numpy(codes).to(device)
        for lv in levels:
            y_tilde = model.hyper_coder(lv)(y).y_tilde
            z_t = model.to_noisy_latent(y_tilde, codes_t)
            found[lv].append(float(global_cosine(z_t, y)[0]))
    return found


def calibrate(
    model: OscarModel,
    images: Sequence[Path],
    levels: Sequence[int] | None = None,
    device: torch.device | None = None,
    progress: bool = True,
) -> tuple[ModelConfig, list[CalibrationRow]]:
    """Measure and set (cosine, timestep) of ``levels`` (default all); returns the new config."""
    if not images:
        raise ValueError("calibration needs at least one held-out image")
    config = model.config
    levels = list(levels or config.level_numbers)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        per_image = measure_cosines(model, images, levels, device, progress)
    finally:
        model.train(was_training)
    means = {lv: sum(v) / len(v) for lv, v in per_image.items()}
    timesteps = choose_timesteps(model.schedule, means)
    rows, new_levels = [], []
    for rate in config.levels:
        if rate.level in means:
            t = timesteps[rate.level]
            rows.append(
                CalibrationRow(
                    rate.level,
                    rate.grid_factor,
                    rate.codebook_size,
                    len(images),
                    means[rate.level],
                    t,
                    rate.timestep,
                    model.schedule.alpha_bar(t) ** 0.5,
                )
            )
            rate = rate.with_calibration(means[rate.level], t)
        new_levels.append(rate)
    new_config = config.replace_levels(tuple(new_levels))
    model.config = new_config
    return new_config, rows


def format_table(rows: Sequence[CalibrationRow]) -> str:
    lines = ["level  f     K  images  cosine  √ᾱ_t     t  (before)"]
    for r in rows:
        lines.append(
            f"{r.level:>5} {r.grid_factor:>2} {r.codebook_size:>5} {r.images:>7} "
            f"{r.cosine:7.4f} {r.sqrt_alpha_bar:6.4f} {r.timestep:>5}  ({r.previous_timestep})"
        )
    return "\n".join(lines)
