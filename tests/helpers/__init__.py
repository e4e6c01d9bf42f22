"""Test helpers: repository paths, synthetic images and the seeded tiny model.

Imported by tests as ``from helpers import ...`` (``tests/`` is on the path, as the folder of the
root conftest); fixtures stay in conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from oscar.config import ModelConfig
from oscar.models.oscar import OscarModel

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def make_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image with some texture: gradients plus noise, (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack(
        [128 + 100 * np.sin(xx / 17 + seed), 128 + 100 * np.cos(yy / 23), (xx + yy) % 256], axis=2
    )
    noise = rng.normal(0, 12, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def build_tiny_model(seed: int = 0, config: ModelConfig | None = None) -> OscarModel:
    config = config or ModelConfig.from_json_file(CONFIGS / "tiny.json")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return OscarModel(config)


def decode_indices(
    model: OscarModel, indices: torch.Tensor, rms_codes: torch.Tensor, level: int
) -> torch.Tensor:
    """indices (B, h, w) + RMS codes (B, 4) → x_hat (B, 3, H, W) in [-1, 1] at the padded size:
    the decoder's networks without the codec around them (for models the codec does not wrap,
    such as an unmerged peft UNet)."""
    y_tilde = model.hyper_coder(level).decode(indices)
    z_t = model.to_noisy_latent(y_tilde, rms_codes)
    return model.decode_latent(model.denoise(z_t, model.rate(level).timestep))
