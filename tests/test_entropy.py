"""Index coders and priors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from oscar.coding.entropy import FixedLengthCoder, PriorCoder
from oscar.coding.priors import TABLE_TOTAL, IndexPriors, quantize_frequencies
from oscar.errors import MalformedError, ModelError
from oscar.rates import DEFAULT_LADDER, RateLevel


@pytest.mark.parametrize("rate", (*DEFAULT_LADDER, RateLevel(8, 8, 100, 1)), ids=str)
@pytest.mark.parametrize("count", [1, 7, 96, 1000])
def test_fixed_length_size_and_round_trip(rate, count):
    rng = np.random.default_rng(count)
    indices = rng.integers(0, rate.codebook_size, count)
    coder = FixedLengthCoder()
    payload = coder.encode(indices, rate)
    bits = count * math.ceil(math.log2(rate.codebook_size))
    assert coder.payload_bits(count, rate) == bits
    assert len(payload) == math.ceil(bits / 8)
    assert np.array_equal(coder.decode(payload, count, rate), indices)


def test_fixed_length_rejects_bad_payloads():
    rate = RateLevel(0, 8, 100, 1)  # 7 bits, so 127 is out of range
    coder = FixedLengthCoder()
    good = coder.encode(np.array([5, 99, 0]), rate)
    with pytest.raises(MalformedError, match="exactly"):
        coder.decode(good + b"\0", 3, rate)
    with pytest.raises(MalformedError, match="padding"):
        coder.decode(good[:-1] + bytes([good[-1] | 1]), 3, rate)
    with pytest.raises(MalformedError, match="outside the codebook"):
        coder.decode(b"\xff\xff\xf8", 3, rate)  # 21 one bits, zero padding


def _random_priors(rng, rates):
    return IndexPriors.from_counts(
        {r.level: rng.integers(0, 1000, r.codebook_size) ** 2 for r in rates}
    )


@pytest.mark.parametrize("rate", DEFAULT_LADDER, ids=str)
def test_entropy_round_trip_exact(rate):
    rng = np.random.default_rng(rate.level)
    priors = _random_priors(rng, [rate])
    coder = PriorCoder(priors)
    for count in (1, 5, 300):
        p = priors.probabilities(rate.level)
        indices = rng.choice(rate.codebook_size, count, p=p)
        payload = coder.encode(indices, rate)
        assert len(payload) % 4 == 0
        assert np.array_equal(coder.decode(payload, count, rate), indices)


def test_entropy_codes_unseen_symbols_and_beats_fixed_on_skewed_data():
    rate = DEFAULT_LADDER[7]
    counts = np.zeros(256, np.int64)
    counts[:4] = [1000, 500, 200, 100]
    priors = IndexPriors.from_counts({7: counts})
    coder = PriorCoder(priors)
    rng = np.random.default_rng(0)
    indices = rng.choice(4, 2000, p=[0.55, 0.27, 0.11, 0.07])
    indices[[3, 500]] = [255, 77]  # never seen while fitting: still codable
    payload = coder.encode(indices, rate)
    assert np.array_equal(coder.decode(payload, indices.size, rate), indices)
    assert len(payload) < len(FixedLengthCoder().encode(indices, rate)) / 3


def test_entropy_corrupt_payload_is_a_bitstream_error():
    rate = DEFAULT_LADDER[4]
    coder = PriorCoder(_random_priors(np.random.default_rng(1), [rate]))
    rng = np.random.default_rng(2)
    for _ in range(50):
        junk = rng.integers(0, 256, 4 * int(rng.integers(1, 6)), dtype=np.uint8).tobytes()
        try:
            out = coder.decode(junk, 40, rate)
        except MalformedError:
            continue
        assert out.shape == (40,) and out.min() >= 0 and out.max() < rate.codebook_size
    with pytest.raises(MalformedError, match="32-bit words"):
        coder.decode(b"\x01\x02\x03", 4, rate)
    with pytest.raises(MalformedError, match="longer"):
        coder.decode(b"\0" * 4000, 4, rate)


def test_quantize_frequencies_floor_and_total():
    for k in (2, 16, 256, 2048):
        counts = np.zeros(k, np.int64)
        counts[0] = 10**9
        table = quantize_frequencies(counts)
        assert table.dtype == np.int32 and table.min() >= 1 and table.sum() <= TABLE_TOTAL
        assert table[0] > table[1]


def test_priors_save_load_and_validation(tmp_path):
    rates = DEFAULT_LADDER
    priors = _random_priors(np.random.default_rng(3), rates)
    priors.save(tmp_path / "p.safetensors")
    again = IndexPriors.load(tmp_path / "p.safetensors", rates)
    for r in rates:
        assert np.array_equal(again.table(r.level), priors.table(r.level))
    # a table of the wrong size for the rate table is refused
    with pytest.raises(ModelError, match="shape"):
        IndexPriors.load(tmp_path / "p.safetensors", (RateLevel(0, 64, 512, 500),))
    bad = IndexPriors({0: np.zeros(256, np.int32)})
    bad.save(tmp_path / "bad.safetensors")
    with pytest.raises(ModelError, match=">= 1"):
        IndexPriors.load(tmp_path / "bad.safetensors", rates)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="readable"):
        IndexPriors.load(tmp_path / "junk.safetensors", rates)
