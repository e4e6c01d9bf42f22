"""Index coders: fixed-length packing and a prior-based range coder, behind one interface.

Both turn the (h·w,) indices of one image (row-major, token n = row·w + col) into payload bytes
and back. They run on the CPU on integers only, so the bytes never depend on the device or dtype
that produced the indices.

- ``FixedLengthCoder`` (id 0): ceil(log2 K) bits per index, most significant bit first, the last
  byte padded with zero bits. Its size is the nominal rate (plus < 1 byte of padding).
- ``PriorCoder`` (id 1): constriction's range coder with a categorical model from the level's
  integer frequency table (oscar.coding.priors). Output is a whole number of big-endian 32-bit
  words.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

import constriction
import numpy as np

from oscar.coding.coder_ids import CODER_NAMES, FIXED_CODER_ID, PRIOR_CODER_ID  # noqa: F401 (re-exported)
from oscar.errors import MalformedError, ModelError
from oscar.rates import RateLevel

if TYPE_CHECKING:  # oscar.coding.priors imports torch; `oscar info FILE` parses headers without it
    from oscar.coding.priors import IndexPriors


# constriction's default range coder quantises probabilities to 24 bits, so no symbol costs
# more than 24 bits; the bound below is checked before any decoding work.
_MAX_BITS_PER_SYMBOL = 24


class IndexCoder(Protocol):
    coder_id: int
    name: str

    def encode(self, indices: np.ndarray, rate: RateLevel) -> bytes: ...

    def decode(self, payload: bytes, count: int, rate: RateLevel) -> np.ndarray: ...

    def max_payload_bytes(self, count: int, rate: RateLevel) -> int: ...


def _check_indices(indices: np.ndarray, rate: RateLevel) -> np.ndarray:
    flat = np.asarray(indices).reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= rate.codebook_size):
        raise ValueError(f"indices outside [0, {rate.codebook_size}) for level {rate.level}")
    return flat


class FixedLengthCoder:
    coder_id = FIXED_CODER_ID
    name = "fixed"

    def payload_bits(self, count: int, rate: RateLevel) -> int:
        return count * rate.bits_per_index

    def max_payload_bytes(self, count: int, rate: RateLevel) -> int:
        return rate.fixed_payload_bytes(count)

    def encode(self, indices: np.ndarray, rate: RateLevel) -> bytes:
        flat = _check_indices(indices, rate)
        b = rate.bits_per_index
        shifts = np.arange(b - 1, -1, -1, dtype=np.int64)
        bits = ((flat[:, None] >> shifts) & 1).astype(np.uint8)
        return np.packbits(bits.reshape(-1)).tobytes()

    def decode(self, payload: bytes, count: int, rate: RateLevel) -> np.ndarray:
        b = rate.bits_per_index
        expected = self.max_payload_bytes(count, rate)
        if len(payload) != expected:
            raise MalformedError(
                f"fixed-length payload is {len(payload)} bytes, {count} tokens of {b} bits "
                f"need exactly {expected}"
            )
        bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
        if bits[count * b :].any():
            raise MalformedError("fixed-length payload has non-zero padding bits")
        weights = 1 << np.arange(b - 1, -1, -1, dtype=np.int64)
        indices = bits[: count * b].reshape(count, b).astype(np.int64) @ weights
        if count and indices.max() >= rate.codebook_size:
            raise MalformedError(
                f"index {int(indices.max())} outside the codebook of {rate.codebook_size}"
            )
        return indices


class PriorCoder:
    coder_id = PRIOR_CODER_ID
    name = "entropy"

    def __init__(self, priors: IndexPriors) -> None:
        self.priors = priors
        self._models: dict[int, object] = {}

    def _model(self, rate: RateLevel):
        model = self._models.get(rate.level)
        if model is None:
            probabilities = self.priors.probabilities(rate.level)
            if probabilities.size != rate.codebook_size:
                raise ModelError(
                    f"prior for level {rate.level} has {probabilities.size} entries, "
                    f"codebook has {rate.codebook_size}"
                )
            model = constriction.stream.model.Categorical(probabilities, perfect=False)
            self._models[rate.level] = model
        return model

    def max_payload_bytes(self, count: int, rate: RateLevel) -> int:
        return 4 * (math.ceil(count * _MAX_BITS_PER_SYMBOL / 32) + 2)

    def min_payload_bytes(self, count: int, rate: RateLevel) -> int:
        """No coding of ``count`` tokens is shorter: each costs at least -log2 of the largest
        probability (with a margin for constriction's 24-bit quantisation), and the encoder
        writes every word, zero words included. Checked before decoding, so that a few bytes
        cannot announce millions of tokens (constriction decodes missing data as zeros)."""
        p_max = float(self.priors.probabilities(rate.level).max())
        bits = count * -math.log2(min(1.0, p_max * (1 + 1e-3) + 2**-20))
        return 4 * max(0, math.floor((bits - 64) / 32))

    def encode(self, indices: np.ndarray, rate: RateLevel) -> bytes:
        flat = _check_indices(indices, rate).astype(np.int32)
        encoder = constriction.stream.queue.RangeEncoder()
        encoder.encode(flat, self._model(rate))
        return encoder.get_compressed().astype(">u4").tobytes()

    def decode(self, payload: bytes, count: int, rate: RateLevel) -> np.ndarray:
        if len(payload) % 4:
            raise MalformedError(
                f"entropy-coded payload must be whole 32-bit words, got {len(payload)} bytes"
            )
        if len(payload) > self.max_payload_bytes(count, rate):
            raise MalformedError(
                f"entropy-coded payload of {len(payload)} bytes is longer than {count} "
                "tokens can produce"
            )
        if len(payload) < self.min_payload_bytes(count, rate):
            raise MalformedError(
                f"entropy-coded payload of {len(payload)} bytes is shorter than {count} "
                f"tokens can produce (at least {self.min_payload_bytes(count, rate)})"
            )
        words = np.frombuffer(payload, dtype=">u4").astype(np.uint32)
        model = self._model(rate)
        try:
            decoder = constriction.stream.queue.RangeDecoder(words)
            indices = decoder.decode(model, count)
        except BaseException as exc:  # constriction reports bad data as assertion or panic
            if isinstance(exc, (KeyboardInterrupt, SystemExit, MemoryError)):
                raise
            raise MalformedError(f"entropy-coded payload is corrupt: {exc}") from None
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        in_range = not count or (indices.min() >= 0 and indices.max() < rate.codebook_size)
        if indices.size != count or not in_range:
            raise MalformedError("entropy-coded payload decodes to indices outside the codebook")
        # constriction's decoder reads past the end of its data as zero bits and leaves unread
        # words alone, so many payloads (a truncated one, one with words appended) decode to the
        # same indices. Only the one the encoder writes is accepted: a file has one reading.
        if self.encode(indices, rate) != payload:
            raise MalformedError(
                "entropy-coded payload is not the encoder's coding of the indices it decodes to "
                "(truncated, padded or altered)"
            )
        return indices
