"""Image input policy, pad/crop, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_image
from oscar.errors import ImageError, OutputExistsError
from oscar.io import atomic_output, crop, load_image, pad, save_image, to_rgb, write_bytes_atomic


def test_pad_crop_round_trip():
    x = torch.rand(1, 3, 65, 257)
    padded = pad(x, 64)
    assert padded.shape[-2:] == (128, 320)
    assert torch.equal(crop(padded, 65, 257), x)
    assert torch.equal(padded[..., 100, 300], x[..., 64, 256])  # edge replication
    assert pad(torch.rand(1, 3, 64, 64), 64).shape[-2:] == (64, 64)


def test_modes(tmp_path):
    rgb = make_image(20, 30)
    assert to_rgb(Image.fromarray(rgb)).rgb.tolist() == rgb.tolist()
    grey = to_rgb(Image.fromarray(rgb).convert("L"))
    assert grey.grey and np.array_equal(grey.rgb[..., 0], grey.rgb[..., 2])
    cmyk = to_rgb(Image.fromarray(rgb).convert("CMYK"))
    assert cmyk.rgb.shape == (20, 30, 3) and not cmyk.grey
    la = Image.fromarray(rgb).convert("LA")
    assert to_rgb(la).grey
    g16 = (np.arange(600).reshape(20, 30) * 100).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    loaded = load_image(tmp_path / "g16.png")
    assert loaded.grey
    assert np.array_equal(loaded.rgb[..., 0], np.rint(g16 / 257).astype(np.uint8))


def test_16bit_rgb_png_is_rounded_not_truncated(tmp_path):
    imagecodecs = pytest.importorskip("imagecodecs")
    a = (np.arange(2 * 3 * 3).reshape(2, 3, 3) * 3000).astype(np.uint16)
    (tmp_path / "p16.png").write_bytes(imagecodecs.png_encode(a))
    loaded = load_image(tmp_path / "p16.png")
    assert np.array_equal(loaded.rgb, np.rint(a / 257).astype(np.uint8))


def test_exif_orientation_is_applied(tmp_path):
    rgb = make_image(10, 20)
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image.save(tmp_path / "o.jpg", exif=exif, quality=100)
    assert load_image(tmp_path / "o.jpg").rgb.shape == (20, 10, 3)


def test_unreadable_inputs(tmp_path):
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "text.png")
    Image.fromarray(make_image(40, 40)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ImageError, match="limit"):
        load_image(tmp_path / "ok.png", max_pixels=100)
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_atomic_output_keeps_existing_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_output(target) as out:
        out.write(b"partial")
        raise RuntimeError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        write_bytes_atomic(tmp_path / "out.bin", b"new")
    save_image(make_image(4, 4), tmp_path / "img.png")
    with pytest.raises(OutputExistsError):
        save_image(make_image(4, 4), tmp_path / "img.png")
    save_image(make_image(4, 4), tmp_path / "img.png", force=True)
    assert target.read_bytes() == b"old"
