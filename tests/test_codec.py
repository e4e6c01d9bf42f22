"""OscarCodec: bytes round trip, determinism, any size, colour policy, budgets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import build_tiny_model, make_image
from oscar.coding import bitstream
from oscar.coding.codec import NoLevelFitsError, OscarCodec
from oscar.errors import BitstreamError, FingerprintMismatchError, MalformedError
from oscar.store.pretrained import save_model


@pytest.mark.parametrize("level", range(8))
def test_decompress_equals_in_memory_reconstruction(tiny_codec, level):
    image = make_image(70, 90, seed=level)
    data = tiny_codec.compress(image, level)
    assert np.array_equal(tiny_codec.decompress(data), tiny_codec.reconstruct(image, level))


@pytest.mark.parametrize("coder", ["fixed", "entropy", "auto"])
def test_compress_is_deterministic(tiny_codec, coder):
    image = make_image(64, 96, seed=5)
    first = tiny_codec.compress(image, 3, coder)
    assert first == tiny_codec.compress(image.copy(), 3, coder)
    assert bitstream.read(first).header.coder_name == (
        coder if coder != "auto" else bitstream.read(first).header.coder_name
    )


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (65, 257), (300, 17)])
def test_odd_sizes_every_level(tiny_codec, size):
    image = make_image(*size, seed=1)
    for level in range(8):
        data = tiny_codec.compress(image, level)
        out = tiny_codec.decompress(data)
        assert out.shape == (*size, 3) and out.dtype == np.uint8
        header = bitstream.read(data).header
        assert (header.height, header.width) == size


def test_fixed_payload_is_nominal_and_info_bpp(tiny_codec):
    image = make_image(128, 192, seed=2)
    for rate in tiny_codec.levels:
        data = tiny_codec.compress(image, rate.level, "fixed")
        parsed = bitstream.read(data)
        h, w = tiny_codec.token_grid(128, 192, rate.level)
        assert len(parsed.payload) * 8 == -(-h * w * rate.bits_per_index // 8) * 8
        assert h * w * rate.bits_per_index == h * w * int(np.ceil(np.log2(rate.codebook_size)))


def test_auto_coder_never_larger_than_either(tiny_codec):
    image = make_image(96, 128, seed=3)
    for level in range(8):
        auto = len(tiny_codec.compress(image, level, "auto"))
        assert auto <= len(tiny_codec.compress(image, level, "fixed"))
        assert auto <= len(tiny_codec.compress(image, level, "entropy"))


def test_record_api(tiny_codec):
    image = make_image(40, 50, seed=4)
    record = tiny_codec.encode(image, 5)
    assert record.indices.shape == tiny_codec.token_grid(40, 50, 5)
    assert record.rms_codes.shape == (4,) and record.rms_codes.dtype == np.uint8
    again = tiny_codec.unpack(tiny_codec.pack(record))
    assert np.array_equal(again.indices, record.indices)
    assert np.array_equal(again.rms_codes, record.rms_codes)
    assert np.array_equal(tiny_codec.decode(again), tiny_codec.decode(record))


def test_batch_contract(tiny_codec):
    """compress_batch / decompress_batch: one file per image, each a file compress could have
    written at the level, decoded as decompress does (batched maths: rounding only)."""
    images = [make_image(40, 56, seed=6), make_image(40, 56, seed=7)]
    files = tiny_codec.compress_batch(images, 5)
    assert [tiny_codec.unpack(data).level for data in files] == [5, 5]
    for data, image in zip(files, tiny_codec.decompress_batch(files), strict=True):
        single = tiny_codec.decompress(data)
        assert image.shape == single.shape == (40, 56, 3)
        assert np.abs(image.astype(np.int16) - single).max() <= 1


def test_colour_policy(tiny_codec):
    rgb = make_image(30, 40, seed=6)
    grey = Image.fromarray(rgb).convert("L")
    out = tiny_codec.decompress(tiny_codec.compress(grey, 4))
    assert out.shape == (30, 40)  # greyscale in, greyscale out
    rgba = np.concatenate([rgb, np.zeros((30, 40, 1), np.uint8)], axis=2)  # fully transparent
    white = np.full_like(rgb, 255)
    assert tiny_codec.compress(rgba, 4) == tiny_codec.compress(white, 4)  # over white
    palette = Image.fromarray(rgb).convert("P")
    assert tiny_codec.decompress(tiny_codec.compress(palette, 4)).shape == (30, 40, 3)
    sixteen = rgb.astype(np.uint16) * 257
    assert tiny_codec.compress(sixteen, 4) == tiny_codec.compress(rgb, 4)


def test_compress_to_budget(tiny_codec):
    image = make_image(64, 64, seed=7)
    sizes = {lv: len(tiny_codec.compress(image, lv)) for lv in range(8)}
    budget = sorted(sizes.values())[3]
    result = tiny_codec.compress_to_budget(image, budget)
    assert len(result.data) <= budget
    fitting = [lv for lv in range(8) if sizes[lv] <= budget]
    best = max(fitting, key=lambda lv: tiny_codec.rate(lv).nominal_bpp)
    assert result.level == best
    assert result.data == tiny_codec.compress(image, best)
    with pytest.raises(NoLevelFitsError, match="smallest file"):
        tiny_codec.compress_to_budget(image, 5)


def test_wrong_model_is_refused(tiny_codec, tmp_path):
    other_dir = tmp_path / "other"
    save_model(build_tiny_model(seed=1), other_dir)
    other = OscarCodec.from_pretrained(other_dir, device="cpu")
    data = other.compress(make_image(16, 16), 2, "fixed")
    with pytest.raises(FingerprintMismatchError):
        tiny_codec.decompress(data)


def test_unknown_level_in_file(tiny_codec):
    data = bytearray(tiny_codec.compress(make_image(16, 16), 2))
    data[4] = 42
    import struct
    import zlib

    data[-4:] = struct.pack(">I", zlib.crc32(bytes(data[:-4])))
    with pytest.raises(MalformedError, match="level 42"):
        tiny_codec.decompress(bytes(data))


def test_corrupt_files_raise_bitstream_errors_only(tiny_codec):
    data = tiny_codec.compress(make_image(64, 64, seed=8), 7)
    rng = np.random.default_rng(0)
    for _ in range(200):
        mutated = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            mutated[int(rng.integers(0, len(mutated)))] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(BitstreamError):
            tiny_codec.decompress(bytes(mutated))


def test_the_constructor_takes_a_device_name(tiny_codec):
    codec = OscarCodec(tiny_codec.loaded, device="cpu")
    assert codec.device.type == "cpu"
    image = make_image(40, 56, seed=3)
    assert np.array_equal(
        codec.decompress(codec.compress(image, 2)), tiny_codec.reconstruct(image, 2)
    )
