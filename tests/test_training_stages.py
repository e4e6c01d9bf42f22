"""Every stage kind learns: the loss of each falls on a fixed batch; the joint stage's
adversarial term, frozen parts and LoRA adapter.

Everything runs on the tiny architecture with generated images, seconds per test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers import CONFIGS, build_tiny_model, make_image
from helpers.tiny_sd import LORA
from helpers.training import make_data_dirs, make_stage, recipe
from oscar.coding.codec import OscarCodec
from oscar.store.pretrained import LoadedModel, load_model, save_model
from oscar.training.recipe import run_recipe
from oscar.training.stages.decoder import DecoderStage
from oscar.training.stages.diffusion import DiffusionStage
from oscar.training.stages.hyper import HyperStage
from oscar.training.stages.joint import JointStage
from oscar.training.stages.vae import VAEStage


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory) -> tuple[Path, Path]:
    return make_data_dirs(tmp_path_factory.mktemp("train_data"))


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


def test_joint_lora_trains_only_the_adapter(tmp_path, data_dirs):
    """train_unet: lora adds a peft LoRA (rank, alpha, targets from the config): the factors
    move and the loss falls on a fixed batch, while every base UNet weight stays bit-identical."""
    from dataclasses import replace

    from oscar.config import ModelConfig
    from oscar.models.lora import base_state_dict, lora_state_dict

    config = replace(ModelConfig.from_json_file(CONFIGS / "tiny.json"), lora=LORA)
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
    assert meta["config"]["lora"]["rank"] == LORA.rank
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
