"""The container format: round trip and strict parsing."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from oscar.coding import bitstream
from oscar.coding.bitstream import Header, Limits
from oscar.errors import (
    BadMagicError,
    BitstreamError,
    ChecksumError,
    LimitExceededError,
    MalformedError,
    TruncatedError,
    UnsupportedVersionError,
)

HEADER = Header(
    level=3,
    coder_id=1,
    fingerprint=b"\x01\x02\x03\x04",
    height=512,
    width=768,
    side_info=b"\x10\x20\x30\x40",
    grey=False,
)


def _recrc(body: bytes) -> bytes:
    """Replace the checksum so that a crafted file passes the CRC check."""
    return body[:-4] + struct.pack(">I", zlib.crc32(body[:-4]))


def test_round_trip_and_overhead():
    for payload in (b"", b"x" * 5, b"y" * 127, b"z" * 128, b"w" * 20000):
        data = bitstream.write(HEADER, payload)
        parsed = bitstream.read(data)
        assert parsed.header == HEADER and parsed.payload == payload
        assert parsed.total_bytes == len(data)
        varint = 1 if len(payload) < 128 else (2 if len(payload) < 16384 else 3)
        assert parsed.overhead_bytes == 22 + varint


def test_grey_flag_round_trips():
    data = bitstream.write(Header(**{**HEADER.__dict__, "grey": True}), b"abc")
    assert bitstream.read(data).header.grey


def test_worked_example_in_docs_matches():
    """docs/format.md shows these exact bytes: a 192x128 image at level 0, fixed-length."""
    import numpy as np

    from oscar.coding.entropy import FixedLengthCoder
    from oscar.rates import DEFAULT_LADDER

    payload = FixedLengthCoder().encode(np.array([17, 200, 3, 3, 91, 255]), DEFAULT_LADDER[0])
    header = Header(
        level=0,
        coder_id=0,
        fingerprint=bytes.fromhex("6825276b"),
        height=128,
        width=192,
        side_info=bytes([170, 166, 175, 168]),
    )
    expected = (
        "4f 53 43 01 00 00 68 25 27 6b 00 80 00 c0 aa a6 af a8 06 11 c8 03 03 5b ff 53 5a 07 f6"
    )
    assert bitstream.write(header, payload).hex(" ") == expected
    docs = (Path(__file__).resolve().parents[1] / "docs" / "format.md").read_text()
    assert expected in docs


def test_errors():
    good = bitstream.write(HEADER, b"payload")
    cases = [
        (b"", BadMagicError),
        (b"PNG" + good[3:], BadMagicError),
        (good[:2], TruncatedError),
        (good[:10], TruncatedError),
        (good[:-1], TruncatedError),
        (good + b"\0", MalformedError),
        (good[:3] + b"\x03" + good[4:], UnsupportedVersionError),
        (good[:20] + bytes([good[20] ^ 0x40]) + good[21:], ChecksumError),
        (good[:-1] + bytes([good[-1] ^ 1]), ChecksumError),
    ]
    for data, error in cases:
        with pytest.raises(error):
            bitstream.read(data)


def test_version_2_carries_the_side_info_length():
    """Sixteen channel norms: version 2, a length byte, then the codes; four: version 1."""
    from dataclasses import replace

    wide = replace(HEADER, side_info=bytes(range(16)))
    data = bitstream.write(wide, b"payload")
    assert data[3] == 2 and data[14] == 16 and data[15:31] == bytes(range(16))
    assert bitstream.read(data).header == wide
    assert bitstream.payload_offset(data) == 31
    assert bitstream.write(HEADER, b"p")[3] == 1
    assert bitstream.payload_offset(bitstream.write(HEADER, b"p")) == 18
    for count in (0, 65):
        with pytest.raises(MalformedError, match="side-info length"):
            bitstream.read(_recrc(data[:14] + bytes([count]) + data[15:]))
    with pytest.raises(TruncatedError):
        bitstream.read(data[:20])
    with pytest.raises(ValueError, match="side info"):
        bitstream.write(replace(HEADER, side_info=bytes(65)), b"")


def _crafted(**fields) -> bytes:
    body = bytearray(bitstream.write(HEADER, b"pp"))
    for offset, fmt, value in fields.values():
        struct.pack_into(fmt, body, offset, value)
    return _recrc(bytes(body))


def test_field_checks_with_valid_checksum():
    with pytest.raises(LimitExceededError, match="pixels"):
        bitstream.read(
            _crafted(h=(10, ">H", 65535), w=(12, ">H", 65535)), Limits(max_pixels=4096 * 4096)
        )
    with pytest.raises(MalformedError, match="empty"):
        bitstream.read(_crafted(h=(10, ">H", 0)))
    with pytest.raises(MalformedError, match="coder"):
        bitstream.read(_crafted(c=(5, ">B", 0x07)))
    with pytest.raises(MalformedError, match="reserved"):
        bitstream.read(_crafted(c=(5, ">B", 0x81)))


def test_payload_length_lies():
    good = bitstream.write(HEADER, b"x" * 10)
    huge_len = good[:18] + bytes([0xFF, 0xFF, 0xFF, 0x7F]) + good[19:]
    with pytest.raises(LimitExceededError):
        bitstream.read(huge_len, Limits(max_payload_bytes=1000))
    with pytest.raises(MalformedError, match="minimally"):
        bitstream.read(_recrc(good[:18] + bytes([0x8A, 0x00]) + good[19:]))
    with pytest.raises(MalformedError, match="longer than"):
        bitstream.read(good[:18] + bytes([0x80] * 5) + good[19:])
    short = good[:18] + bytes([9]) + good[19:]
    with pytest.raises((TruncatedError, MalformedError)):
        bitstream.read(short)


def test_every_error_is_a_bitstream_error():
    good = bitstream.write(HEADER, b"payload")
    for i in range(len(good)):
        with pytest.raises(BitstreamError):
            bitstream.read(good[:i])
        for bit in range(8):
            flipped = bytearray(good)
            flipped[i] ^= 1 << bit
            with pytest.raises(BitstreamError):
                bitstream.read(bytes(flipped))
