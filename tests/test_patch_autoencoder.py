"""The block-PCA autoencoder: starts at the PCA floor, codes files with its own channel count."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import CONFIGS, make_image
from oscar.coding.codec import OscarCodec
from oscar.config import ModelConfig
from oscar.errors import MalformedError
from oscar.evaluation.metrics import psnr
from oscar.io import image_to_tensor, tensor_to_image
from oscar.models.oscar import OscarModel
from oscar.models.patch_autoencoder import PatchAutoencoder, fit_block_pca
from oscar.store.pretrained import LoadedModel, load_model, save_model

TINY_PATCH_VAE = {
    "_class_name": "PatchAutoencoder",
    "latent_channels": 6,
    "encoder_width": 8,
    "encoder_blocks": 1,
    "decoder_width": 8,
    "decoder_blocks": 1,
    "decoder_pixel_width": 4,
    "decoder_pixel_blocks": 1,
}


def tiny_patch_config() -> ModelConfig:
    data = json.loads((CONFIGS / "tiny.json").read_text())
    data["vae"] = dict(TINY_PATCH_VAE)
    data["unet"] = {**data["unet"], "in_channels": 6, "out_channels": 6}
    return ModelConfig.from_dict(data)


def patch_vae_stage(tmp_path, stage: dict):
    """A set-up ``vae`` stage of the tiny block-PCA model on four 96×96 training images."""
    from oscar.training.config import TrainConfig
    from oscar.training.loop import LoopContext, make_accelerator
    from oscar.training.stages.vae import VAEStage

    train = tmp_path / "train"
    train.mkdir()
    for i in range(4):
        Image.fromarray(make_image(96, 96, seed=i)).save(train / f"{i}.png")
    config = TrainConfig.from_dict(
        {
            "model": str(CONFIGS / "tiny.json"),
            "output_dir": str(tmp_path / "run"),
            "data": {"train": [str(train)], "patch_size": 64, "num_workers": 0},
            "stages": [stage],
        }
    )
    ctx = LoopContext(
        config, config.stages[0], tmp_path / "s", make_accelerator(config, tmp_path / "s")
    )
    torch.manual_seed(0)
    vae_stage = VAEStage(ctx, OscarModel(tiny_patch_config()))
    vae_stage.setup()
    return vae_stage


def images(count: int = 3) -> list[torch.Tensor]:
    return [image_to_tensor(make_image(64, 96, seed=s)) for s in range(count)]


def test_untrained_model_is_the_block_pca_codec():
    pca = fit_block_pca(images())
    vae = PatchAutoencoder(**{k: v for k, v in TINY_PATCH_VAE.items() if k[0] != "_"})
    vae.init_from_pca(pca)
    x = image_to_tensor(make_image(64, 96, seed=7))
    with torch.no_grad():
        y = vae.encode(x).latent_dist.mean
        x_hat = vae.decode(y).sample
    torch.testing.assert_close(x_hat, pca.reconstruct(x, 6), atol=1e-4, rtol=0)
    # latent_scale gives the PCA coefficients of the fitting data unit variance
    fitted = torch.cat([vae.encode(x).latent_dist.mean for x in images()]).detach()
    std = fitted.transpose(0, 1).flatten(1).std(dim=1)
    torch.testing.assert_close(std, torch.ones(6), atol=0.02, rtol=0)


def test_block_pca_floor_rises_with_width_and_is_exact_at_full_width():
    pca = fit_block_pca(images())
    x = image_to_tensor(make_image(64, 96, seed=9))
    original = tensor_to_image(x)
    floors = [psnr(original, tensor_to_image(pca.reconstruct(x, c))) for c in (1, 4, 16, 64)]
    assert floors == sorted(floors) and floors[0] < floors[-1] - 3, floors
    torch.testing.assert_close(pca.reconstruct(x, 192), x, atol=1e-4, rtol=0)


def test_model_with_a_wide_latent_codes_version_2_files(tmp_path):
    torch.manual_seed(0)
    model = OscarModel(tiny_patch_config()).eval()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded.model.vae, PatchAutoencoder)
    codec = OscarCodec(loaded, device="cpu")
    image = make_image(50, 70, seed=3)
    data = codec.compress(image, level=7)
    assert data[3] == 2 and data[14] == 6  # version 2, six channel norms
    again = OscarCodec(LoadedModel.from_model(loaded.model), device="cpu")
    assert again.decompress(data).shape == image.shape
    # The file's side info must match the model's latent width, even under a valid checksum.
    body = data[:14] + bytes([5]) + data[15:20] + data[21:-4]
    with pytest.raises(MalformedError, match="6 channels"):
        codec.decompress(body + struct.pack(">I", zlib.crc32(body)))


def test_vae_stage_starts_at_the_pca_floor_and_improves_on_it(tmp_path):
    stage = patch_vae_stage(
        tmp_path,
        {
            "kind": "vae",
            "steps": 30,
            "batch_size": 2,
            "lr": 3e-3,
            "pca_init": True,
            "loss": {"mse": 1.0, "lowpass": 1.0, "perceptual": 0.0, "adversarial": 0.0},
        },
    )
    stage.start_data(0)
    fixed = stage.micro_batches()
    stage.micro_batches = lambda: fixed
    vae = stage.model.vae
    x = fixed[0]
    with torch.no_grad():
        start = float((vae(x) - x).pow(2).mean())
    losses = [stage.train_step(step)["loss/total"] for step in range(30)]
    with torch.no_grad():
        end = float((vae(x) - x).pow(2).mean())
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) and end < 0.9 * start, (start, end)
    # finish() refits one scale per channel: unit-variance latents on fresh crops
    del stage.micro_batches
    stage.finish()
    stage.start_data(10**6, shard=False)
    y = torch.cat([vae.encode(b).latent_dist.mean for b in stage.micro_batches()]).detach()
    assert y.shape[1] == 6
    assert 0.5 < float(y.transpose(0, 1).flatten(1).std(dim=1).mean()) < 2.0


def test_pca_init_needs_a_patch_autoencoder():
    from oscar.errors import ConfigError
    from oscar.training.config import StageConfig

    with pytest.raises(ConfigError, match="vae stage only"):
        StageConfig(kind="hyper", steps=1, pca_init=True)


def test_energy_weighting_divides_by_the_per_channel_scale_only():
    from oscar.training.config import LossConfig
    from oscar.training.losses import energy_space, global_cosine

    vae = PatchAutoencoder(**{k: v for k, v in TINY_PATCH_VAE.items() if k != "_class_name"})
    vae.latent_scale.copy_(torch.tensor([0.1, 1.0, 2.0, 4.0, 8.0, 16.0]))
    y = torch.randn(2, 6, 4, 4)
    assert torch.allclose(energy_space(vae, y) * vae.latent_scale.view(1, -1, 1, 1), y)
    # an error on the small-scale (high-energy) channel counts more in the energy space
    off = y.clone()
    off[:, 0] += 1.0
    assert (
        global_cosine(energy_space(vae, off), energy_space(vae, y)).mean()
        < global_cosine(off, y).mean()
    )
    assert energy_space(object(), y) is y  # a global scale: no change
    assert LossConfig(latent_weighting="energy").latent_weighting == "energy"
    with pytest.raises(Exception, match="latent_weighting"):
        LossConfig(latent_weighting="pixels")


def test_vae_finish_with_a_global_scale_keeps_each_channel_s_energy(tmp_path):
    """latent_scale: global → one factor for every channel, unit variance over all of them,
    the block means (channel 0) far above the finest component; decoding is unchanged."""
    stage = patch_vae_stage(
        tmp_path, {"kind": "vae", "steps": 1, "pca_init": True, "latent_scale": "global"}
    )
    vae = stage.model.vae
    x = image_to_tensor(make_image(64, 64, seed=11))
    with torch.no_grad():
        before = vae(x)
    stage.finish()
    scale = vae.latent_scale
    assert torch.all(scale == scale[0]), scale
    with torch.no_grad():
        torch.testing.assert_close(vae(x), before, atol=1e-4, rtol=0)
    stage.start_data(10**6, shard=False)
    y = torch.cat([vae.encode(b).latent_dist.mean for b in stage.micro_batches()]).detach()
    std = y.transpose(0, 1).flatten(1).std(dim=1)
    assert 0.8 < float(std.square().mean().sqrt()) < 1.25, std
    assert float(std[0]) > 3 * float(std[-1]), std


def test_latent_scale_is_for_the_vae_stage_only():
    from oscar.errors import ConfigError
    from oscar.training.config import StageConfig

    with pytest.raises(ConfigError, match="vae stage only"):
        StageConfig(kind="hyper", steps=1, latent_scale="global")
    with pytest.raises(ConfigError, match="latent_scale"):
        StageConfig(kind="vae", steps=1, latent_scale="per-image")


def test_global_rescale_sizes_the_whole_latent_and_leaves_weak_channels_weak():
    from oscar.models.norms import rescale_channels, rescale_global

    y_tilde = torch.randn(2, 6, 8, 8)
    y_tilde[:, 5] *= 1e-3  # a channel the hyper-coder left near zero
    target = torch.tensor([[4.0, 1.0, 1.0, 0.5, 0.5, 0.2]] * 2)
    z = rescale_global(y_tilde, target)
    total = z.square().mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(total, target.square().mean(1).sqrt(), rtol=1e-4, atol=0)
    assert float(z[:, 5].square().mean().sqrt()) < 0.01
    # one gain per image: directions unchanged
    gain = z.flatten(1) / y_tilde.flatten(1)
    torch.testing.assert_close(gain, gain[:, :1].expand_as(gain))
    # per channel, the weak channel is blown up to its full RMS
    assert float(rescale_channels(y_tilde, target)[:, 5].square().mean().sqrt()) > 0.19


def test_latent_rescale_setting_round_trips_and_changes_the_fingerprint(tmp_path):
    from oscar.errors import ConfigError

    config = tiny_patch_config()
    assert "latent_rescale" not in config.to_dict()  # older models keep their oscar.json
    data = {**config.to_dict(), "latent_rescale": "global"}
    glob = ModelConfig.from_dict(data)
    assert ModelConfig.from_dict(glob.to_dict()).latent_rescale == "global"
    with pytest.raises(ConfigError, match="latent_rescale"):
        ModelConfig.from_dict({**data, "latent_rescale": "none"})
    torch.manual_seed(0)
    model = OscarModel(glob).eval()
    save_model(model, tmp_path / "g")
    loaded = load_model(tmp_path / "g")
    assert loaded.model.config.latent_rescale == "global"
    y_tilde = torch.randn(1, 6, 4, 4)
    codes = loaded.model.side_info(torch.randn(1, 6, 4, 4))
    from oscar.models.norms import dequantize_rms, rescale_global

    torch.testing.assert_close(
        loaded.model.to_noisy_latent(y_tilde, codes), rescale_global(y_tilde, dequantize_rms(codes))
    )
    save_model(OscarModel(config).eval(), tmp_path / "c")
    assert load_model(tmp_path / "c").fingerprint != loaded.fingerprint
