"""Structure-aware mutations of valid ``.oscar`` files (the layout is oscar.coding.bitstream's).

Raw damage (bit flips, extreme bytes, truncation, appended bytes, splices of two files) gets a
recomputed CRC-32 three times in four; header-aware damage (fields set to extremes, length lies,
coder swaps, payloads replaced, resized, cut at a 32-bit word, another image size under the same
payload) is written with a valid CRC, so that it reaches the checks behind the checksum.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable, Sequence

from oscar.coding.bitstream import payload_offset

_FIXED = 18  # bytes before the payload-length field in a version-1 file (oscar.coding.bitstream)
_INTERESTING_BYTES = (0x00, 0x01, 0x02, 0x07, 0x0F, 0x10, 0x11, 0x7F, 0x80, 0x81, 0xFE, 0xFF)
_INTERESTING_SIDES = (0, 1, 2, 7, 8, 63, 64, 65, 127, 128, 255, 256, 4096, 32767, 65535)
_INTERESTING_LENGTHS = (0, 1, 3, 4, 5, 127, 128, 16383, 16384, 2**21, 2**28 - 1)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _split(data: bytes) -> tuple[bytes, bytes] | None:
    """(header up to the payload-length field, payload) of a well-formed file, or None."""
    start = payload_offset(data)
    if start is None or len(data) < start + 5:
        return None
    value, shift, offset = 0, 0, start
    while offset < len(data) and offset < start + 4:
        byte = data[offset]
        value |= (byte & 0x7F) << shift
        offset += 1
        shift += 7
        if not byte & 0x80:
            break
    payload = data[offset : offset + value]
    return (data[:start], payload) if offset + value + 4 == len(data) else None


def with_crc(body_and_crc: bytes) -> bytes:
    """Replace the last four bytes by the CRC-32 of everything before them."""
    if len(body_and_crc) < 4:
        return body_and_crc
    body = body_and_crc[:-4]
    return body + struct.pack(">I", zlib.crc32(body))


def assemble(fixed: bytes, payload: bytes, length: int | None = None) -> bytes:
    """A file from its fixed header and payload, with a correct CRC (and a length field that
    says ``length`` if given: a lie)."""
    body = fixed + _varint(len(payload) if length is None else length) + payload
    return body + struct.pack(">I", zlib.crc32(body))


class Mutator:
    """Structure-aware mutations of valid files; ``mutate`` returns (strategy, bytes)."""

    def __init__(self, seeds: Sequence[bytes], rng: random.Random) -> None:
        if not seeds:
            raise ValueError("the mutator needs at least one seed file")
        self.seeds = list(seeds)
        self.rng = rng
        self.strategies: dict[str, Callable[[bytes], bytes]] = {
            "flip": self._flip,
            "byte": self._byte,
            "truncate": self._truncate,
            "extend": self._extend,
            "splice": self._splice,
            "field": self._field,
            "length": self._length,
            "payload": self._payload,
            "payload-bits": self._payload_bits,
            "coder": self._coder,
            "size": self._size,
            "words": self._words,
        }
        self.names = sorted(self.strategies)

    def mutate(self, data: bytes | None = None) -> tuple[str, bytes]:
        rng = self.rng
        data = data if data is not None else rng.choice(self.seeds)
        name = rng.choice(self.names)
        out = self.strategies[name](data)
        if rng.random() < 0.2:  # stack a second mutation
            second = rng.choice(self.names)
            out = self.strategies[second](out)
            name = f"{name}+{second}"
        # The structured strategies already wrote a valid CRC; the raw ones get one most of the
        # time, so that their damage reaches the parser behind the checksum.
        raw = name.split("+")[-1] in ("flip", "byte", "truncate", "extend", "splice")
        if raw and rng.random() < 0.75:
            out = with_crc(out)
        return name, out

    # raw byte-level damage
    def _flip(self, data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(self.rng.randint(1, 8)):
            if out:
                out[self.rng.randrange(len(out))] ^= 1 << self.rng.randrange(8)
        return bytes(out)

    def _byte(self, data: bytes) -> bytes:
        out = bytearray(data)
        if out:
            value = self.rng.choice((*_INTERESTING_BYTES, self.rng.randrange(256)))
            out[self.rng.randrange(min(len(out), _FIXED + 5))] = value
        return bytes(out)

    def _truncate(self, data: bytes) -> bytes:
        return data[: self.rng.randrange(len(data) + 1)]

    def _extend(self, data: bytes) -> bytes:
        extra = self.rng.randbytes(self.rng.choice((1, 3, 4, 8, 16)))
        return data + extra if self.rng.random() < 0.5 else data[:-4] + extra + data[-4:]

    def _splice(self, data: bytes) -> bytes:
        other = self.rng.choice(self.seeds)
        return data[: self.rng.randrange(len(data) + 1)] + other[self.rng.randrange(len(other)) :]

    # header-aware damage, CRC repaired
    def _parts(self, data: bytes) -> tuple[bytearray, bytes]:
        parts = _split(data) or _split(self.rng.choice(self.seeds))
        assert parts is not None  # seeds are well formed
        return bytearray(parts[0]), parts[1]

    def _field(self, data: bytes) -> bytes:
        fixed, payload = self._parts(data)
        rng = self.rng
        which = rng.choice(("magic", "version", "level", "flags", "fingerprint", "side", "hw"))
        if which == "magic":
            fixed[rng.randrange(3)] = rng.randrange(256)
        elif which == "version":
            fixed[3] = rng.choice((0, 2, 255, rng.randrange(256)))
        elif which == "level":
            fixed[4] = rng.choice((0, 1, 7, 8, 9, 127, 255, rng.randrange(256)))
        elif which == "flags":
            fixed[5] = rng.choice((*_INTERESTING_BYTES, rng.randrange(256)))
        elif which == "fingerprint":
            fixed[6 + rng.randrange(4)] ^= 1 << rng.randrange(8)
        elif which == "side":
            # the side info (and, in version 2, its length byte) fills bytes 14 and on
            fixed[14 + rng.randrange(len(fixed) - 14)] = rng.choice(
                (0, 1, 4, 16, 64, 65, 128, 254, 255, rng.randrange(256))
            )
        else:
            offset = rng.choice((10, 12))
            struct.pack_into(">H", fixed, offset, rng.choice(_INTERESTING_SIDES))
        return assemble(bytes(fixed), payload)

    def _length(self, data: bytes) -> bytes:
        fixed, payload = self._parts(data)
        rng = self.rng
        n = len(payload)
        lie = rng.choice((*_INTERESTING_LENGTHS, n - 1, n + 1, 2 * n, n // 2, rng.randrange(2**28)))
        body = bytes(fixed)
        if rng.random() < 0.2:  # a non-minimal or over-long encoding of the true length
            body += bytes([(n & 0x7F) | 0x80] + [0x80] * rng.randint(0, 4) + [0])
        else:
            body += _varint(max(lie, 0))
        body += payload
        return body + struct.pack(">I", zlib.crc32(body))

    def _payload(self, data: bytes) -> bytes:
        fixed, payload = self._parts(data)
        rng = self.rng
        n = len(payload)
        size = rng.choice((n, n, n - 1, n + 1, n - 4, n + 4, 0, 4, 4 * rng.randint(1, 64)))
        return assemble(bytes(fixed), rng.randbytes(max(size, 0)))

    def _payload_bits(self, data: bytes) -> bytes:
        fixed, payload = self._parts(data)
        out = bytearray(payload)
        for _ in range(self.rng.randint(1, 3)):
            if out:
                out[self.rng.randrange(len(out))] ^= 1 << self.rng.randrange(8)
        return assemble(bytes(fixed), bytes(out))

    def _coder(self, data: bytes) -> bytes:
        fixed, payload = self._parts(data)
        fixed[5] ^= self.rng.choice((0x01, 0x10, 0x11, 0x02))
        return assemble(bytes(fixed), payload)

    def _size(self, data: bytes) -> bytes:
        """Another image size with the same payload: a token-count lie the CRC cannot see."""
        fixed, payload = self._parts(data)
        rng = self.rng
        h, w = struct.unpack_from(">HH", fixed, 10)
        h = max(1, min(65535, h + rng.choice((-64, -1, 1, 63, 64, 65, 128, -h + 1))))
        w = max(1, min(65535, w + rng.choice((-64, -1, 1, 63, 64, 65, 128, -w + 1))))
        struct.pack_into(">HH", fixed, 10, h, w)
        return assemble(bytes(fixed), payload)

    def _words(self, data: bytes) -> bytes:
        """Range-coder-shaped damage: drop, zero, duplicate or append a 32-bit word."""
        fixed, payload = self._parts(data)
        rng = self.rng
        op = rng.choice(("drop", "zero", "append", "dup"))
        if op == "drop":
            payload = payload[:-4]
        elif op == "zero" and len(payload) >= 4:
            i = 4 * rng.randrange(len(payload) // 4)
            payload = payload[:i] + b"\0\0\0\0" + payload[i + 4 :]
        elif op == "append":
            payload = payload + rng.choice((b"\0\0\0\0", rng.randbytes(4)))
        else:
            payload = payload + payload[-4:]
        return assemble(bytes(fixed), payload)
