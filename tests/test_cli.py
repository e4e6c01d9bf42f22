"""The ``oscar`` command, through main(argv) and through the installed entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import CONFIGS, make_image
from oscar.cli import main


def test_compress_info_decompress(tiny_model_dir, tmp_path, capsys):
    Image.fromarray(make_image(70, 90)).save(tmp_path / "a.png")
    m = str(tiny_model_dir)
    assert (
        main(
            [
                "compress",
                str(tmp_path / "a.png"),
                "-o",
                str(tmp_path / "a.oscar"),
                "--model",
                m,
                "--level",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert main(["info", str(tmp_path / "a.oscar"), "--model", m, "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    size = (tmp_path / "a.oscar").stat().st_size
    assert info["file_bytes"] == size
    assert info["measured_bpp"] == size * 8 / (70 * 90)
    assert info["level"] == 2 and info["tokens"] == [8, 8]
    assert info["nominal_bpp"] == 8 / 256
    assert (
        main(
            [
                "decompress",
                str(tmp_path / "a.oscar"),
                "-o",
                str(tmp_path / "a.png.out.png"),
                "--model",
                m,
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "a.png.out.png").size == (90, 70)


def test_info_without_files_describes_the_model(tiny_model_dir, tmp_path, capsys):
    from oscar.store.pretrained import load_model

    loaded = load_model(tiny_model_dir)
    m = str(tiny_model_dir)
    assert main(["info", "--model", m, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["fingerprint"] == loaded.fingerprint.hex()
    assert info["parameters"]["total"] == sum(p.numel() for p in loaded.model.parameters())
    assert info["embedded"] is False and info["lora"] is None and info["priors"] is True
    rates = loaded.model.config.levels
    assert [lv["level"] for lv in info["levels"]] == [r.level for r in rates]
    assert [lv["nominal_bpp"] for lv in info["levels"]] == [r.nominal_bpp for r in rates]
    for lv in info["levels"]:  # the priors' entropy, within 0..log2 K bits
        assert 0 < lv["prior_entropy_bits"] <= np.log2(lv["codebook_size"]) + 1e-9

    # Files made with the model carry the fingerprint's first bytes, as `info` says.
    Image.fromarray(make_image(40, 40)).save(tmp_path / "a.png")
    assert main(["compress", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.oscar"),
                 "--model", m]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["info", str(tmp_path / "a.oscar"), "--model", m, "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["fingerprint"] == info["file_fingerprint"]
    level = described["level"]

    # A level the model's rate table lacks: the header is still shown, with a note.
    fewer = tmp_path / "fewer-levels"
    shutil.copytree(tiny_model_dir, fewer)
    meta = json.loads((fewer / "oscar.json").read_text())
    meta["config"]["levels"] = [lv for lv in meta["config"]["levels"] if lv["level"] != level]
    (fewer / "oscar.json").write_text(json.dumps(meta))
    assert main(["info", str(tmp_path / "a.oscar"), "--model", str(fewer)]) == 0
    assert f"level           {level}  (not in the model's rate table)" in capsys.readouterr().out

    assert main(["info", "--model", m]) == 0
    text = capsys.readouterr().out
    assert info["fingerprint"] in text and "files made with it carry" in text
    assert main(["info", "--model", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["info", m]) == 1  # a model directory given as a file: a pointer, once
    assert capsys.readouterr().err.strip() == (
        f"oscar: error: {m} is a model directory: `oscar info --model {m}` describes it"
    )


def test_folder_batch_with_a_bad_file(tiny_model_dir, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(make_image(20, 30)).save(src / "x.png")
    Image.fromarray(make_image(25, 15)).save(src / "sub" / "y.jpg")
    (src / "broken.png").write_bytes(b"not a png")
    code = main(
        [
            "compress",
            str(src),
            "-o",
            str(tmp_path / "out"),
            "--model",
            str(tiny_model_dir),
            "--bpp",
            "0.03",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.png" in err and "1 of 3 files failed" in err
    assert sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.oscar")
    ) == ["sub/y.oscar", "x.oscar"]
    assert not list((tmp_path / "out").rglob("*.oscar-tmp-*"))
    assert (
        main(
            [
                "decompress",
                str(tmp_path / "out"),
                "-o",
                str(tmp_path / "rec"),
                "--model",
                str(tiny_model_dir),
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "rec" / "sub" / "y.png").size == (15, 25)


def test_no_overwrite_without_force(tiny_model_dir, tmp_path, capsys):
    Image.fromarray(make_image(20, 20)).save(tmp_path / "a.png")
    (tmp_path / "a.oscar").write_bytes(b"keep me")
    args = [
        "compress",
        str(tmp_path / "a.png"),
        "-o",
        str(tmp_path / "a.oscar"),
        "--model",
        str(tiny_model_dir),
    ]
    assert main(args) == 1
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "a.oscar").read_bytes() == b"keep me"
    assert main([*args, "--force"]) == 0
    assert (tmp_path / "a.oscar").read_bytes()[:3] == b"OSC"


def test_max_bytes(tiny_model_dir, tmp_path, capsys):
    Image.fromarray(make_image(64, 64)).save(tmp_path / "a.png")
    base = ["compress", str(tmp_path / "a.png"), "--model", str(tiny_model_dir)]
    assert main([*base, "-o", str(tmp_path / "a.oscar"), "--max-bytes", "400"]) == 0
    assert (tmp_path / "a.oscar").stat().st_size <= 400
    assert main([*base, "-o", str(tmp_path / "b.oscar"), "--max-bytes", "3"]) == 1
    assert "no level fits in 3 bytes" in capsys.readouterr().err
    assert not (tmp_path / "b.oscar").exists()


def test_user_errors_are_one_line(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "junk.oscar").write_bytes(b"OSC\x01garbage")
    code = main(
        [
            "decompress",
            str(tmp_path / "junk.oscar"),
            "-o",
            str(tmp_path / "j.png"),
            "--model",
            str(tiny_model_dir),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "j.png").exists()
    assert (
        main(
            [
                "compress",
                str(tmp_path / "nope.png"),
                "-o",
                str(tmp_path / "n.oscar"),
                "--model",
                str(tiny_model_dir),
            ]
        )
        == 1
    )
    assert main(["compress", "-o", "x"]) == 2  # usage error
    assert main(["compress", "a.png", "-o", "x", "--level", "1", "--bpp", "0.1"]) == 2
    assert (
        main(
            [
                "decompress",
                str(tmp_path / "junk.oscar"),
                "-o",
                "x.png",
                "--model",
                str(tmp_path / "no_model"),
            ]
        )
        == 1
    )


def test_init_and_fit_priors(tmp_path, sample_dir, capsys):
    out = tmp_path / "m"
    assert main(["init", str(CONFIGS / "tiny.json"), "-o", str(out), "--seed", "4"]) == 0
    assert main(["init", str(CONFIGS / "tiny.json"), "-o", str(out)]) == 1  # not empty
    assert main(["fit-priors", str(out), str(sample_dir), "--levels", "0,7"]) == 0
    table = capsys.readouterr().out
    assert "entropy" in table and "fingerprint is now" in table
    from oscar.store.pretrained import load_model

    priors = load_model(out).priors
    assert sorted(priors.tables) == [0, 7]


def test_fit_priors_counts_the_indices_of_the_effort_asked_for(tmp_path, sample_dir):
    """--effort N: the tables are those of the indices an encoder of that effort writes (the
    default: the encoder's default effort); efforts 0 and 4 give different tables here."""
    from oscar.coding.codec import OscarCodec
    from oscar.coding.effort import DEFAULT_EFFORT
    from oscar.coding.prior_fitting import fit_priors
    from oscar.store.pretrained import load_model

    base = tmp_path / "m"
    assert main(["init", str(CONFIGS / "tiny.json"), "-o", str(base)]) == 0
    images = sorted(sample_dir.glob("*.png"))
    tables = {}
    for effort in (0, DEFAULT_EFFORT):
        model = tmp_path / f"e{effort}"
        shutil.copytree(base, model)
        option = [] if effort == DEFAULT_EFFORT else ["--effort", str(effort)]
        assert main(["fit-priors", str(model), *map(str, images), "--levels", "0", *option]) == 0
        tables[effort] = load_model(model).priors.table(0)
        codec = OscarCodec.from_pretrained(base, device="cpu", effort=effort)
        expected, _ = fit_priors(codec, images, [0], progress=False)
        assert np.array_equal(tables[effort], expected.table(0))
    assert not np.array_equal(tables[0], tables[DEFAULT_EFFORT])


def test_installed_command(tiny_model_dir, tmp_path):
    exe = shutil.which("oscar") or str(__import__("pathlib").Path(sys.executable).parent / "oscar")
    Image.fromarray(make_image(33, 47)).save(tmp_path / "a.png")
    run = lambda *a: subprocess.run([exe, *a], capture_output=True, text=True)  # noqa: E731
    r = run(
        "compress",
        str(tmp_path / "a.png"),
        "-o",
        str(tmp_path / "a.oscar"),
        "--model",
        str(tiny_model_dir),
        "--level",
        "0",
    )
    assert r.returncode == 0, r.stderr
    r = run(
        "decompress",
        str(tmp_path / "a.oscar"),
        "-o",
        str(tmp_path / "b.png"),
        "--model",
        str(tiny_model_dir),
    )
    assert r.returncode == 0, r.stderr
    assert np.asarray(Image.open(tmp_path / "b.png")).shape == (33, 47, 3)
    r = run("info", str(tmp_path / "missing.oscar"))
    assert r.returncode == 1 and "no such file" in r.stderr
    assert run("--help").returncode == 0


def test_help_states_each_default_once(capsys):
    for command in ("bench", "decompress", "compress"):
        assert main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in text and "(default: False)" not in text
    assert main(["bench", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 1,4,20)" in text and "(default: embedded model) (default" not in text


def test_demo_prints_every_level(tiny_model_dir, tmp_path, capsys):
    Image.fromarray(make_image(64, 96)).save(tmp_path / "a.png")
    assert (
        main(
            [
                "demo",
                str(tmp_path / "a.png"),
                "--model",
                str(tiny_model_dir),
                "--repeats",
                "1",
                "-o",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines() if ln[:5].strip().isdigit()]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3, 4, 5, 6, 7]
    for r in rows:
        level = int(r[0])
        size = (tmp_path / "out" / f"level{level}.oscar").stat().st_size
        assert int(r[3]) == size and float(r[2]) == pytest.approx(size * 8 / (64 * 96), abs=1e-4)


def test_demo_with_encoder_effort(tiny_model_dir, tmp_path, capsys):
    from oscar.coding.codec import OscarCodec

    image = make_image(64, 96)
    Image.fromarray(image).save(tmp_path / "a.png")
    argv = ["demo", str(tmp_path / "a.png"), "--model", str(tiny_model_dir), "--repeats", "1"]
    assert main([*argv, "--effort", "2", "-o", str(tmp_path / "out")]) == 0
    assert "encoder effort 2" in capsys.readouterr().out
    searched = OscarCodec.from_pretrained(tiny_model_dir, device="cpu", effort=2)
    assert (tmp_path / "out" / "level4.oscar").read_bytes() == searched.compress(image, 4)


def test_export_float16(tiny_model_dir, tmp_path, capsys):
    assert main(["export", str(tiny_model_dir), "-o", str(tmp_path / "h")]) == 0
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "h" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in state.values()} == {__import__("torch").float16}
    Image.fromarray(make_image(20, 30)).save(tmp_path / "a.png")
    assert (
        main(
            [
                "compress",
                str(tmp_path / "a.png"),
                "-o",
                str(tmp_path / "a.oscar"),
                "--model",
                str(tmp_path / "h"),
            ]
        )
        == 0
    )
    # the file is tied to the float16 weights, not to the float32 original
    assert (
        main(
            [
                "decompress",
                str(tmp_path / "a.oscar"),
                "-o",
                str(tmp_path / "b.png"),
                "--model",
                str(tiny_model_dir),
            ]
        )
        == 1
    )
    assert "made with model" in capsys.readouterr().err
