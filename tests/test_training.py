"""Training stages, resume, adversarial gradients, distributed agreement, calibration, new levels.

Everything runs on the tiny architecture with generated images, seconds per test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from conftest import CONFIGS, build_tiny_model, make_image
from oscar.codec import OscarCodec
from oscar.errors import ConfigError
from oscar.models.hyper import HyperOutput
from oscar.pretrained import load_model
from oscar.training.calibration import calibrate, choose_timesteps
from oscar.training.config import TrainConfig
from oscar.training.loop import LoopContext, make_accelerator
from oscar.training.recipe import run_recipe, stage_dir
from oscar.training.stage0 import DiffusionStage, VAEStage
from oscar.training.stage1 import HyperStage
from oscar.training.stage2 import JointStage


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train_data")
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


# ----------------------------------------------------------------------------- learning
LEARNING = [
    (
        VAEStage,
        "vae",
        "loss/total",
        {"lr": 3e-3, "loss": {"adversarial": 0.0, "perceptual_kind": "ms_ssim"}},
    ),
    (DiffusionStage, "diffusion", "loss/diffusion", {"lr": 3e-3}),
    (HyperStage, "hyper", "loss/hyper", {"lr": 3e-3, "dead_code_interval": 0}),
    (
        JointStage,
        "joint",
        "loss/total",
        {"lr": 1e-3, "loss": {"adversarial": 0.0, "perceptual_kind": "ms_ssim"}},
    ),
]


@pytest.mark.parametrize("cls,kind,key,options", LEARNING, ids=[k for _, k, _, _ in LEARNING])
def test_stage_loss_decreases_on_a_fixed_batch(cls, kind, key, options, tmp_path, data_dirs):
    stage = make_stage(cls, tmp_path, data_dirs, kind, **options)
    stage.start_data(0)
    fixed = stage.micro_batches()
    stage.micro_batches = lambda: fixed
    stage.ctx.generator = lambda step, stream: torch.Generator().manual_seed(stream)
    if kind == "joint":
        stage.level_for_step = lambda step: 7
    losses = [stage.train_step(step)[key] for step in range(30)]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


# ----------------------------------------------------------------------------- adversarial
def test_adversarial_gradient_reaches_the_generator(tmp_path, data_dirs):
    stage = make_stage(
        JointStage,
        tmp_path,
        data_dirs,
        "joint",
        loss={"adversarial": 0.1, "perceptual_kind": "ms_ssim"},
    )
    model = stage.model
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    out = model(x, 4)
    model.zero_grad(set_to_none=True)
    stage.adversarial_term(0, out.y.detach(), out.y_hat).backward()

    def grad(mod):
        return sum(float(p.grad.abs().sum()) for p in mod.parameters() if p.grad is not None)

    assert grad(model.unet) > 0
    assert grad(model.hyper["4"].g_s) > 0
    assert float(model.prompt_embedding.grad.abs().sum()) > 0
    assert all(p.grad is None for p in model.vae.parameters())


def test_joint_steps_keep_frozen_parts_bit_identical(tmp_path, data_dirs):
    stage = make_stage(
        JointStage,
        tmp_path,
        data_dirs,
        "joint",
        lr=1e-3,
        loss={"adversarial": 0.1, "adversarial_start": 0, "perceptual_kind": "ms_ssim"},
    )
    vae_before = {k: v.clone() for k, v in stage.model.vae.state_dict().items()}
    disc = stage.unwrap(stage.disc.module)
    backbone_before = {k: v.clone() for k, v in disc.backbone.state_dict().items()}
    unet_before = {k: v.clone() for k, v in stage.model.unet.state_dict().items()}
    stage.start_data(0)
    for step in range(3):
        logs = stage.train_step(step)
        assert "loss/d" in logs and "loss/g_adv" in logs
    for k, v in stage.model.vae.state_dict().items():
        assert torch.equal(v, vae_before[k]), k
    for k, v in disc.backbone.state_dict().items():
        assert torch.equal(v, backbone_before[k]), k
    assert any(not torch.equal(v, unet_before[k]) for k, v in stage.model.unet.state_dict().items())


# ----------------------------------------------------------------------------- resume
def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(model_dir.rglob("*.safetensors")):
        out.update({f"{f.relative_to(model_dir)}:{k}": v for k, v in load_file(str(f)).items()})
    return out


def test_resume_after_a_crash_matches_an_uninterrupted_run(
    tmp_path, data_dirs, tiny_model_dir, monkeypatch
):
    stages = [
        {
            "kind": "joint",
            "steps": 6,
            "batch_size": 2,
            "lr": 1e-3,
            "loss": {"adversarial": 0.1, "perceptual_kind": "ms_ssim"},
        }
    ]
    straight = recipe(tmp_path / "a", data_dirs, stages, init_from=str(tiny_model_dir))
    run_recipe(straight)

    crashed = recipe(tmp_path / "b", data_dirs, stages, init_from=str(tiny_model_dir))
    original = JointStage.train_step

    def crash_at_4(self, step):
        if step == 4:
            raise RuntimeError("simulated kill")
        return original(self, step)

    monkeypatch.setattr(JointStage, "train_step", crash_at_4)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_recipe(crashed)
    assert (stage_dir(crashed, 0) / "checkpoints" / "step-0000003").is_dir()
    with pytest.raises(ConfigError, match="--resume"):
        run_recipe(crashed)
    monkeypatch.setattr(JointStage, "train_step", original)
    run_recipe(crashed, resume=True)

    a = _weights(stage_dir(straight, 0) / "model")
    b = _weights(stage_dir(crashed, 0) / "model")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- distributed
def test_two_cpu_processes_agree(tmp_path, data_dirs, tiny_model_dir):
    config = {
        "init_from": str(tiny_model_dir),
        "output_dir": str(tmp_path / "run"),
        "seed": 3,
        "data": {"train": [str(data_dirs[0])], "patch_size": 64, "num_workers": 0},
        "checkpoint_every": 2,
        "log_every": 1,
        "stages": [
            {
                "kind": "hyper",
                "steps": 3,
                "batch_size": 1,
                "lr": 1e-3,
                "levels": [2, 7],
                "dead_code_interval": 2,
            },
            {
                "kind": "joint",
                "steps": 2,
                "batch_size": 1,
                "lr": 1e-4,
                "loss": {"adversarial": 0.1, "perceptual_kind": "ms_ssim"},
            },
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "oscar.cli",
            "train",
            str(path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("00-hyper", "01-joint"):
        done = json.loads((tmp_path / "run" / name / "done.json").read_text())
        assert done["hardware"]["processes"] == 2
        assert done["replicas_agree"] is True


# ----------------------------------------------------------------------------- calibration
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


# ----------------------------------------------------------------------------- new levels
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


def test_unknown_recipe_fields_are_errors(tmp_path, data_dirs):
    with pytest.raises(ConfigError, match="lrr"):
        recipe(tmp_path, data_dirs, [{"kind": "hyper", "steps": 2, "lrr": 1.0}])
    with pytest.raises(ConfigError, match="wieght"):
        recipe(tmp_path, data_dirs, [{"kind": "joint", "steps": 2, "loss": {"wieght": 1}}])
    with pytest.raises(ConfigError, match="unknown field"):
        recipe(tmp_path, data_dirs, [{"kind": "vae", "steps": 2}], epochs=3)


def test_shipped_recipes_parse():
    for name in ("train_tiny.yaml", "train_small.yaml"):
        config = TrainConfig.load(CONFIGS / name)
        assert config.stages


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
