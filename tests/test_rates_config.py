"""Rate table and model configuration."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import CONFIGS, build_tiny_model
from oscar.config import ModelConfig
from oscar.errors import ConfigError
from oscar.rates import DEFAULT_LADDER, RateLevel, nearest_level_by_bpp

# docs/method.md §2: (f, K) per level and the token grid of a 512×512 image.
EXPECTED_512 = {0: 8, 1: 16, 2: 32, 3: 32, 4: 64, 5: 64, 6: 64, 7: 64}


def test_default_ladder_nominal_rates():
    expected = [0.001953, 0.009766, 0.03125, 0.04297, 0.0625, 0.078125, 0.09375, 0.125]
    for level, bpp in zip(DEFAULT_LADDER, expected, strict=True):
        assert level.nominal_bpp == pytest.approx(bpp, rel=1e-3)
        assert level.nominal_bpp == math.log2(level.codebook_size) / level.grid_factor**2


@pytest.mark.parametrize("level", range(8))
def test_token_grid_512_matches_rate_table(level):
    rate = DEFAULT_LADDER[level]
    side = EXPECTED_512[level]
    assert rate.token_grid(512, 512) == (side, side)


def test_model_token_grids_512_match_rate_table(tiny_config):
    """The networks produce the grid the table promises (the original got levels 0-1 wrong)."""
    model = build_tiny_model().eval()
    with torch.no_grad():
        y = model.encode_latent(torch.zeros(1, 3, 512, 512))
        for rate in tiny_config.levels:
            indices = model.hyper_coder(rate.level).encode(y)
            side = EXPECTED_512[rate.level]
            assert tuple(indices.shape) == (1, side, side)
            assert tuple(model.hyper_coder(rate.level).decode(indices).shape) == tuple(y.shape)


def test_rate_level_validation():
    with pytest.raises(ConfigError):
        RateLevel(0, 12, 256, 100)
    with pytest.raises(ConfigError):
        RateLevel(0, 8, 1, 100)
    with pytest.raises(ConfigError):
        RateLevel(0, 8, 16, -1)


def test_bits_per_index_is_ceil_log2():
    assert RateLevel(0, 8, 16, 1).bits_per_index == 4
    assert RateLevel(0, 8, 17, 1).bits_per_index == 5
    assert RateLevel(0, 8, 2048, 1).bits_per_index == 11


def test_nearest_level_by_bpp():
    assert nearest_level_by_bpp(DEFAULT_LADDER, 0.03).level == 2
    assert nearest_level_by_bpp(DEFAULT_LADDER, 0.13).level == 7  # 10 % above the top: level 7
    assert nearest_level_by_bpp(DEFAULT_LADDER, 0.0019).level == 0
    for outside in (1.0, 0.0001):  # an error naming the range, not a silent clamp
        with pytest.raises(ConfigError, match=r"0\.001953 to 0\.125 bpp"):
            nearest_level_by_bpp(DEFAULT_LADDER, outside)
    with pytest.raises(ConfigError):
        nearest_level_by_bpp(DEFAULT_LADDER, 0)


@pytest.mark.parametrize("name", ["tiny", "small", "sd21"])
def test_shipped_configs_load_and_round_trip(name):
    config = ModelConfig.from_json_file(CONFIGS / f"{name}.json")
    again = ModelConfig.from_dict(json.loads(config.to_json()))
    assert again == config
    assert [lv.level for lv in config.levels] == list(range(8))
    assert config.pad_multiple == 64


def test_unknown_config_field_is_an_error(tmp_path):
    data = json.loads((CONFIGS / "tiny.json").read_text())
    data["hyper"]["hiden_channels"] = 3
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="hiden_channels"):
        ModelConfig.from_json_file(path)


def test_bad_config_values_are_errors(tmp_path):
    base = json.loads((CONFIGS / "tiny.json").read_text())
    cases = [
        ("levels", [{"level": 0, "grid_factor": 8, "codebook_size": 16, "timestep": 1}] * 2),
        ("prompt_length", 0),
        ("scheduler", {**base["scheduler"], "prediction_type": "flow"}),
    ]
    for key, value in cases:
        data = dict(base, **{key: value})
        with pytest.raises(ConfigError):
            ModelConfig.from_dict(data)
    with pytest.raises(ConfigError, match="not valid JSON"):
        (tmp_path / "x.json").write_text("{")
        ModelConfig.from_json_file(tmp_path / "x.json")


def test_token_grid_of_odd_sizes(tiny_config):
    # 65x257 pads to 128x320.
    assert tiny_config.token_grid(65, 257, 0) == (2, 5)
    assert tiny_config.token_grid(65, 257, 7) == (16, 40)
    assert tiny_config.token_grid(1, 1, 0) == (1, 1)
