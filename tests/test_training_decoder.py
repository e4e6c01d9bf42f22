"""The decoder stage: refining the VAE decoder alone, a lighter decoder, distillation and
latent jitter.

Everything runs on the tiny architecture with generated images, seconds per test.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import build_tiny_model, make_image
from helpers.training import make_data_dirs, recipe
from oscar.coding.codec import OscarCodec
from oscar.config import VaeDecoderConfig
from oscar.errors import ConfigError
from oscar.store.pretrained import load_model, save_model
from oscar.training.recipe import run_recipe
from oscar.training.stages.decoder import DecoderStage


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory) -> tuple[Path, Path]:
    return make_data_dirs(tmp_path_factory.mktemp("train_data"))


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
