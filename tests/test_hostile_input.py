"""Hostile and careless input, round two (issue 30): each numbered case of the issue.

1. Cost bounded by what the user allowed: the default pixel limit, the memory budget.
2. Bounded reads of every file in a model folder.
3. Determinism across thread counts (test_determinism.py, slow: the embedded model).
4. No hangs, no leftovers: special files refused, temporary files removed on signals,
   an output that is an input refused, temporary files written through their descriptor.
5. Valid but expensive files (oscar.fuzz.expensive).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from helpers import make_image
from oscar.cli import main
from oscar.errors import ConfigError, ImageError, ModelError, OutputError
from oscar.io import atomic_output, load_image
from oscar.limits import DEFAULT_MAX_PIXELS, default_max_memory

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".oscar-tmp-" in p.name)


# ----------------------------------------------------------------------------- 1. cost
def test_default_pixel_limit_is_pillows_and_shown_in_help(capsys):
    assert DEFAULT_MAX_PIXELS == 2 * 89_478_485 == 2 * Image.MAX_IMAGE_PIXELS
    for command in ("compress", "decompress"):
        try:
            assert main([command, "--help"]) in (0, None)
        except SystemExit as exc:
            assert exc.code == 0
        out = " ".join(capsys.readouterr().out.split())
        assert f"default {DEFAULT_MAX_PIXELS}" in out and "--max-memory" in out


def test_default_memory_budget_is_half_the_usable_memory_as_a_power_of_two(monkeypatch):
    import oscar.limits

    monkeypatch.setattr(oscar.limits, "usable_memory", lambda: 23 * 2**30)
    assert default_max_memory() == 8 * 2**30
    monkeypatch.setattr(oscar.limits, "usable_memory", lambda: 6 * 2**30)  # e.g. ulimit -v
    assert default_max_memory() == 2 * 2**30
    monkeypatch.setattr(oscar.limits, "usable_memory", lambda: None)
    assert default_max_memory() is None


def test_compress_over_the_memory_budget_is_refused_before_decoding(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    import oscar.io

    Image.new("RGB", (2048, 2048), (90, 120, 200)).save(tmp_path / "a.png")
    monkeypatch.setattr(oscar.io, "to_rgb", lambda image: pytest.fail("pixels were decoded"))
    out = tmp_path / "a.oscar"
    args = ["compress", str(tmp_path / "a.png"), "-o", str(out), "--model", str(tiny_model_dir)]
    assert main([*args, "--max-memory", "100M"]) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "--max-memory 100 MiB is too small for a 2048x2048" in lines[0]
    assert not out.exists() and _leftovers(tmp_path) == []


def test_allowed_16384_square_file_stops_with_one_line(
    tiny_codec, tiny_model_dir, tmp_path, capsys
):
    """A valid 16384 x 16384 file, allowed by a raised --max-pixels, under a budget it cannot
    fit: one line naming the size and --max-memory, before anything is allocated for it."""
    from oscar.coding.bitstream import Limits
    from oscar.coding.codec import OscarCodec
    from oscar.fuzz.expensive import expensive_file

    codec = OscarCodec(tiny_codec.loaded, limits=Limits(max_pixels=16384**2))
    (tmp_path / "big.oscar").write_bytes(expensive_file(codec, 0, 16384, 16384))
    out = tmp_path / "big.png"
    args = ["decompress", str(tmp_path / "big.oscar"), "-o", str(out)]
    args += ["--model", str(tiny_model_dir), "--max-pixels", str(16384**2), "--max-memory", "4G"]
    t0 = time.perf_counter()
    assert main(args) == 1
    assert time.perf_counter() - t0 < 10
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "16384x16384" in lines[0] and "--max-memory" in lines[0]
    assert "internal error" not in lines[0] and not out.exists()
    assert main(args[:-4]) == 1  # the default pixel limit: refused from the header
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "16384x16384" in lines[0] and "--max-pixels" in lines[0]


# ----------------------------------------------------------------------------- 2. model files
@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    return copy


@pytest.mark.parametrize(
    "name",
    [
        "oscar.json",
        "vae/config.json",
        "unet/config.json",
        "scheduler/scheduler_config.json",
        "priors.safetensors",
    ],
)
def test_huge_model_metadata_is_refused_without_reading_it(model_copy, name):
    from oscar.store.pretrained import load_model

    path = model_copy / name
    if not path.exists():
        pytest.skip(f"the tiny model has no {name}")
    with open(path, "r+b") as f:
        f.truncate(4 * 2**30)  # sparse: 4 GiB announced, nothing on disk
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match=rf"{path.name}.*larger than \d+ bytes"):
        load_model(model_copy)
    assert time.perf_counter() - t0 < 10


def test_model_metadata_that_is_a_fifo_does_not_hang(model_copy):
    from oscar.store.pretrained import load_model

    path = model_copy / "oscar.json"
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(ModelError, match=r"oscar\.json.*not a regular file \(a FIFO\)"):
        load_model(model_copy)


def test_huge_safetensors_header_is_refused(tmp_path):
    from oscar.store.diffusers_io import read_safetensors

    path = tmp_path / "w.safetensors"
    path.write_bytes((64 * 2**20).to_bytes(8, "little") + b"{" + b" " * 100)
    with pytest.raises(ModelError, match=r"w\.safetensors"):
        read_safetensors(path, "weights")


# ----------------------------------------------------------------------------- 4. hangs, leftovers
def test_special_files_are_refused_in_both_directions(tiny_model_dir, tmp_path):
    """A FIFO (which used to hang compress), a device and a folder, through the CLI in a
    subprocess with a timeout: a hang fails the test instead of blocking it."""
    fifo_png, fifo_oscar = tmp_path / "fifo.png", tmp_path / "fifo.oscar"
    os.mkfifo(fifo_png)
    os.mkfifo(fifo_oscar)
    out_oscar, out_png = str(tmp_path / "out.oscar"), str(tmp_path / "out.png")
    cases = [
        (["compress", str(fifo_png), "-o", out_oscar], "not a regular file (a FIFO)"),
        (["decompress", str(fifo_oscar), "-o", out_png], "not a regular file (a FIFO)"),
    ]
    if os.path.exists("/dev/zero"):
        cases.append((["compress", "/dev/zero", "-o", out_oscar], "a character device"))
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    for command, message in cases:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "oscar.cli",
                *command,
                "--model",
                str(tiny_model_dir),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert run.returncode == 1, run.stderr
        assert message in run.stderr and "Traceback" not in run.stderr
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)


def test_output_that_is_an_input_is_refused_even_with_force(tiny_model_dir, tmp_path, capsys):
    """Inputs are read by content, so an image named x.oscar (or a file x.png) can be both."""
    for command, suffix in (("compress", ".oscar"), ("decompress", ".png")):
        source = tmp_path / f"same-{command}{suffix}"
        Image.fromarray(make_image(32, 32)).save(source, format="PNG")
        before = source.read_bytes()
        hard, link = tmp_path / f"hard-{command}{suffix}", tmp_path / f"link-{command}{suffix}"
        os.link(source, hard)
        link.symlink_to(source)
        for output in (source, hard, link):
            args = [command, str(source), "-o", str(output), "--force"]
            assert main([*args, "--model", str(tiny_model_dir)]) == 1
            err = capsys.readouterr().err
            assert "is the input" in err and "even with --force" in err, err
        assert source.read_bytes() == before


def test_temporary_file_is_written_through_its_descriptor(tmp_path):
    target = tmp_path / "out.oscar"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    with pytest.raises(OutputError, match="was replaced"), atomic_output(target) as out:
        (tmp,) = [p for p in tmp_path.iterdir() if p.name.startswith(".out.oscar.oscar-tmp-")]
        assert os.fstat(out.fileno()).st_ino == tmp.stat().st_ino
        tmp.unlink()  # an attacker swaps the name for a link to another file
        tmp.symlink_to(victim)
        out.write(b"data")
    assert victim.read_bytes() == b"keep" and not target.exists()
    assert _leftovers(tmp_path) == []


_WRITER = """
import sys, time
from oscar.io import atomic_output
with atomic_output(sys.argv[1]) as out:
    out.write(b"half")
    out.flush()
    print("ready", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_temporary_files_are_removed_on_signals(tmp_path, signum):
    target = tmp_path / "out.png"
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert len(_leftovers(tmp_path)) == 1  # named .out.png.oscar-tmp-XXXXXXXX
        proc.send_signal(signum)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode != 0
    if signum == signal.SIGTERM:
        assert proc.returncode == -signal.SIGTERM  # still dies of the signal
    assert _leftovers(tmp_path) == [] and not target.exists()


def test_config_file_reads_are_bounded(tmp_path):
    from oscar.config import ModelConfig

    path = tmp_path / "big.json"
    with open(path, "wb") as f:
        f.truncate(2**30)
    with pytest.raises(ConfigError, match="larger than"):
        ModelConfig.from_json_file(path)


# ----------------------------------------------------------------------------- 5. fuzzer
def test_expensive_mode_measures_cost_per_byte(tiny_codec):
    from oscar.fuzz.expensive import expensive_file, run

    data = expensive_file(tiny_codec, 0, 64, 64)
    assert tiny_codec.decompress(data).shape == (64, 64, 3)  # valid
    result = run(tiny_codec, [16, 32], levels=[0, 7], timeout=60)
    assert len(result["records"]) == 4
    assert all(r["outcome"] == "decoded" and r["peak_bytes"] >= 0 for r in result["records"])
    worst = result["worst_seconds_per_byte"]
    assert worst["seconds_per_byte"] == max(r["seconds_per_byte"] for r in result["records"])
    assert result["worst_memory_per_byte"]["file_bytes"] > 0
