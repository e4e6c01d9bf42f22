"""Shared fixtures: tiny random models built on the fly (no downloads, milliseconds each).

Helpers that tests import (images, models, paths) are in ``helpers``, not here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import CONFIGS, build_tiny_model, make_image
from oscar.coding.codec import OscarCodec
from oscar.coding.prior_fitting import fit_priors
from oscar.config import ModelConfig
from oscar.store.pretrained import save_model

# Tiny models are bound by per-operation overhead, which a second OpenMP thread only adds to
# (and multiplies when other processes compete for the cores).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_config() -> ModelConfig:
    return ModelConfig.from_json_file(CONFIGS / "tiny.json")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """A folder of a few small PNG images."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    for i, (h, w) in enumerate([(64, 64), (48, 80), (70, 33)]):
        Image.fromarray(make_image(h, w, seed=i)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, sample_dir) -> Path:
    """A tiny random model directory with priors fitted on ``sample_dir``."""
    path = tmp_path_factory.mktemp("tiny_model")
    save_model(build_tiny_model(0), path)
    codec = OscarCodec.from_pretrained(path, device="cpu")
    priors, _ = fit_priors(codec, sorted(sample_dir.glob("*.png")), progress=False)
    save_model(codec.model, path, priors=priors)
    return path


@pytest.fixture(scope="session")
def tiny_codec(tiny_model_dir) -> OscarCodec:
    return OscarCodec.from_pretrained(tiny_model_dir, device="cpu")
