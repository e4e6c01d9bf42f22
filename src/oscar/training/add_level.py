"""The ``add_level`` recipe step: a new rate level with a fresh hyper-coder, which the
``hyper`` and ``calibrate`` stages then train and measure."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from oscar.config import ModelConfig
from oscar.models.hyper import HyperCoder
from oscar.models.oscar import OscarModel
from oscar.rates import RateLevel


def add_level(model: OscarModel, grid_factor: int, codebook_size: int, seed: int) -> RateLevel:
    """Give ``model`` a new level (number: one past the highest) with a fresh hyper-coder.

    Its timestep starts at the value of the nearest existing level with the same grid factor
    (else the median); the ``calibrate`` stage measures the real one. Nothing else changes.
    """
    config: ModelConfig = model.config
    number = max(config.level_numbers) + 1
    same_grid = [lv for lv in config.levels if lv.grid_factor == grid_factor]
    timestep = (
        same_grid[0].timestep
        if same_grid
        else int(np.median([lv.timestep for lv in config.levels]))
    )
    rate = RateLevel(number, grid_factor, codebook_size, timestep)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + number)
        coder = HyperCoder(rate, config.hyper, model.vae.config.latent_channels)
    param = next(model.parameters())
    model.hyper[str(number)] = coder.to(param.device, param.dtype)
    model.config = replace(config, levels=(*config.levels, rate))
    return rate
