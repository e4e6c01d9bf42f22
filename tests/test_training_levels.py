"""The per-level stages: hyper-coders, calibration of timesteps, a new level, priors,
and validation during training.

Everything runs on the tiny architecture with generated images, seconds per test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import build_tiny_model, make_image
from helpers.training import make_data_dirs, make_stage, recipe
from oscar.coding.codec import OscarCodec
from oscar.models.hyper import HyperOutput
from oscar.store.pretrained import load_model
from oscar.training.calibration import calibrate, choose_timesteps
from oscar.training.recipe import run_recipe, stage_dir
from oscar.training.stages.hyper import HyperStage


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory) -> tuple[Path, Path]:
    return make_data_dirs(tmp_path_factory.mktemp("train_data"))


def test_timestep_choice_from_cosine():
    model = build_tiny_model(0)
    ab = model.schedule.alphas_cumprod
    for t in (10, 150, 400, 800):
        assert choose_timesteps(model.schedule, {0: float(ab[t].sqrt())}) == {0: t}


class _SyntheticCoder(torch.nn.Module):
    """Outputs √ᾱ_t·y + √(1−ᾱ_t)·ε: a hyper-coder whose cosine to y is known."""

    def __init__(self, alpha_bar: float) -> None:
        super().__init__()
        self.alpha_bar = alpha_bar

    def forward(self, y):
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(y.shape, generator=g)
        y = y / y.pow(2).mean(dim=(2, 3), keepdim=True).sqrt()  # unit-RMS channels (§4)
        z = self.alpha_bar**0.5 * y + (1 - self.alpha_bar) ** 0.5 * noise
        return HyperOutput(z, torch.zeros(1), torch.zeros(()))


def test_calibration_recovers_a_known_timestep(tmp_path):
    model = build_tiny_model(0).eval()
    target = {3: 250, 6: 600}
    for level, t in target.items():
        model.hyper[str(level)] = _SyntheticCoder(float(model.schedule.alphas_cumprod[t]))
    images = []
    for i in range(3):
        Image.fromarray(make_image(256, 256, seed=i)).save(tmp_path / f"{i}.png")
        images.append(tmp_path / f"{i}.png")
    config, rows = calibrate(model, images, levels=list(target), progress=False)
    found = {r.level: r.timestep for r in rows}
    for level, t in target.items():
        assert abs(found[level] - t) <= 25, (found, target)
        assert config.level(level).timestep == found[level]
        assert config.level(level).cosine is not None


def _layout(model) -> list:
    """Module classes and parameter strides: what the codec's inference tuning would change."""
    return [type(m) for m in model.modules()] + [p.stride() for p in model.parameters()]


def test_validation_and_calibration_leave_the_trained_model_as_it_was(tmp_path, data_dirs):
    stage = make_stage(HyperStage, tmp_path, data_dirs, "hyper", dead_code_interval=0)
    before = _layout(stage.model)
    assert stage.validate_codec(0, [7])  # wraps the model in an OscarCodec
    assert _layout(stage.model) == before  # no channels-last weights, no in-place blocks
    calibrate(stage.model, stage.validation_images[:1], levels=[7], progress=False)
    assert _layout(stage.model) == before


def test_a_trained_model_gains_a_ninth_level(tmp_path, data_dirs, tiny_model_dir):
    config = recipe(
        tmp_path,
        data_dirs,
        [
            {"kind": "add_level", "grid_factor": 16, "codebook_size": 512},
            {"kind": "hyper", "steps": 4, "batch_size": 2, "lr": 1e-3, "levels": [8]},
            {"kind": "calibrate", "levels": [8]},
            {"kind": "priors", "levels": [8]},
        ],
        init_from=str(tiny_model_dir),
    )
    final = run_recipe(config)
    before, after = load_model(tiny_model_dir), load_model(final)
    assert after.model.config.level_numbers == (*range(8), 8)
    rate = after.model.rate(8)
    assert (rate.grid_factor, rate.codebook_size) == (16, 512) and rate.cosine is not None
    old = {**before.model.state_dict()}
    for k, v in after.model.state_dict().items():
        if not k.startswith("hyper.8."):
            assert torch.equal(v, old[k]), k  # everything else frozen
    assert sorted(after.priors.tables) == list(range(9))
    codec = OscarCodec(after)
    image = make_image(48, 64, seed=5)
    data = codec.compress(image, 8)
    assert codec.decompress(data).shape == (48, 64, 3)
    assert codec.token_grid(48, 64, 8) == (4, 4)


def test_refining_one_level_of_a_finished_model_leaves_every_other_part_bit_identical(
    tmp_path, data_dirs, tiny_model_dir
):
    """Stage 1, calibration and a joint stage with the denoiser frozen, all on level 4: only
    level 4's hyper-coder, its rate-table entry and its prior may change (the prompt too
    conditions every level, so a frozen UNet keeps it)."""
    config = recipe(
        tmp_path,
        data_dirs,
        [
            {"kind": "hyper", "steps": 3, "batch_size": 2, "lr": 1e-3, "levels": [4]},
            {"kind": "calibrate", "levels": [4]},
            {
                "kind": "joint",
                "steps": 3,
                "batch_size": 2,
                "lr": 1e-3,
                "levels": [4],
                "train_unet": "frozen",
                "loss": {"perceptual_kind": "ms_ssim", "adversarial": 0.1},
            },
            {"kind": "priors", "levels": [4]},
        ],
        init_from=str(tiny_model_dir),
    )
    final = run_recipe(config)
    before, after = load_model(tiny_model_dir), load_model(final)
    old = before.model.state_dict()
    changed = {k for k, v in after.model.state_dict().items() if not torch.equal(v, old[k])}
    assert changed and all(k.startswith("hyper.4.") for k in changed), sorted(changed)[:5]
    for lv in before.model.config.level_numbers:
        if lv != 4:
            assert after.model.rate(lv) == before.model.rate(lv)
            assert np.array_equal(after.priors.tables[lv], before.priors.tables[lv])


def test_periodic_validation_uses_the_evaluation_code(tmp_path, data_dirs, tiny_model_dir):
    config = recipe(
        tmp_path,
        data_dirs,
        [
            {"kind": "hyper", "steps": 2, "batch_size": 1, "lr": 1e-3, "levels": [0, 7]},
        ],
        init_from=str(tiny_model_dir),
        validate_every=1,
    )
    run_recipe(config)
    sdir = stage_dir(config, 0)
    done = json.loads((sdir / "done.json").read_text())
    for level in (0, 7):
        assert 0 < done["validation"][f"val/level{level}/psnr"] < 100
        assert done["validation"][f"val/level{level}/bpp"] > 0
    samples = sorted((sdir / "samples").rglob("*.png"))
    assert len(samples) >= 2 * 2  # two held-out images at two levels, per validation
    assert list((sdir / "logs").rglob("events.out.tfevents*"))  # TensorBoard
