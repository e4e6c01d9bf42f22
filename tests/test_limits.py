"""Limits before allocation: pixels, payload, checksum first, token counts bounded by the model.

Each test here fails if the check it names is removed: the files are crafted with a valid CRC
(and the right fingerprint) so that only that check stands between them and the decoder.
"""

from __future__ import annotations

import struct
import tracemalloc

import pytest
import torch

import oscar.coding.codec
from helpers import make_image
from oscar.cli import main
from oscar.coding import bitstream
from oscar.coding.bitstream import Limits
from oscar.coding.codec import OscarCodec
from oscar.coding.entropy import PriorCoder
from oscar.errors import ChecksumError, LimitExceededError, MalformedError
from oscar.fuzz import assemble, with_crc
from oscar.limits import DEFAULT_MAX_PIXELS


def _codec(tiny_codec, **limits) -> OscarCodec:
    return OscarCodec(tiny_codec.loaded, device=torch.device("cpu"), limits=Limits(**limits))


def _resized(data: bytes, height: int, width: int, payload: bytes | None = None) -> bytes:
    """The file with another announced size (and payload), CRC and length field made valid."""
    container = bitstream.read(data, Limits(max_pixels=2**32))
    fixed = bytearray(data[:18])
    struct.pack_into(">HH", fixed, 10, height, width)
    return assemble(bytes(fixed), container.payload if payload is None else payload)


@pytest.fixture()
def no_tensors(monkeypatch):
    """Call it once the test's files are made: from then on, reaching the network or making a
    tensor from decoded indices fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was made for a file that should have been refused")

    def arm() -> None:
        monkeypatch.setattr(oscar.coding.codec.OscarCodec, "decode", refuse)
        monkeypatch.setattr(oscar.coding.codec.torch, "from_numpy", refuse)

    return arm


def test_pixel_limit_default_and_configurable(tiny_codec, no_tensors):
    data = tiny_codec.compress(make_image(16, 16), 0, "fixed")
    no_tensors()
    huge = _resized(data, 13378, 13377)  # one pixel row over the default limit (13377² fits)
    assert 13377 * 13377 <= DEFAULT_MAX_PIXELS < 13378 * 13377
    with pytest.raises(LimitExceededError, match="exceeds the limit of 178956970"):
        tiny_codec.unpack(huge)
    assert tiny_codec.unpack(data).indices.shape == (1, 1)
    with pytest.raises(LimitExceededError, match="limit of 255 pixels"):
        _codec(tiny_codec, max_pixels=255).decompress(data)


def test_cli_max_pixels(tiny_codec, tiny_model_dir, tmp_path, capsys):
    (tmp_path / "a.oscar").write_bytes(tiny_codec.compress(make_image(16, 16), 0))
    args = ["decompress", str(tmp_path / "a.oscar"), "-o", str(tmp_path / "a.png")]
    assert main([*args, "--model", str(tiny_model_dir), "--max-pixels", "255"]) == 1
    err = capsys.readouterr().err
    assert "limit of 255 pixels" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a.png").exists()
    assert main([*args, "--model", str(tiny_model_dir), "--max-pixels", "0"]) == 2  # usage


def test_payload_limit(tiny_codec, no_tensors):
    data = tiny_codec.compress(make_image(64, 64), 7, "fixed")  # 64 tokens of 8 bits
    no_tensors()
    with pytest.raises(LimitExceededError, match="payload of 64 bytes exceeds the limit of 63"):
        _codec(tiny_codec, max_payload_bytes=63).unpack(data)
    assert _codec(tiny_codec, max_payload_bytes=64).unpack(data).level == 7


def test_checksum_is_verified_before_the_payload_is_decoded(tiny_codec, monkeypatch):
    data = tiny_codec.compress(make_image(64, 64), 7, "entropy")
    damaged = bytearray(data)
    damaged[-6] ^= 0x01  # inside the payload, CRC left alone

    def refuse(*args, **kwargs):
        raise AssertionError("the payload was decoded before the checksum was verified")

    monkeypatch.setattr(PriorCoder, "decode", refuse)
    with pytest.raises(ChecksumError):
        tiny_codec.unpack(bytes(damaged))


@pytest.mark.parametrize("coder", ["fixed", "entropy"])
def test_token_count_is_bounded_before_decoding(tiny_codec, coder, no_tensors):
    """A tiny file announcing the largest allowed image (millions of tokens at level 7) is
    refused by the model-level length checks before the index coder allocates anything."""
    data = tiny_codec.compress(make_image(16, 16), 7, coder)
    no_tensors()
    lie = _resized(data, 13377, 13377)  # allowed by the default pixel limit: 2.8 M tokens
    tracemalloc.start()
    try:
        with pytest.raises(MalformedError, match="payload"):
            tiny_codec.unpack(lie)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"{peak} bytes allocated for a {len(lie)}-byte file"


def test_fixed_payload_length_must_match_the_token_count(tiny_codec, no_tensors):
    data = tiny_codec.compress(make_image(64, 64), 7, "fixed")
    no_tensors()
    for payload in (b"", bitstream.read(data).payload[:-1], bitstream.read(data).payload + b"\0"):
        with pytest.raises(MalformedError, match=r"need exactly|tokens allow"):
            tiny_codec.unpack(_resized(data, 64, 64, payload))


def test_entropy_payload_bounds_and_canonical_form(tiny_codec, no_tensors):
    data = tiny_codec.compress(make_image(64, 64, seed=3), 7, "entropy")
    no_tensors()
    payload = bitstream.read(data).payload
    assert len(payload) >= 8
    cases = {
        "whole 32-bit words": payload + b"\0",
        "longer than": payload + b"\0" * 4 * 100,
        "not the encoder's coding": payload + b"\0" * 4,  # constriction ignores it
        "not the encoder's coding ": payload[:-4],  # constriction reads zeros instead
    }
    for message, bad in cases.items():
        with pytest.raises(MalformedError, match=message.strip()):
            tiny_codec.unpack(_resized(data, 64, 64, bad))
    with pytest.raises(MalformedError, match="shorter than"):
        tiny_codec.unpack(_resized(data, 4096, 4096, payload))


def test_entropy_file_for_a_model_without_priors_is_a_bitstream_error(tiny_codec):
    from dataclasses import replace

    loaded = replace(tiny_codec.loaded, priors=None)
    codec = OscarCodec(loaded, device=torch.device("cpu"))
    data = tiny_codec.compress(make_image(16, 16), 2, "entropy")
    with pytest.raises(MalformedError, match="no priors"):
        codec.unpack(data)


def test_entropy_file_at_a_level_without_a_prior_is_a_bitstream_error(tiny_codec):
    """Priors may cover only some levels (a level added after fit-priors): a file naming the
    missing table is the file's fault, not a ModelError from the prior lookup."""
    from dataclasses import replace

    from oscar.coding.priors import IndexPriors

    tables = dict(tiny_codec.loaded.priors.tables)
    del tables[2]
    codec = OscarCodec(
        replace(tiny_codec.loaded, priors=IndexPriors(tables)), device=torch.device("cpu")
    )
    data = tiny_codec.compress(make_image(16, 16), 2, "entropy")
    with pytest.raises(MalformedError, match="no prior for level 2"):
        codec.unpack(data)
    assert codec.unpack(tiny_codec.compress(make_image(16, 16), 3, "entropy")).level == 3


def test_range_decoder_failures_become_bitstream_errors(tiny_codec, monkeypatch):
    """constriction reports some bad data by raising (a Rust panic is a BaseException)."""
    import constriction

    class Panic(BaseException):  # pyo3's PanicException derives from BaseException
        pass

    class Exploding:
        def __init__(self, words):
            pass

        def decode(self, model, count):
            raise Panic("index out of bounds")

    data = tiny_codec.compress(make_image(64, 64), 7, "entropy")
    monkeypatch.setattr(constriction.stream.queue, "RangeDecoder", Exploding)
    with pytest.raises(MalformedError, match="corrupt"):
        tiny_codec.unpack(data)


def test_unknown_coder_and_reserved_flags(tiny_codec):
    data = tiny_codec.compress(make_image(16, 16), 2, "fixed")
    for flags, message in ((0x02, "coder id 2"), (0x0F, "coder id 15"), (0x20, "reserved")):
        crafted = bytearray(data)
        crafted[5] = flags
        with pytest.raises(MalformedError, match=message):
            tiny_codec.unpack(with_crc(bytes(crafted)))


def test_read_input_file_refuses_oversized_files(tmp_path):
    from oscar.commands.common import read_input_file

    (tmp_path / "big.oscar").write_bytes(b"\0" * 101)
    with pytest.raises(LimitExceededError, match="larger than any valid file"):
        read_input_file(tmp_path / "big.oscar", 100)
    assert read_input_file(tmp_path / "big.oscar", 101) == b"\0" * 101


def test_limits_default_values():
    assert Limits().max_pixels == DEFAULT_MAX_PIXELS == 178_956_970  # Pillow's refusal point
    assert Limits().max_payload_bytes == 64 * 2**20
    header = bitstream.Header(0, 0, b"abcd", 13377, 13377, b"\0" * 4)
    assert bitstream.read(bitstream.write(header, b"")).header == header


def test_info_reports_each_bad_file_on_one_line(tiny_codec, tiny_model_dir, tmp_path, capsys):
    good = tiny_codec.compress(make_image(16, 16), 0)
    files = {
        "good.oscar": good,
        "junk.oscar": b"\x89PNG\r\n\x1a\n",
        "huge.oscar": _resized(good, 65535, 65535),
        "cut.oscar": good[:-5],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    paths = [str(tmp_path / name) for name in files]
    assert main(["info", *paths, "--model", str(tiny_model_dir), "--json"]) == 1
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1 and '"level": 0' in out
    lines = err.strip().splitlines()
    assert len(lines) == 3 and "Traceback" not in err
    assert "magic" in lines[0] and "exceeds the limit" in lines[1] and "file is" in lines[2]
