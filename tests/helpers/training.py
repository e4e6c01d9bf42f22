"""Shared set-up of the training tests (tests/test_training_*.py): generated data folders, a
recipe on the tiny architecture, one stage ready to step, and the tensors of a model folder."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file

from helpers import CONFIGS, build_tiny_model, make_image
from oscar.training.config import TrainConfig
from oscar.training.loop import LoopContext, make_accelerator


def make_data_dirs(root: Path) -> tuple[Path, Path]:
    """Four training images and two held-out ones under ``root``: (train, heldout)."""
    (root / "train").mkdir()
    (root / "heldout").mkdir()
    for i in range(4):
        Image.fromarray(make_image(96, 80 + 8 * i, seed=i)).save(root / "train" / f"{i}.png")
    for i in range(2):
        Image.fromarray(make_image(70, 90, seed=10 + i)).save(root / "heldout" / f"{i}.png")
    return root / "train", root / "heldout"


def recipe(tmp_path: Path, data_dirs, stages: list[dict], **top) -> TrainConfig:
    train, heldout = data_dirs
    data = {
        "train": [str(train)],
        "validation": [str(heldout)],
        "patch_size": 64,
        "num_workers": 0,
        "max_validation_images": 2,
    }
    raw = {
        "model": str(CONFIGS / "tiny.json"),
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "data": data,
        "checkpoint_every": 3,
        "log_every": 1,
        "stages": stages,
    }
    if "init_from" in top:
        raw.pop("model")
    raw.update(top)
    return TrainConfig.from_dict(raw)


def make_stage(cls, tmp_path, data_dirs, kind: str, model=None, **stage):
    config = recipe(tmp_path, data_dirs, [{"kind": kind, "steps": 40, "batch_size": 2, **stage}])
    ctx = LoopContext(
        config, config.stages[0], tmp_path / "s", make_accelerator(config, tmp_path / "s")
    )
    s = cls(ctx, model or build_tiny_model(0))
    s.setup()
    return s


def model_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder, keyed by file and name."""
    out = {}
    for f in sorted(model_dir.rglob("*.safetensors")):
        out.update({f"{f.relative_to(model_dir)}:{k}": v for k, v in load_file(str(f)).items()})
    return out
