"""Training stages, resume, adversarial gradients, distributed agreement, calibration, new levels.

Everything runs on the tiny architecture with generated images, seconds per test.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from helpers import CONFIGS, ROOT, build_tiny_model, make_image
from oscar.coding.codec import OscarCodec
from oscar.config import VaeDecoderConfig
from oscar.errors import ConfigError
from oscar.models.hyper import HyperOutput
from oscar.store.pretrained import LoadedModel, load_model, save_model
from oscar.training.calibration import calibrate, choose_timesteps
from oscar.training.config import TrainConfig
from oscar.training.loop import LoopContext, make_accelerator
from oscar.training.recipe import run_recipe, stage_dir
from oscar.training.stages.decoder import DecoderStage
from oscar.training.stages.diffusion import DiffusionStage
from oscar.training.stages.hyper import HyperStage
from oscar.training.stages.joint import JointStage
from oscar.training.stages.vae import VAEStage


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
    (DecoderStage, "decoder", "loss/total", {"lr": 3e-3, "loss": {"perceptual_kind": "ms_ssim"}}),
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
    if kind == "decoder":
        stage.latent_for_step = lambda step: 7
        stage.validate(0)  # leaves the model in eval mode; the decoder must train on
        assert stage.model.vae.decoder.training and not stage.model.vae.encoder.training
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


def test_refining_the_decoder_leaves_everything_else_and_the_priors_bit_identical(
    tmp_path, data_dirs, tiny_model_dir
):
    """Stage 3 trains the VAE decoder alone: files keep their indices, rates and priors."""
    config = recipe(
        tmp_path,
        data_dirs,
        [
            {
                "kind": "decoder",
                "steps": 4,
                "batch_size": 2,
                "lr": 1e-3,
                "clean_latent_fraction": 0.5,
                "loss": {"perceptual_kind": "ms_ssim"},
            }
        ],
        init_from=str(tiny_model_dir),
    )
    stage = config.stages[0]
    draws = [
        DecoderStage.latent_for_step(
            SimpleNamespace(ctx=SimpleNamespace(config=config), stage=stage, latent_levels=[0, 7]),
            n,
        )
        for n in range(20)
    ]
    assert None in draws and {0, 7} <= set(draws)  # both kinds of latent, every level
    final = run_recipe(config)
    before, after = load_model(tiny_model_dir), load_model(final)
    old = before.model.state_dict()
    changed = {k for k, v in after.model.state_dict().items() if not torch.equal(v, old[k])}
    assert changed and all(k.startswith(("vae.decoder.", "vae.post_quant_conv.")) for k in changed)
    assert any(k.startswith("vae.decoder.up_blocks") for k in changed)
    for lv in before.model.config.level_numbers:
        assert after.model.rate(lv) == before.model.rate(lv)
        assert np.array_equal(after.priors.tables[lv], before.priors.tables[lv])
    image = make_image(64, 64, seed=3)
    old_codec = OscarCodec.from_pretrained(tiny_model_dir, device="cpu")
    new_codec = OscarCodec.from_pretrained(final, device="cpu")
    record = old_codec.encode(image, 5)
    assert np.array_equal(new_codec.encode(image, 5).indices, record.indices)
    assert not np.array_equal(new_codec.decode(record), old_codec.decode(record))
    with pytest.raises(ConfigError, match="clean_latent_fraction"):
        recipe(tmp_path, data_dirs, [{"kind": "decoder", "steps": 2, "clean_latent_fraction": 2}])


def test_decoder_stage_can_train_a_lighter_decoder_from_the_old_one(
    tmp_path, data_dirs, tiny_model_dir
):
    """``vae_decoder``: a new decoder architecture, started from the old decoder's tensors where
    names and shapes agree; nothing else changes, and the saved model records it."""
    lighter = {"block_out_channels": [8, 8], "layers_per_block": 0, "pixel_shuffle": 4}
    stage = {
        "kind": "decoder",
        "steps": 2,
        "batch_size": 2,
        "lr": 1e-3,
        "loss": {"perceptual_kind": "ms_ssim"},
        "vae_decoder": lighter,
    }
    config = recipe(tmp_path, data_dirs, [stage], init_from=str(tiny_model_dir))
    before = load_model(tiny_model_dir)
    # The new decoder before training: the kept tensors are the old ones, the rest is new.
    from oscar.models.vae_decoder import PixelShuffleDecoder, replace_decoder

    vae = copy.deepcopy(before.model.vae)
    fresh = replace_decoder(vae, config.stages[0].vae_decoder)
    old = before.model.vae.decoder.state_dict()
    assert "conv_out.weight" in fresh and "conv_in.weight" not in fresh
    for name, tensor in vae.decoder.state_dict().items():
        if name not in fresh:
            assert torch.equal(tensor, old[name]), name
    final = run_recipe(config)
    after = load_model(final)
    assert after.model.config.vae_decoder == config.stages[0].vae_decoder
    assert isinstance(after.model.vae.decoder, PixelShuffleDecoder)
    assert json.loads((final / "oscar.json").read_text())["config"]["vae_decoder"] == lighter
    old_state = before.model.state_dict()
    for name, tensor in after.model.state_dict().items():
        if not name.startswith(("vae.decoder.", "vae.post_quant_conv.")):
            assert torch.equal(tensor, old_state[name]), name
    image = make_image(64, 64, seed=3)
    old_codec = OscarCodec.from_pretrained(tiny_model_dir, device="cpu")
    new_codec = OscarCodec.from_pretrained(final, device="cpu")
    record = old_codec.encode(image, 5)
    assert np.array_equal(new_codec.encode(image, 5).indices, record.indices)
    assert new_codec.decode(record).shape == image.shape
    for kind in ("vae", "joint"):
        with pytest.raises(ConfigError, match="decoder stage only"):
            recipe(tmp_path, data_dirs, [{"kind": kind, "steps": 2, "vae_decoder": lighter}])
    with pytest.raises(ConfigError, match="upsamples"):
        bad = {**lighter, "pixel_shuffle": 2}
        recipe(tmp_path, data_dirs, [{**stage, "vae_decoder": bad}])


def test_decoder_distillation_targets_the_input_models_decoding(
    tmp_path, data_dirs, tiny_model_dir
):
    """``distill``: the target is the input model's decoder's output for the same latent (taken
    before ``vae_decoder`` replaces it), not the crop; with recoloured crops, end to end."""
    from oscar.models.vae_decoder import replace_decoder
    from oscar.training.stages.decoder import _DecoderForward, _Teacher

    model = load_model(tiny_model_dir).model.eval()
    x = torch.from_numpy(make_image(32, 32, seed=4)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        y = model.encode_latent(x)
        expected = {
            None: model.decode_latent(y),
            3: model.decode_latent(model.code_latent(y, 3)[2]),
        }
    teacher = _Teacher(copy.deepcopy(model.vae), model.scaling_factor)
    replace_decoder(model.vae, VaeDecoderConfig((8, 8), 0, 4))
    forward = _DecoderForward(model, teacher)
    assert not any(name.startswith("teacher") for name, _ in forward.named_parameters())
    for level, want in expected.items():
        x_hat, target = forward(x, level)
        assert torch.equal(target, want)
        assert x_hat.requires_grad and not torch.allclose(x_hat, want)
    assert torch.equal(_DecoderForward(model)(x, None)[1], x)

    stage = {"kind": "decoder", "steps": 2, "batch_size": 2, "lr": 1e-3, "distill": True}
    stage["loss"] = {"perceptual_kind": "ms_ssim"}
    config = recipe(tmp_path, data_dirs, [stage], init_from=str(tiny_model_dir))
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, colour_augment=True))
    first = run_recipe(config)
    # A later stage can distil from a model directory: the first teacher, not its own input.
    later = {**stage, "distill": str(tiny_model_dir)}
    config = recipe(tmp_path / "b", data_dirs, [later], init_from=str(first))
    run_recipe(config)
    other = tmp_path / "other"  # another encoder: other latents
    save_model(build_tiny_model(1), other)
    bad = {**stage, "distill": str(other)}
    config = recipe(tmp_path / "c", data_dirs, [bad], init_from=str(tiny_model_dir))
    with pytest.raises(ConfigError, match="another VAE encoder"):
        run_recipe(config)
    with pytest.raises(ConfigError, match="decoder stage only"):
        recipe(tmp_path, data_dirs, [{"kind": "joint", "steps": 2, "distill": True}])
    with pytest.raises(ConfigError, match="model directory"):
        recipe(tmp_path, data_dirs, [{**stage, "distill": 3}])


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


def test_latent_jitter_moves_both_decoders_inputs(tmp_path, data_dirs, tiny_model_dir):
    """``latent_shift`` / ``latent_log_scale``: each sample's channels are shifted and scaled by
    draws from the step's generator, the teacher decodes the jittered latent (its target is
    still its own function of the student's input), and a jitter needs a teacher."""
    from oscar.training.stages.decoder import _DecoderForward, _Teacher, jitter_latents

    y = torch.randn(2, 4, 6, 5)
    same = jitter_latents(y, 0.5, 0.2, torch.Generator().manual_seed(1))
    assert torch.equal(same, jitter_latents(y, 0.5, 0.2, torch.Generator().manual_seed(1)))
    assert not torch.allclose(same, jitter_latents(y, 0.5, 0.2, torch.Generator().manual_seed(2)))
    assert torch.equal(jitter_latents(y, 0.0, 0.0, torch.Generator()), y)
    # Per sample and channel an affine map: the spatial pattern is kept, up to scale.
    for b in range(2):
        for c in range(4):
            corr = torch.corrcoef(torch.stack([y[b, c].flatten(), same[b, c].flatten()]))[0, 1]
            assert corr > 0.9999
    shifted = jitter_latents(y, 1.0, 0.0, torch.Generator().manual_seed(3))
    moved = (shifted - y).mean(dim=(2, 3)) / y.std(dim=(2, 3))
    assert torch.allclose(shifted - y, (shifted - y).mean(dim=(2, 3), keepdim=True), atol=1e-5)
    assert moved.abs().max() > 0.1

    model = load_model(tiny_model_dir).model.eval()
    x = torch.from_numpy(make_image(32, 32, seed=4)).permute(2, 0, 1)[None].float() / 127.5 - 1
    teacher = _Teacher(copy.deepcopy(model.vae), model.scaling_factor)
    forward = _DecoderForward(model, teacher, latent_shift=0.5, latent_log_scale=0.2)
    with torch.no_grad():
        y = model.encode_latent(x)
        want = model.decode_latent(jitter_latents(y, 0.5, 0.2, torch.Generator().manual_seed(7)))
        x_hat, target = forward(x, None, torch.Generator().manual_seed(7))
    assert torch.equal(target, want)
    assert torch.allclose(x_hat, want, atol=1e-6)  # same decoder: the student's input moved too
    assert not torch.allclose(target, model.decode_latent(y))

    stage = {"kind": "decoder", "steps": 2, "batch_size": 2, "lr": 1e-3, "distill": True}
    stage.update(latent_shift=0.3, latent_log_scale=0.1, loss={"perceptual_kind": "ms_ssim"})
    run_recipe(recipe(tmp_path, data_dirs, [stage], init_from=str(tiny_model_dir)))
    with pytest.raises(ConfigError, match="need distill"):
        recipe(tmp_path, data_dirs, [{**stage, "distill": False}])
    with pytest.raises(ConfigError, match=">= 0"):
        recipe(tmp_path, data_dirs, [{**stage, "latent_shift": -0.1}])


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


# ----------------------------------------------------------------------------- LoRA (stage 2)
def _lora_settings():
    from helpers.tiny_sd import LORA

    return LORA


def test_joint_lora_trains_only_the_adapter(tmp_path, data_dirs):
    """train_unet: lora adds a peft LoRA (rank, alpha, targets from the config): the factors
    move and the loss falls on a fixed batch, while every base UNet weight stays bit-identical."""
    from dataclasses import replace

    from oscar.config import ModelConfig
    from oscar.models.lora import base_state_dict, lora_state_dict

    config = replace(ModelConfig.from_json_file(CONFIGS / "tiny.json"), lora=_lora_settings())
    unet_before = {k: v.clone() for k, v in build_tiny_model(0, config).unet.state_dict().items()}
    stage = make_stage(
        JointStage,
        tmp_path,
        data_dirs,
        "joint",
        model=build_tiny_model(0, config),
        lr=1e-3,
        train_unet="lora",
        loss={"adversarial": 0.0, "perceptual_kind": "ms_ssim"},
    )
    unet = stage.model.unet
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    stored = {f"unet_lora.{n.replace('.default.weight', '.weight')}" for n in trainable}
    assert stored == set(lora_state_dict(unet))
    lora_before = {k: v.clone() for k, v in lora_state_dict(unet).items()}
    assert all(not v.any() for k, v in lora_before.items() if k.endswith("lora_B.weight"))

    stage.start_data(0)
    fixed = stage.micro_batches()
    stage.micro_batches = lambda: fixed
    stage.level_for_step = lambda step: 7
    losses = [stage.train_step(step)["loss/total"] for step in range(30)]
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses

    # The LoRA takes part in what was learnt: switching it off makes the same batch worse.
    x = fixed[0]
    model = stage.model.eval()
    with torch.no_grad():
        with_lora = float((model(x, 7).x_hat - x).abs().mean())
        unet.disable_adapters()
        without = float((model(x, 7).x_hat - x).abs().mean())
        unet.enable_adapters()
    assert with_lora < without

    after = lora_state_dict(unet)
    moved = [k for k in after if not torch.equal(after[k], lora_before[k])]
    assert any(k.endswith("lora_B.weight") for k in moved)
    base = base_state_dict(unet)
    assert base.keys() == unet_before.keys()
    for k, v in base.items():
        assert torch.equal(v, unet_before[k]), k


def test_joint_lora_writes_the_sd21_layout_and_codes(tmp_path, data_dirs, capsys):
    """A stage-2 LoRA run on a model that references a base folder (the Stable Diffusion 2.1
    layout, tiny widths): the written model holds only its own parts with the trained LoRA as
    ``unet_lora.*``, names the base, and `oscar compress` / `decompress` use it."""
    from helpers.tiny_sd import save_tiny_base, tiny_sd_model
    from oscar.cli import main
    from oscar.models.lora import LORA_PREFIX
    from oscar.store.pretrained import PARTS_FILE

    base = save_tiny_base(tmp_path / "sd21")
    start = tmp_path / "start"
    save_model(tiny_sd_model(base), start, include_base=False)
    start_parts = load_file(str(start / PARTS_FILE))

    config = recipe(
        tmp_path,
        data_dirs,
        [
            {
                "kind": "joint",
                "steps": 3,
                "batch_size": 1,
                "lr": 1e-3,
                "train_unet": "lora",
                "loss": {"adversarial": 0.1, "perceptual_kind": "ms_ssim"},
            }
        ],
        init_from=str(start),
    )
    final = run_recipe(config)

    assert sorted(p.name for p in final.iterdir()) == ["oscar.json", PARTS_FILE]
    meta = json.loads((final / "oscar.json").read_text())
    assert Path(meta["config"]["base_model"]) == base.resolve()
    assert meta["config"]["lora"]["rank"] == _lora_settings().rank
    parts = load_file(str(final / PARTS_FILE))
    assert parts.keys() == start_parts.keys()
    lora_keys = [k for k in parts if k.startswith(LORA_PREFIX)]
    assert lora_keys and not any(k.startswith("unet_override.") for k in parts)
    assert any(not torch.equal(parts[k], start_parts[k]) for k in lora_keys)  # trained further

    # The stored adapter is the trained one: merged at load == the peft model in memory.
    trained = load_model(final, merge_lora=False).model
    loaded = load_model(final)
    merged = loaded.model
    assert merged.unet_adapter.merged
    # In-memory validation during training hashes a peft LoRA as the saved directory does.
    assert LoadedModel.from_model(trained).fingerprint == loaded.fingerprint
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged.denoise(z, 300), trained.denoise(z, 300))

    image = make_image(40, 56, seed=4)
    Image.fromarray(image).save(tmp_path / "in.png")
    out = tmp_path / "in.oscar"
    assert (
        main(
            [
                "compress",
                str(tmp_path / "in.png"),
                "-o",
                str(out),
                "--model",
                str(final),
                "--coder",
                "fixed",
                "--level",
                "5",
            ]
        )
        == 0
    )
    assert (
        main(["decompress", str(out), "-o", str(tmp_path / "out.png"), "--model", str(final)]) == 0
    )
    decoded = np.asarray(Image.open(tmp_path / "out.png"))
    codec = OscarCodec.from_pretrained(final, device="cpu")
    assert np.array_equal(decoded, codec.reconstruct(image, 5))
    capsys.readouterr()


def test_recipe_from_an_architecture_on_a_base_folder(tmp_path, data_dirs):
    """`model` + `base_model`: the VAE and UNet come from the base folder, the OSCAR parts and a
    new LoRA are trained, and the written model references the base instead of copying it."""
    from helpers.tiny_sd import save_tiny_base
    from oscar.models.lora import LORA_PREFIX
    from oscar.store.pretrained import PARTS_FILE

    base = save_tiny_base(tmp_path / "sd21")
    arch = json.loads((CONFIGS / "tiny.json").read_text())
    arch["lora"] = {"rank": 2, "alpha": 4, "target_modules": ["to_q", "to_v", "proj_in"]}
    (tmp_path / "tiny-lora.json").write_text(json.dumps(arch))
    stages = [
        {
            "kind": "joint",
            "steps": 2,
            "batch_size": 1,
            "lr": 1e-3,
            "train_unet": "lora",
            "loss": {"adversarial": 0.0, "perceptual_kind": "ms_ssim"},
        }
    ]
    config = recipe(
        tmp_path, data_dirs, stages, model=str(tmp_path / "tiny-lora.json"), base_model=str(base)
    )
    final = run_recipe(config)
    assert sorted(p.name for p in final.iterdir()) == ["oscar.json", PARTS_FILE]
    parts = load_file(str(final / PARTS_FILE))
    b = [v for k, v in parts.items() if k.startswith(LORA_PREFIX) and k.endswith("B.weight")]
    assert b and any(v.any() for v in b)  # trained away from the identity
    loaded = load_model(final).model
    assert loaded.config.lora.target_modules == ("to_q", "to_v", "proj_in")
    assert loaded.schedule.prediction_type == "v_prediction"  # the base's scheduler
    codec = OscarCodec(load_model(final))
    image = make_image(40, 48, seed=8)
    assert codec.decompress(codec.compress(image, 6)).shape == image.shape


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
