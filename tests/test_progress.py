"""The per-file progress bar of ``oscar compress`` / ``decompress`` (``oscar.runtime.progress``)."""

from __future__ import annotations

import io
import sys

import numpy as np
from PIL import Image

import oscar.runtime.progress
from helpers import make_image
from oscar.cli import main
from oscar.coding.codec import OscarCodec
from oscar.runtime.progress import StageProgress
from oscar.runtime.stages import DECODE_STAGES, ENCODE_STAGES, progress, recording, stage


def drawn(out: io.StringIO) -> list[str]:
    """The bar's successive states, as drawn (each redraw starts with a carriage return)."""
    return [s.strip() for s in out.getvalue().split("\r") if s.strip()]


def shown_bar(stages, label, out) -> StageProgress:
    return StageProgress(stages, label, file=out, disable=False, delay=0, interval=0)


def test_bar_follows_stages_steps_and_tiles(tiny_model_dir):
    codec = OscarCodec.from_pretrained(tiny_model_dir, device="cpu", tile_size=64)
    assert codec.tiling("decode", 128, 192).unet is not None
    data = codec.compress(make_image(128, 192, seed=1), 7)
    out = io.StringIO()
    with shown_bar(DECODE_STAGES, "x.oscar", out) as bar, recording(bar):
        image = codec.decompress(data, steps=3)
    states = drawn(out)
    assert np.array_equal(image, codec.decompress(data, steps=3))  # the bar changes nothing
    assert any(s.startswith("x.oscar: parse") and "0/5 stages" in s for s in states)
    unet = [s for s in states if s.startswith("x.oscar: unet")]
    tiles = codec.tiling("decode", 128, 192).unet
    assert tiles is not None
    for step in (1, 2, 3):
        assert any(f"(step {step}/3, tile 1/" in s for s in unet)
    assert not any("step 2/3, tile" in s and s.count("tile") > 1 for s in unet)
    assert any(s.startswith("x.oscar: vae_decode") for s in states)
    assert "5/5 stages" in states[-1]  # then close() clears the line


def test_a_new_step_drops_the_tile_count_of_the_last_one():
    out = io.StringIO()
    with shown_bar(("unet",), "f", out) as bar, recording(bar), stage("unet"):
        progress("step", 1, 2)
        progress("tile", 4, 4)
        progress("step", 2, 2)
    states = drawn(out)
    at = next(i for i, s in enumerate(states) if s.startswith("f: unet (step 1/2, tile 4/4) |"))
    assert states[at + 1].startswith("f: unet (step 2/2) |")


def test_repeated_stages_move_the_bar_back():
    out = io.StringIO()
    with shown_bar(ENCODE_STAGES, "f", out) as bar, recording(bar):
        for _ in range(2):  # --max-bytes encodes at several levels
            with stage("vae_encode"):
                pass
            with stage("hyper_analysis"):
                pass
        assert bar.bar.n == 3
        with stage("vae_encode"):
            assert bar.bar.n == 1


def test_nothing_is_drawn_before_the_delay_or_when_not_a_terminal():
    for options in (
        {"disable": False, "delay": 60},
        {"delay": 0, "interval": 0},  # not a terminal: tqdm's disable=None turns the bar off
    ):
        out = io.StringIO()
        with StageProgress(("a",), "f", file=out, **options) as bar, recording(bar), stage("a"):
            progress("step", 1, 2)
        assert out.getvalue() == ""


def test_progress_without_a_display_is_a_no_op():
    progress("step", 1, 2)  # no recorder installed

    class Timer:  # a recorder like oscar bench's: stages only
        def measure(self, name):
            return stage_context()

    from contextlib import nullcontext as stage_context

    with recording(Timer()):
        progress("tile", 1, 3)


def test_cli_draws_a_bar_per_file_on_a_terminal(tiny_model_dir, tmp_path, capsys, monkeypatch):
    Image.fromarray(make_image(64, 64)).save(tmp_path / "a.png")
    m = str(tiny_model_dir)
    assert (
        main(["compress", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.oscar"), "--model", m])
        == 0
    )
    err = capsys.readouterr().err
    assert err == ""  # pytest's stderr is no terminal: no bar

    class OnTerminal(StageProgress):
        def __init__(self, stages, label, **kwargs):
            kwargs.update(file=sys.stderr, disable=False, delay=0, interval=0)
            super().__init__(stages, label, **kwargs)

    monkeypatch.setattr(oscar.runtime.progress, "StageProgress", OnTerminal)
    args = ["decompress", str(tmp_path / "a.oscar"), "-o", str(tmp_path / "b.png"), "--model", m]
    assert main([*args, "--steps", "2"]) == 0
    captured = capsys.readouterr()
    assert "a.oscar: unet (step 2/2)" in captured.err
    assert "a.oscar: vae_decode" in captured.err
    assert captured.out.strip().endswith("b.png: 64x64")
