"""Every kind of input image gets its documented behaviour (docs/usage.md "Inputs and outputs",
oscar.io): converted, or refused with one clear ImageError naming the file. Nothing is decoded
before the size is checked from the header."""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from helpers import make_image
from oscar.errors import ImageError
from oscar.io import _open_limited, load_image


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int) -> bytes:
    """A valid-looking PNG that declares a size and holds almost no data (~60 bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("size", [(100_000, 100_000), (20_000, 20_000), (65_535, 4_097)])
def test_decompression_bombs_are_refused_from_the_header(tmp_path, size):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(*size))
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match=r"limit of 178956970 \(refused before decoding"):
        load_image(path)
    assert time.perf_counter() - t0 < 2.0
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's setting is restored


def test_our_limit_decides_not_pillows(tmp_path):
    """Pillow alone refuses images over 179 M pixels while opening (our default too); ours,
    configurable both ways, must decide instead. Header only: nothing is decoded here."""
    path = tmp_path / "big.png"
    path.write_bytes(_png_header_only(14_000, 14_000))  # 196 M pixels
    with pytest.raises(ImageError, match="196000000 pixels exceed the limit of 178956970"):
        load_image(path)
    with _open_limited(path, 200_000_000) as image:
        assert image.size == (14_000, 14_000)
    with pytest.raises(ImageError, match="196000000 pixels exceed the limit of 1000"):
        load_image(path, max_pixels=1000)


@pytest.mark.parametrize(
    "content",
    [b"", b"\0", b"hello, not an image", bytes(range(256)) * 4, b"\x89PNG\r\n\x1a\n"],
    ids=["empty", "one-byte", "text", "binary", "png-signature-only"],
)
def test_non_images_are_refused(tmp_path, content):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=r"x\.png: (not an image|cannot decode)"):
        load_image(path)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF"])
def test_truncated_files_are_refused(tmp_path, fmt):
    path = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(make_image(64, 64)).save(path, format=fmt)
    data = path.read_bytes()
    for keep in (len(data) // 2, len(data) - 40, 30):
        path.write_bytes(data[:keep])
        with pytest.raises(ImageError, match=str(path.name)):
            load_image(path)


def test_zero_sized_images_are_refused(tmp_path):
    for size in ((0, 10), (10, 0)):
        path = tmp_path / "zero.png"
        path.write_bytes(_png_header_only(*size))
        with pytest.raises(ImageError, match=r"zero\.png"):
            load_image(path)


def test_formats_outside_the_list_are_refused_whatever_the_name(tmp_path):
    """An EPS file would make Pillow run Ghostscript: never opened, even named .png."""
    path = tmp_path / "innocent.png"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageError, match="not an image file in a format oscar reads"):
        load_image(path)
    Image.fromarray(make_image(8, 8)).save(tmp_path / "a.tga")  # readable by Pillow, not by us
    with pytest.raises(ImageError, match="format oscar reads"):
        load_image(tmp_path / "a.tga")


def test_colour_modes_from_files(tmp_path):
    rgb = make_image(20, 30)
    image = Image.fromarray(rgb)
    image.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    cmyk = load_image(tmp_path / "cmyk.jpg")
    assert cmyk.rgb.shape == (20, 30, 3) and not cmyk.grey
    assert np.abs(cmyk.rgb.astype(int) - rgb).mean() < 12  # converted, not inverted

    image.convert("P").save(tmp_path / "palette.png")
    palette = load_image(tmp_path / "palette.png")
    assert palette.rgb.shape == (20, 30, 3) and not palette.grey

    image.convert("L").save(tmp_path / "grey.png")
    assert load_image(tmp_path / "grey.png").grey

    Image.fromarray(rgb[:, :, 0] > 128).save(tmp_path / "bilevel.png")  # mode "1"
    bilevel = load_image(tmp_path / "bilevel.png")
    assert bilevel.grey and set(np.unique(bilevel.rgb)) <= {0, 255}

    rgba = np.dstack([rgb, np.full((20, 30), 0, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    assert (load_image(tmp_path / "clear.png").rgb == 255).all()  # over white

    la = Image.fromarray(np.dstack([rgb[:, :, 0], np.full((20, 30), 255, np.uint8)]), "LA")
    la.save(tmp_path / "la.png")
    grey_alpha = load_image(tmp_path / "la.png")
    assert grey_alpha.grey and np.array_equal(grey_alpha.rgb[..., 0], rgb[:, :, 0])

    transparent = image.convert("P")
    transparent.info["transparency"] = 0
    transparent.save(tmp_path / "tpal.png", transparency=0)
    assert load_image(tmp_path / "tpal.png").rgb.shape == (20, 30, 3)

    float_grey = Image.fromarray(rgb[:, :, 1].astype(np.float32))  # mode "F", 0..255
    float_grey.save(tmp_path / "float.tiff")
    loaded = load_image(tmp_path / "float.tiff")
    assert loaded.grey and np.array_equal(loaded.rgb[..., 0], rgb[:, :, 1])


def test_animated_images_give_their_first_frame(tmp_path):
    frames = [Image.fromarray(make_image(16, 16, seed=s)).convert("P") for s in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    first = load_image(tmp_path / "anim.gif").rgb
    assert np.array_equal(first, np.asarray(frames[0].convert("RGB")))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied(tmp_path, orientation):
    image = Image.fromarray(make_image(6, 10))
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(tmp_path / "o.png", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")).convert("RGB"))
    loaded = load_image(tmp_path / "o.png").rgb
    assert loaded.shape == ((6, 10, 3) if orientation < 5 else (10, 6, 3))
    assert np.array_equal(loaded, expected)


def test_directories_and_missing_files(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path / "dir.png")
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_sides_beyond_the_format_are_refused_before_coding(tiny_codec, tmp_path):
    """Format v1 stores sides up to 65535: a 1 x 70000 image is refused with an ImageError
    (it used to reach the file writer and escape as a ValueError)."""
    Image.fromarray(np.zeros((1, 70_000, 3), np.uint8)).save(tmp_path / "wide.png")
    with pytest.raises(ImageError, match="65535"):
        tiny_codec.compress(tmp_path / "wide.png", 0)


def test_nan_in_float_images_becomes_black():
    import warnings

    from oscar.io import to_rgb

    values = np.array([[np.nan, 0.5], [1.0, np.inf]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value encountered in cast"
        rgb = to_rgb(values).rgb
        grey = to_rgb(Image.fromarray(values * 255, mode="F")).rgb
    assert rgb[..., 0].tolist() == [[0, 128], [255, 255]]
    assert grey[..., 0].tolist() == [[0, 128], [255, 255]]
