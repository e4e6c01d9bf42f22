"""Multi-step decoding (``--steps N``): deterministic, and ``steps=1`` is the one-step decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import build_tiny_model, make_image
from oscar.cli import main
from oscar.coding.codec import OscarCodec
from oscar.errors import ConfigError
from oscar.models.schedule import x0_estimate


def test_one_step_denoise_is_the_one_step_formula():
    model = build_tiny_model(0).eval()
    z_t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = model.unet_output(z_t, torch.full((2,), 150))
        expected = x0_estimate(out, z_t, model.schedule.alpha_bar(150), "v_prediction")
        assert torch.equal(model.denoise(z_t, 150), expected)
        assert torch.equal(model.denoise(z_t, 150, steps=1), expected)


def test_steps_are_deterministic_and_one_is_the_default(tiny_codec):
    data = tiny_codec.compress(make_image(48, 80, seed=3), 7)
    default = tiny_codec.decompress(data)
    assert np.array_equal(tiny_codec.decompress(data, steps=1), default)
    four = tiny_codec.decompress(data, steps=4)
    assert np.array_equal(tiny_codec.decompress(data, steps=4), four)
    assert four.shape == default.shape and not np.array_equal(four, default)
    record = tiny_codec.unpack(data)
    assert np.array_equal(tiny_codec.decode(record, steps=4), four)
    with pytest.raises(ConfigError):
        tiny_codec.decode_batch([])
    batch = tiny_codec.decode_batch([record, record], steps=4)  # batched maths: rounding only
    assert np.array_equal(batch[0], batch[1])
    assert np.abs(batch[1].astype(int) - four).max() <= 2


def test_multi_step_decoding_draws_no_random_numbers(tiny_codec):
    data = tiny_codec.compress(make_image(32, 48, seed=5), 7)
    state = torch.get_rng_state()
    tiny_codec.decompress(data, steps=5)  # DDIM with eta = 0: no noise, no generator touched
    assert torch.equal(torch.get_rng_state(), state)


def test_steps_with_tiled_decoding(tiny_model_dir, tiny_codec):
    tiled = OscarCodec.from_pretrained(tiny_model_dir, device="cpu", tile_size=64)
    assert tiled.tiling("decode", 128, 192).unet is not None  # the UNet runs by tiles
    data = tiny_codec.compress(make_image(128, 192, seed=4), 7)
    three = tiled.decompress(data, steps=3)  # every DDIM step's UNet pass is tiled
    assert three.shape == (128, 192, 3) and np.array_equal(three, tiled.decompress(data, steps=3))
    assert np.array_equal(tiled.decompress(data, steps=1), tiled.decompress(data))


@pytest.mark.parametrize("steps", [0, -1, 151, 2.5, True])
def test_bad_steps_are_refused(tiny_codec, steps):
    data = tiny_codec.compress(make_image(16, 16), 7)  # level 7: timestep 150
    with pytest.raises(ConfigError, match="steps"):
        tiny_codec.decompress(data, steps=steps)


def test_cli_steps(tiny_model_dir, tiny_codec, tmp_path, capsys):
    from PIL import Image

    data = tiny_codec.compress(make_image(40, 56, seed=9), 6)
    (tmp_path / "a.oscar").write_bytes(data)
    m = str(tiny_model_dir)
    for steps in ("1", "3"):
        out = tmp_path / f"a{steps}.png"
        argv = ["decompress", str(tmp_path / "a.oscar"), "-o", str(out), "--model", m]
        assert main([*argv, "--steps", steps]) == 0
        expected = tiny_codec.decompress(data, steps=int(steps))
        assert np.array_equal(np.asarray(Image.open(out)), expected)
    argv = ["decompress", str(tmp_path / "a.oscar"), "-o", str(tmp_path / "b.png"), "--model", m]
    assert main([*argv, "--dtype", "bfloat16", "--steps", "2"]) == 0  # same file, other precision
    assert np.asarray(Image.open(tmp_path / "b.png")).shape == (40, 56, 3)
    assert main([*argv, "--steps", "0", "--force"]) == 2
    assert main([*argv, "--steps", "999", "--force"]) == 1
    assert "steps must be an integer from 1 to 170" in capsys.readouterr().err
