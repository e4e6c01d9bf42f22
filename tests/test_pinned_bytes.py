"""Pinned bytes and pixels: files made with the seeded tiny model, and the images they decode
to, must not change when code moves. The digests were recorded before the source tree was
reorganised into subpackages; a refactor that changes one of them changed behaviour.

If a change is meant to alter the output (a new encoder decision, a format version), update the
digests in the same commit and say why in its message.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from helpers import make_image
from oscar.cli import main

# (image size, seed, level, coder) → (file SHA-256, decoded pixels SHA-256), 16 hex digits each.
CASES = {
    ((64, 64), 0, 0, "auto"): ("d660b11088f1d928", "9b5063273230a1fc"),
    ((64, 64), 0, 4, "auto"): ("f9842ed922b188b9", "54959de2d0d9678a"),
    ((64, 64), 0, 7, "fixed"): ("fc214cc9d53c3091", "31b5245689587036"),
    ((48, 80), 1, 1, "auto"): ("5dc90da34fa68196", "ebc963e50fa76525"),
    ((48, 80), 1, 3, "entropy"): ("dbd55f5ddc24229b", "8348c94ecc69f10e"),
    ((70, 33), 2, 6, "auto"): ("bf7ff85d54766628", "72297ca0a5cf3c84"),
}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@pytest.mark.parametrize(("size", "seed", "level", "coder"), list(CASES))
def test_file_and_pixels_are_pinned(tiny_codec, size, seed, level, coder):
    image = make_image(*size, seed=seed)
    data = tiny_codec.compress(image, level, coder=coder)
    pixels = tiny_codec.decompress(data)
    assert pixels.shape == (*size, 3) and pixels.dtype == np.uint8
    assert (_digest(data), _digest(pixels.tobytes())) == CASES[(size, seed, level, coder)]


def test_greyscale_and_steps_are_pinned(tiny_codec):
    """A greyscale source (one channel back) decoded with two DDIM steps."""
    grey = make_image(40, 56, seed=3)[:, :, 0]
    data = tiny_codec.compress(grey, 5)
    pixels = tiny_codec.decompress(data, steps=2)
    assert pixels.shape == (40, 56)
    assert (_digest(data), _digest(pixels.tobytes())) == ("e142f11aa0d8814b", "f20c8425917f51c2")


def test_budget_and_command_line_are_pinned(tiny_codec, tiny_model_dir, tmp_path):
    """compress_to_budget picks the same level and bytes; the ``oscar`` command writes the same
    file and decodes it to the same pixels (through PNG)."""
    image = make_image(64, 64, seed=0)
    result = tiny_codec.compress_to_budget(image, max_bytes=31)
    assert (result.level, _digest(result.data)) == (4, "f9842ed922b188b9")

    Image.fromarray(image).save(tmp_path / "a.png")
    model = ["--model", str(tiny_model_dir), "--device", "cpu"]
    compress = ["compress", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.oscar")]
    assert main([*compress, "--level", "7", "--coder", "fixed", *model]) == 0
    assert _digest((tmp_path / "a.oscar").read_bytes()) == "fc214cc9d53c3091"
    decompress = ["decompress", str(tmp_path / "a.oscar"), "-o", str(tmp_path / "b.png")]
    assert main([*decompress, *model]) == 0
    pixels = np.asarray(Image.open(tmp_path / "b.png"))
    assert _digest(pixels.tobytes()) == "31b5245689587036"
