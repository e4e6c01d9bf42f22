"""The OSCAR file format, versions 1 and 2 (documented byte by byte in docs/format.md).

::

    offset size field
    0      3    magic b"OSC"
    3      1    format version (1 or 2)
    4      1    level
    5      1    low 4 bits: index-coder id (0 fixed, 1 entropy); high 4 bits: flags
                (bit 4: the source image was greyscale; bits 5-7 reserved, zero)
    6      4    model fingerprint (first 4 bytes of the model's SHA-256)
    10     2    original height, 1..65535, big-endian
    12     2    original width, 1..65535, big-endian
    14     4    version 1: side info, the four latent channel RMS codes (oscar.models.norms)
    14     1+n  version 2: n (1..64), then the n latent channel RMS codes
    ..     1-4  payload length, unsigned LEB128, minimal encoding
    ..     n    payload (index-coder output)
    ..     4    CRC-32 (zlib) of every byte before it, big-endian

The two versions differ only in the side info: version 2 carries its length, for models whose
latent has other than four channels. A writer uses version 1 whenever the side info is four
bytes, so files of four-channel models (Stable Diffusion 2.1's) are the same in both.

Parsing is strict and checks before it trusts: magic, version, length field, limits, exact total
length, checksum, then the remaining fields. Every failure is a BitstreamError subclass.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from oscar.coding.coder_ids import CODER_NAMES
from oscar.errors import (
    BadMagicError,
    ChecksumError,
    LimitExceededError,
    MalformedError,
    TruncatedError,
    UnsupportedVersionError,
)
from oscar.limits import DEFAULT_MAX_PIXELS

MAGIC = b"OSC"
VERSION = 1  # four side-info bytes, no length
VERSION_SIZED = 2  # side info preceded by its length
VERSIONS = (VERSION, VERSION_SIZED)
SIDE_INFO_BYTES = 4  # version 1
MAX_SIDE_INFO_BYTES = 64  # version 2: latent channels a file may carry norms for
FINGERPRINT_BYTES = 4
CRC_BYTES = 4
FLAG_GREY = 0x10
_RESERVED_FLAGS = 0xE0
_FIXED = struct.Struct(">3sBBB4sHH")  # magic .. width: 14 bytes
MAX_SIDE = 65535
_MAX_VARINT_BYTES = 4  # payloads below 2**28 bytes
MIN_FILE_BYTES = _FIXED.size + SIDE_INFO_BYTES + 1 + CRC_BYTES


@dataclass(frozen=True)
class Limits:
    """What a file may ask for before anything is allocated for it."""

    max_pixels: int = DEFAULT_MAX_PIXELS  # oscar.limits: Pillow's refusal threshold
    max_payload_bytes: int = 64 * 2**20

    @property
    def max_file_bytes(self) -> int:
        return (
            _FIXED.size
            + 1
            + MAX_SIDE_INFO_BYTES
            + _MAX_VARINT_BYTES
            + self.max_payload_bytes
            + CRC_BYTES
        )


@dataclass(frozen=True)
class Header:
    """Fixed header fields of a file."""

    level: int
    coder_id: int
    fingerprint: bytes
    height: int
    width: int
    side_info: bytes
    grey: bool = False

    @property
    def coder_name(self) -> str:
        return CODER_NAMES.get(self.coder_id, f"unknown({self.coder_id})")


@dataclass(frozen=True)
class Container:
    """A parsed file: header, payload, and the size accounting."""

    header: Header
    payload: bytes
    total_bytes: int

    @property
    def overhead_bytes(self) -> int:
        """Everything but the payload: header, side info, length field and checksum."""
        return self.total_bytes - len(self.payload)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    """Decode a minimal LEB128 value at ``offset``; returns (value, next offset)."""
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if offset + i >= len(data):
            raise TruncatedError("file ends inside the payload length field")
        byte = data[offset + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if i and byte == 0:
                raise MalformedError("payload length field is not minimally encoded")
            return value, offset + i + 1
    raise MalformedError(f"payload length field is longer than {_MAX_VARINT_BYTES} bytes")


def _read_side_info(data: bytes, version: int) -> tuple[bytes, int]:
    """The side-info bytes after the fixed header, and the offset that follows them."""
    offset, count = _FIXED.size, SIDE_INFO_BYTES
    if version == VERSION_SIZED:
        if len(data) <= offset:
            raise TruncatedError("file ends before the side-info length")
        count, offset = data[offset], offset + 1
        if not 1 <= count <= MAX_SIDE_INFO_BYTES:
            raise MalformedError(f"side-info length {count} is outside 1..{MAX_SIDE_INFO_BYTES}")
    if len(data) < offset + count:
        raise TruncatedError("file ends inside the side info")
    return data[offset : offset + count], offset + count


def payload_offset(data: bytes) -> int | None:
    """Where the payload-length field starts in a file with a valid fixed header, else None
    (for tools that edit files, such as the fuzzer's mutations)."""
    try:
        _magic, version, *_ = _FIXED.unpack_from(data)
        return _read_side_info(data, version)[1] if version in VERSIONS else None
    except (struct.error, TruncatedError, MalformedError):
        return None


def write(header: Header, payload: bytes) -> bytes:
    """Serialise a file. Raises ValueError for fields the format cannot hold."""
    if not (1 <= header.height <= MAX_SIDE and 1 <= header.width <= MAX_SIDE):
        raise ValueError(f"image size {header.height}x{header.width} outside 1..{MAX_SIDE}")
    if len(header.fingerprint) != FINGERPRINT_BYTES:
        raise ValueError("fingerprint must be 4 bytes")
    if not 1 <= len(header.side_info) <= MAX_SIDE_INFO_BYTES:
        raise ValueError(f"side info must be 1 to {MAX_SIDE_INFO_BYTES} bytes")
    if not (0 <= header.level <= 255 and 0 <= header.coder_id <= 15):
        raise ValueError("level or coder id out of range")
    if len(payload) >= 2 ** (7 * _MAX_VARINT_BYTES):
        raise ValueError("payload too large for format v1")
    flags = FLAG_GREY if header.grey else 0
    sized = len(header.side_info) != SIDE_INFO_BYTES
    side = bytes([len(header.side_info)]) + header.side_info if sized else header.side_info
    body = (
        _FIXED.pack(
            MAGIC,
            VERSION_SIZED if sized else VERSION,
            header.level,
            header.coder_id | flags,
            header.fingerprint,
            header.height,
            header.width,
        )
        + side
        + _varint(len(payload))
        + payload
    )
    return body + struct.pack(">I", zlib.crc32(body))


def read(data: bytes, limits: Limits | None = None) -> Container:
    """Parse and validate a file; raises one BitstreamError subclass on any defect."""
    limits = limits or Limits()
    data = bytes(data)
    if data[: len(MAGIC)] != MAGIC[: len(data)] or not data:
        raise BadMagicError("not an OSCAR file (magic bytes do not match)")
    if len(data) < _FIXED.size:
        raise TruncatedError(
            f"file is {len(data)} bytes, shorter than the {_FIXED.size}-byte header"
        )
    _magic, version, level, coder_flags, fp, height, width = _FIXED.unpack_from(data)
    if version not in VERSIONS:
        raise UnsupportedVersionError(
            f"format version {version} is not supported (this build reads versions 1 and 2)"
        )
    side, offset = _read_side_info(data, version)
    payload_len, offset = _read_varint(data, offset)
    if payload_len > limits.max_payload_bytes:
        raise LimitExceededError(
            f"payload of {payload_len} bytes exceeds the limit of {limits.max_payload_bytes}"
        )
    expected = offset + payload_len + CRC_BYTES
    if len(data) < expected:
        raise TruncatedError(f"file is {len(data)} bytes, its header announces {expected}")
    if len(data) > expected:
        raise MalformedError(f"{len(data) - expected} unexpected bytes after the checksum")
    (stored_crc,) = struct.unpack_from(">I", data, expected - CRC_BYTES)
    if zlib.crc32(data[: expected - CRC_BYTES]) != stored_crc:
        raise ChecksumError("checksum mismatch: the file is corrupt")
    if coder_flags & _RESERVED_FLAGS:
        raise MalformedError(f"reserved flag bits set (0x{coder_flags & _RESERVED_FLAGS:02x})")
    coder_id = coder_flags & 0x0F
    if coder_id not in CODER_NAMES:
        raise MalformedError(f"unknown index-coder id {coder_id}")
    if height < 1 or width < 1:
        raise MalformedError(f"image size {height}x{width} is empty")
    if height * width > limits.max_pixels:
        raise LimitExceededError(
            f"image of {height}x{width} pixels exceeds the limit of {limits.max_pixels} pixels "
            "(refused before decoding; raise it with --max-pixels)"
        )
    header = Header(
        level=level,
        coder_id=coder_id,
        fingerprint=fp,
        height=height,
        width=width,
        side_info=side,
        grey=bool(coder_flags & FLAG_GREY),
    )
    return Container(header, data[offset : offset + payload_len], len(data))
