"""A VAE decoder of its own widths (``vae_decoder``): config checks, save/load, safety, codec."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch

from helpers import CONFIGS, build_tiny_model, make_image
from oscar.coding.codec import OscarCodec
from oscar.config import ModelConfig, VaeDecoderConfig
from oscar.errors import ConfigError, ModelError
from oscar.models.inference import InplaceSiLU, SubpixelUpsample2D
from oscar.models.vae_decoder import PixelShuffleDecoder
from oscar.store.pretrained import load_model, save_model

LIGHTER = {"block_out_channels": [8, 8], "layers_per_block": 0, "pixel_shuffle": 4}


def lighter_config(**decoder) -> ModelConfig:
    data = json.loads((CONFIGS / "tiny.json").read_text())
    data["vae_decoder"] = {**LIGHTER, **decoder}
    return ModelConfig.from_dict(data)


@pytest.fixture(scope="module")
def lighter_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("lighter")
    save_model(build_tiny_model(0, lighter_config()), path)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pixel_shuffle": 2}, "upsamples 4x"),
        ({"pixel_shuffle": 3}, "pixel_shuffle"),
        ({"pixel_shuffle": 2.0}, "pixel_shuffle"),
        ({"block_out_channels": [8, 10**6]}, "not in 1..4096"),
        ({"block_out_channels": []}, "non-empty"),
        ({"block_out_channels": 8}, "must be a list"),
        ({"layers_per_block": 100}, "layers_per_block"),
        ({"layers_per_block": True}, "layers_per_block"),
        ({"layers_per_block": [0]}, "1 entries for 2 blocks"),
        ({"layers_per_block": [0, 9]}, "layers_per_block"),
        ({"width": 3}, "unknown vae_decoder field"),
    ],
)
def test_bad_decoder_settings_are_config_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        lighter_config(**change)


def test_config_round_trip_and_models_without_it_keep_their_json():
    config = lighter_config()
    assert config.vae_decoder == VaeDecoderConfig((8, 8), 0, 4)
    assert ModelConfig.from_dict(json.loads(config.to_json())) == config
    plain = ModelConfig.from_json_file(CONFIGS / "tiny.json")
    assert "vae_decoder" not in plain.to_dict()  # so their fingerprints do not change
    with pytest.raises(ConfigError, match="base_model"):
        ModelConfig.from_dict({**config.to_dict(), "base_model": "sd21"})


def test_save_load_gives_the_same_decoder_and_pixels(lighter_dir):
    model = build_tiny_model(0, lighter_config())
    loaded = load_model(lighter_dir).model
    assert isinstance(loaded.vae.decoder, PixelShuffleDecoder)
    assert loaded.config.vae_decoder == model.config.vae_decoder
    # vae/config.json is the VAE's own config; oscar.json says which decoder its weights are.
    vae_json = json.loads((lighter_dir / "vae" / "config.json").read_text())
    assert vae_json["up_block_types"] == model.config.vae["up_block_types"]
    assert json.loads((lighter_dir / "oscar.json").read_text())["config"]["vae_decoder"] == LIGHTER
    x = torch.rand(1, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        expected = model.decode_latent(model.encode_latent(x))
        got = loaded.decode_latent(loaded.encode_latent(x))
    assert got.shape == x.shape
    assert torch.equal(got, expected)
    plain = build_tiny_model(0)
    decoder_params = sum(p.numel() for p in loaded.vae.decoder.parameters())
    assert decoder_params < sum(p.numel() for p in plain.vae.decoder.parameters())


def test_per_block_depths_build_what_diffusers_builds_at_each_depth():
    vae = json.loads((CONFIGS / "small.json").read_text())["vae"]
    mixed = PixelShuffleDecoder(VaeDecoderConfig((32, 64, 128), (2, 1, 0), 2), vae)
    # up_blocks run from the lowest resolution: the reverse of block_out_channels.
    assert [len(block.resnets) for block in mixed.up_blocks] == [1, 2, 3]
    assert VaeDecoderConfig((32, 64, 128), (1, 1, 1), 2).depths == (1, 1, 1)
    assert ModelConfig.from_dict(json.loads(lighter_config(layers_per_block=[1, 0]).to_json()))
    for depth in (0, 1, 2):
        # Each block is the one a uniform-depth diffusers Decoder builds, tensor for tensor
        # and in behaviour.
        uniform = PixelShuffleDecoder(VaeDecoderConfig((32, 64, 128), depth, 2), vae).eval()
        block = depth  # (2, 1, 0) reversed
        ours, theirs = mixed.up_blocks[block].eval(), uniform.up_blocks[block]
        ours.load_state_dict(theirs.state_dict())  # strict: same names and shapes
        x = torch.randn(1, (128, 128, 64)[block], 6, 5)
        with torch.no_grad():
            assert torch.equal(ours(x), theirs(x))


def test_per_block_depths_save_and_load(tmp_path):
    model = build_tiny_model(0, lighter_config(layers_per_block=[1, 0]))
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m").model
    assert [len(b.resnets) for b in loaded.vae.decoder.up_blocks] == [1, 2]
    meta = json.loads((tmp_path / "m" / "oscar.json").read_text())
    assert meta["config"]["vae_decoder"]["layers_per_block"] == [1, 0]
    x = torch.rand(1, 3, 32, 40) * 2 - 1
    with torch.no_grad():
        latent = model.encode_latent(x)
        assert torch.equal(loaded.decode_latent(latent), model.decode_latent(latent))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("vae_decoder"), "does not match the architecture"),
        (lambda c: c["vae_decoder"].update(layers_per_block=1), "does not match the architecture"),
        (lambda c: c["vae_decoder"].update(block_out_channels=[8, 4096]), "more weights"),
        (lambda c: c["vae_decoder"].update(pixel_shuffle=16), "pixel_shuffle"),
    ],
)
def test_a_decoder_description_that_does_not_fit_is_refused_quickly(
    lighter_dir, tmp_path, edit, message
):
    copy = tmp_path / "model"
    shutil.copytree(lighter_dir, copy)
    meta = json.loads((copy / "oscar.json").read_text())
    edit(meta["config"])
    (copy / "oscar.json").write_text(json.dumps(meta))
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match=message):
        load_model(copy)
    assert time.perf_counter() - t0 < 30


def test_the_codec_optimises_the_lighter_decoder_and_round_trips(lighter_dir):
    fast = OscarCodec.from_pretrained(lighter_dir, device="cpu")
    plain = OscarCodec.from_pretrained(lighter_dir, device="cpu", optimize=False)
    decoder = fast.model.vae.decoder
    assert any(isinstance(m, SubpixelUpsample2D) for m in decoder.modules())
    assert any(isinstance(m, InplaceSiLU) for m in decoder.modules())
    for seed, level in [(0, 0), (1, 7)]:
        image = make_image(72, 104, seed=seed)
        data = fast.compress(image, level)
        assert data == plain.compress(image, level)
        decoded = fast.decompress(data)
        assert decoded.shape == image.shape
        assert np.abs(decoded.astype(int) - plain.decompress(data).astype(int)).max() <= 1
        assert np.array_equal(fast.decompress(data), decoded)  # deterministic
