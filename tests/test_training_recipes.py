"""Recipes as a whole: resume after a crash, two processes, fields, the shipped recipes,
fingerprints, and the EMA.

Everything runs on the tiny architecture with generated images, seconds per test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from helpers import CONFIGS, ROOT
from helpers.training import make_data_dirs, model_weights, recipe
from oscar.errors import ConfigError
from oscar.store.pretrained import load_model
from oscar.training.config import TrainConfig
from oscar.training.recipe import run_recipe, stage_dir
from oscar.training.stages.joint import JointStage


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory) -> tuple[Path, Path]:
    return make_data_dirs(tmp_path_factory.mktemp("train_data"))


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
    checkpoint = stage_dir(crashed, 0) / "checkpoints" / "step-0000003"
    assert checkpoint.is_dir()
    before = json.loads((checkpoint / "trainer_state.json").read_text())["wall_seconds"]
    with pytest.raises(ConfigError, match="--resume"):
        run_recipe(crashed)
    monkeypatch.setattr(JointStage, "train_step", original)
    run_recipe(crashed, resume=True)
    # The reported wall time covers the run before the crash as well.
    done = json.loads((stage_dir(crashed, 0) / "done.json").read_text())
    assert before > 0 and done["wall_seconds"] >= before

    a = model_weights(stage_dir(straight, 0) / "model")
    b = model_weights(stage_dir(crashed, 0) / "model")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


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


def test_unknown_recipe_fields_are_errors(tmp_path, data_dirs):
    with pytest.raises(ConfigError, match="lrr"):
        recipe(tmp_path, data_dirs, [{"kind": "hyper", "steps": 2, "lrr": 1.0}])
    with pytest.raises(ConfigError, match="wieght"):
        recipe(tmp_path, data_dirs, [{"kind": "joint", "steps": 2, "loss": {"wieght": 1}}])
    with pytest.raises(ConfigError, match="unknown field"):
        recipe(tmp_path, data_dirs, [{"kind": "vae", "steps": 2}], epochs=3)


def test_shipped_recipes_parse():
    from oscar.config import ModelConfig

    for name in (
        "train_tiny.yaml",
        "train_small.yaml",
        "train_small_v2.yaml",
        "train_sd21.yaml",
        "train_sd21_paper.yaml",
    ):
        config = TrainConfig.load(CONFIGS / name)
        assert config.stages
        arch = ModelConfig.from_json_file(config.model)
        for stage in config.stages:
            assert (stage.patch_size or config.data.patch_size) % arch.pad_multiple == 0, name
            if stage.train_unet == "lora":
                assert arch.lora is not None, name
    # Recipes that continue the embedded model (init_from: a model directory, not an architecture)
    for path in (
        CONFIGS / "train_small_refine.yaml",
        CONFIGS / "train_small_decoder.yaml",
        ROOT / "benchmarks" / "experiments" / "train_small_light_decoder.yaml",
        ROOT / "benchmarks" / "experiments" / "train_small_v2_energy_hyper.yaml",
        CONFIGS / "train_small_fast_decoder.yaml",
    ):
        name = path.name
        config = TrainConfig.load(path)
        assert config.init_from and config.stages, name
        if config.init_from.startswith("runs/weights-"):  # an earlier embedded model's weights
            assert config.init_fingerprint and config.init_fingerprint in config.init_from, name
            for stage in config.stages:
                if isinstance(stage.distill, str):
                    assert stage.distill_fingerprint in stage.distill, name
        arch = ModelConfig.from_json_file(CONFIGS / "small.json")
        for stage in config.stages:
            assert (stage.patch_size or config.data.patch_size) % arch.pad_multiple == 0, name


def test_recipes_tied_to_weights_refuse_other_ones(tmp_path, data_dirs, tiny_model_dir):
    """``init_fingerprint`` / ``distill_fingerprint``: a recipe made for particular weights runs
    on them and stops with one clear error, before training, on any others."""
    right = load_model(tiny_model_dir).fingerprint.hex()[:8]
    wrong = "0" * 8 if right != "0" * 8 else "1" * 8
    stage = {"kind": "decoder", "steps": 1, "batch_size": 1, "lr": 1e-3}
    stage.update(distill=str(tiny_model_dir), loss={"perceptual_kind": "ms_ssim"})
    tied = {**stage, "distill_fingerprint": right}
    config = recipe(tmp_path / "a", data_dirs, [tied], init_from=str(tiny_model_dir))
    config = dataclasses.replace(config, init_fingerprint=right)
    assert (run_recipe(config) / "oscar.json").is_file()
    for top, teacher in ((wrong, right), (right, wrong)):
        stages = [{**stage, "distill_fingerprint": teacher}]
        config = recipe(
            tmp_path / f"b{top}", data_dirs, stages, init_from=str(tiny_model_dir),
            init_fingerprint=top,
        )  # fmt: skip
        with pytest.raises(ConfigError, match=f"fingerprint {right}, not {wrong}"):
            run_recipe(config)
        assert not list((tmp_path / f"b{top}").rglob("checkpoint*"))  # nothing trained
    for bad in ("459304A0", "abc", 459304, "g" * 8):
        with pytest.raises(ConfigError, match="hex digits"):
            recipe(
                tmp_path, data_dirs, [stage], init_from=str(tiny_model_dir), init_fingerprint=bad
            )
        with pytest.raises(ConfigError, match="hex digits"):
            recipe(tmp_path, data_dirs, [{**stage, "distill_fingerprint": bad}])
    with pytest.raises(ConfigError, match="needs distill to name a model directory"):
        recipe(tmp_path, data_dirs, [{**stage, "distill": True, "distill_fingerprint": right}])
    with pytest.raises(ConfigError, match="init_fingerprint needs init_from"):
        recipe(tmp_path, data_dirs, [stage], init_fingerprint=right)


def test_ema_forgets_the_initial_weights():
    """With decay warm-up the average follows the trained weights, not the random init."""
    from oscar.training.loop import EMA

    p = torch.nn.Parameter(torch.zeros(4))
    ema = EMA([p], decay=0.999)
    with torch.no_grad():
        p.fill_(1.0)
    for _ in range(200):
        ema.update()
    # Without warm-up the shadow would be 1 - 0.999**200 = 0.18.
    assert ema.shadow[0].min().item() > 0.999
    state = ema.state_dict()
    again = EMA([p], decay=0.999)
    again.load_state_dict(state)
    assert again.updates == 200 and again.current_decay() == ema.current_decay()
