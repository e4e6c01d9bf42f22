"""``oscar bench``: every stage measured, valid JSON, and the stage hook times the codec's path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import make_image
from oscar.bench.timing import BenchConfig, bench_image, parse_size, run_isolated
from oscar.cli import main
from oscar.errors import ConfigError
from oscar.runtime.stages import DECODE_STAGES, ENCODE_STAGES, STAGES, recording


class _Names:
    def __init__(self):
        self.names = []

    def measure(self, name):
        from contextlib import nullcontext

        self.names.append(name)
        return nullcontext()


def test_codec_marks_every_stage_in_order(tiny_codec):
    rec = _Names()
    with recording(rec):
        data = tiny_codec.compress(make_image(40, 60), 4)
        tiny_codec.decompress(data, steps=2)
    assert rec.names == list(STAGES)
    plain = _Names()  # outside the block nothing is recorded
    tiny_codec.compress(make_image(40, 60), 4)
    assert plain.names == []


def test_sizes_and_image():
    assert parse_size("768x512") == (512, 768)
    for bad in ("768", "0x5", "axb"):
        with pytest.raises(ValueError):
            parse_size(bad)
    image = bench_image(1100, 1700)
    assert image.shape == (1100, 1700, 3) and image.dtype == np.uint8
    assert np.array_equal(bench_image(512, 768), bench_image(1100, 1700)[:512, :768])


def _check_result(result, steps):
    for path, stages in [(result["encode"], ENCODE_STAGES)] + [
        (result["decode"][str(s)], DECODE_STAGES) for s in steps
    ]:
        assert set(path["stages"]) == {*stages, "other"}
        for name in stages:
            stats = path["stages"][name]["wall_s"]
            assert stats["n"] == result["config"]["repeats"] and stats["median"] >= 0
            assert stats["min"] <= stats["median"] <= stats["max"]
        assert path["total"]["wall_s"]["median"] > 0 and path["peak_memory_mb"] > 0
        assert path["images_per_s"] > 0
    assert result["decode"]["1"]["time_vs_one_step"] == 1.0
    assert result["file_bytes"] > 0 and result["deterministic"]
    # The machine's float32 speed, measured in the same process: finite and plausible.
    gflops = result["runtime"]["float32_gflops"]
    assert set(gflops) == {"matmul", "conv3x3"}
    assert all(0.1 < value < 1e6 for value in gflops.values())


def _no_constant(name):
    raise AssertionError(f"{name} is not valid JSON")


def test_bench_command_writes_json(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    argv = ["bench", "--model", str(tiny_model_dir), "--sizes", "64x48", "--steps", "1,2"]
    argv += ["--batch", "1,2", "--repeats", "1", "--warmup", "0", "--no-isolate", "-o", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "vae_decode" in printed and "hyper_synthesis" in printed
    assert "GFLOP/s (matmul)" in printed
    doc = json.loads(out.read_text(), parse_constant=_no_constant)  # strict JSON: no NaN
    assert doc["schema"] == "oscar-bench/1"
    assert {"cpu", "usable_cpus", "torch_threads"} <= set(doc["machine"])
    assert doc["versions"]["torch"] and "commit" in doc["git"]
    assert len(doc["results"]) == 2
    for result in doc["results"]:
        assert result["config"]["level"] == 7 and result["config"]["width"] == 64
        _check_result(result, [1, 2])
        assert result["encode"]["total"]["gflop"] > 0 and result["decode"]["2"]["total"]["gflop"]
    from oscar.bench.report import describe_environment

    doc["git"] = {"commit": "ab" * 20, "dirty": True, "changed": ["a", "b"], "changed_count": 2}
    assert "commit ababababab (dirty: 2 changed files)" in describe_environment(doc)


def test_bench_without_flop_counting_with_encoder_effort(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    argv = ["bench", "--model", str(tiny_model_dir), "--sizes", "40x24", "--steps", "1"]
    argv += ["--repeats", "1", "--warmup", "0", "--no-flops", "--no-isolate", "-o", str(out)]
    assert main([*argv, "--effort", "0,2"]) == 0
    plain, searched = json.loads(out.read_text())["results"]
    for result in (plain, searched):
        _check_result(result, [1])
        assert "gflop" not in result["encode"]["total"]
    assert (plain["config"]["effort"], searched["config"]["effort"]) == (0, 2)
    assert searched["encode"]["stages"]["index_search"]["wall_s"]["median"] > 0
    printed = capsys.readouterr().out
    tables = printed.split("\n", 1)[1]  # after the environment line, which gives GFLOP/s
    assert "GFLOP" not in tables and "40x24 effort 2" in printed


def test_bench_counts_flops_with_encoder_effort(tiny_model_dir, tmp_path):
    # FLOP counting hooks the autograd graph that the index search differentiates through.
    out = tmp_path / "results.json"
    argv = ["bench", "--model", str(tiny_model_dir), "--sizes", "40x24", "--steps", "1"]
    argv += ["--repeats", "1", "--warmup", "0", "--no-isolate", "--effort", "1", "-o", str(out)]
    assert main(argv) == 0
    (result,) = json.loads(out.read_text())["results"]
    assert result["encode"]["stages"]["index_search"]["gflop"] > 0


def test_bench_usage_errors(tiny_model_dir, capsys):
    base = ["bench", "--model", str(tiny_model_dir), "--no-isolate", "--repeats", "1"]
    assert main([*base, "--sizes", "64"]) == 1
    assert main([*base, "--levels", "9"]) == 1
    assert main([*base, "--steps", "x"]) == 2
    assert main([*base, "--dtype", "float8"]) == 1
    assert main([*base, "--warmup", "-1"]) == 2
    assert main([*base, "--effort", "65"]) == 1
    assert main([*base, "--sizes", "64x48", "--steps", "1,999"]) == 1
    assert "steps" in capsys.readouterr().err


def test_default_level_allows_the_steps(tiny_config):
    from dataclasses import replace

    from oscar.commands.bench import default_level

    levels = tuple(replace(lv, timestep=8) if lv.level == 7 else lv for lv in tiny_config.levels)
    config = replace(tiny_config, levels=levels)  # like the embedded model: level 7 at t = 8
    assert default_level(config, 1) == 7 and default_level(config, 8) == 7
    assert default_level(config, 20) == 6  # the next rate down whose timestep allows 20 steps
    with pytest.raises(ConfigError, match="1000 decoding steps"):
        default_level(config, 1000)


def test_isolated_run_with_bfloat16(tiny_model_dir):
    config = BenchConfig(
        str(tiny_model_dir), 48, 64, steps=(1,), dtype="bfloat16", repeats=1, warmup=0
    )
    result = run_isolated(config)
    _check_result(result, [1])
    assert result["runtime"]["dtype"] == "bfloat16" and result["runtime"]["allocator_tuned"]
    assert 0 <= result["vs_float32"]["indices_equal_fraction"] <= 1
    only = result["decode_only"]  # a second fresh process decoded the file once
    assert only["peak_memory_mb"] >= only["start_memory_mb"] > 0
    assert {"parse", "unet", "vae_decode"} <= set(only["stage_peak_memory_mb"])
