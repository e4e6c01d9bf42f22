"""What a new user meets first: usage errors that answer before anything heavy loads, strict
rates and suffixes, global flags anywhere, extras that are named before any work, the sample
image from an installed package."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from helpers import ROOT, make_image
from oscar.cli import main

SRC = str(ROOT / "src")


def _run_isolated(argv: list[str], cwd) -> dict:
    """Run the CLI in a fresh interpreter; report its exit code and which heavy modules it
    imported."""
    code = (
        "import json, sys\n"
        "from oscar.cli import main\n"
        f"rc = main({argv!r})\n"
        "heavy = [m for m in ('torch', 'diffusers') if m in sys.modules]\n"
        "print(json.dumps({'rc': rc, 'heavy': heavy}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    result["stderr"] = run.stderr
    return result


@pytest.fixture(scope="module")
def oscar_file(tmp_path_factory, tiny_codec):
    folder = tmp_path_factory.mktemp("file")
    (folder / "a.oscar").write_bytes(tiny_codec.compress(make_image(64, 96), 3))
    return folder / "a.oscar"


def test_usage_errors_answer_without_diffusers(tmp_path, tiny_model_dir):
    sample = str(ROOT / "src/oscar/assets/sample.png")
    cases = [
        (["compress", "missing.png", "-o", "x.oscar"], "missing.png: no such file"),
        (["compress", sample, "-o", "x.oscar", "--level", "99"], "level 99 is not in"),
        (["compress", sample, "-o", "x.oscar", "--bpp", "5"], "0.001953 to 0.125 bpp"),
        (["compress", sample, "-o", "x.png"], "compress writes .oscar files, not images"),
        (["decompress", "missing.oscar", "-o", "x.png"], "no such file"),
        (["compress", sample, "-o", "x.oscar", "--effort", "99"], "effort must be"),
    ]
    for argv, message in cases:
        result = _run_isolated(argv, tmp_path)
        assert result["rc"] == 1, (argv, result)
        assert result["heavy"] == [], (argv, result)  # answered before torch and diffusers
        lines = result["stderr"].strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (argv, result["stderr"])
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_help_and_version_import_nothing_heavy(tmp_path):
    for argv in (["--help"], ["--version"], ["compress", "--help"], ["info", "--version"]):
        result = _run_isolated(argv, tmp_path)
        assert result["rc"] == 0 and result["heavy"] == [], (argv, result)


def test_info_reads_headers_without_torch(oscar_file, tiny_model_dir):
    result = _run_isolated(["info", str(oscar_file), "--model", str(tiny_model_dir)], ROOT)
    assert result["rc"] == 0 and result["heavy"] == [], result


def test_decompress_refuses_an_output_without_an_image_suffix(oscar_file, tmp_path, capsys):
    for name in ("out", "out.oscar", "out.xyz"):
        assert main(["decompress", str(oscar_file), "-o", str(tmp_path / name)]) == 1
        assert "decompress writes images" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bpp_picks_the_nearest_level_inside_the_range(tiny_config):
    from oscar.errors import ConfigError
    from oscar.rates import nearest_level_by_bpp

    levels = tiny_config.levels
    top = max(lv.nominal_bpp for lv in levels)
    assert nearest_level_by_bpp(levels, top * 1.05).nominal_bpp == top
    with pytest.raises(ConfigError, match="outside this model's range"):
        nearest_level_by_bpp(levels, top * 1.2)


def test_global_flags_after_the_subcommand(oscar_file, tiny_model_dir, capsys):
    assert main(["info", str(oscar_file), "--model", str(tiny_model_dir), "-v"]) == 0
    assert main(["-v", "info", str(oscar_file), "--model", str(tiny_model_dir), "-vv"]) == 0
    assert main(["info", "--version"]) == 0
    assert capsys.readouterr().out.strip().endswith("oscar 0.1.0")


def test_eval_without_its_extras_fails_before_any_work(
    tmp_path, sample_dir, tiny_model_dir, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # as if not installed
    out = tmp_path / "out"
    argv = ["eval", str(sample_dir), "-o", str(out), "--model", str(tiny_model_dir)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "oscar: error: oscar eval needs imagecodecs (not installed): pip install "
        '"oscar-codec[eval]"'
    ]
    assert not out.exists()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the plots need it even without baselines
    assert main([*argv, "--baselines", "none"]) == 1
    assert "matplotlib" in capsys.readouterr().err and not out.exists()


def test_train_without_its_extras_names_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "accelerate", None)
    assert (
        main(["train", str(ROOT / "configs/train_tiny.yaml"), "--output-dir", str(tmp_path)]) == 1
    )
    assert 'pip install "oscar-codec[train]"' in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_sample_image_from_the_package():
    import oscar

    path = oscar.sample_image_path()
    assert path.is_file() and Image.open(path).size == (768, 512)


def test_train_without_its_data_says_how_to_make_it(tmp_path, monkeypatch, capsys):
    """Before any stage folder is made (a failed start leaves nothing behind)."""
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "train_tiny.yaml"
    recipe.write_text((ROOT / "configs" / "train_tiny.yaml").read_text())
    assert main(["train", str(recipe), "--output-dir", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    assert "data folder(s) not found" in err and "says how to make them" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_tiny.yaml"]
