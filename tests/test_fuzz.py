"""Decoder fuzzing, short run (the long run is ``python -m oscar.fuzz``; docs/robustness.md).

Whatever the bytes, ``decompress`` and ``info`` give an image or a BitstreamError; accepted files
are canonical; ``unpack`` allocates within a bound set by the limits, not by the file.
"""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oscar.coding.bitstream import Limits
from oscar.coding.codec import OscarCodec
from oscar.fuzz import (
    ContractViolation,
    assemble,
    check_input,
    fuzz,
    make_seeds,
    unpack_memory_bound,
    with_crc,
)

ALL_ERRORS = (
    "BadMagicError",
    "UnsupportedVersionError",
    "TruncatedError",
    "ChecksumError",
    "MalformedError",
    "LimitExceededError",
    "FingerprintMismatchError",
)


@pytest.fixture(scope="module")
def fuzz_codec(tiny_codec) -> OscarCodec:
    """The tiny model with a small pixel limit, so that every accepted input decodes quickly."""
    return OscarCodec(tiny_codec.loaded, device=torch.device("cpu"), limits=Limits(32 * 32))


@pytest.fixture(scope="module")
def seeds(fuzz_codec) -> list[bytes]:
    return make_seeds(fuzz_codec, sizes=[(1, 1), (16, 24), (32, 32)])


def test_seeds_cover_both_coders_and_are_canonical(fuzz_codec, seeds):
    assert {data[5] & 0x0F for data in seeds} == {0, 1}
    assert any(data[5] & 0x10 for data in seeds)  # greyscale sources
    for data in seeds:
        assert check_input(fuzz_codec, data, decode=False) == "unpacked"


def test_short_fuzz_run(fuzz_codec, seeds):
    """About 15 s: mutated files reach every layer, and the contract holds for all of them."""
    report = fuzz(
        fuzz_codec,
        seeds,
        seed=8,
        max_inputs=3000,
        decode_every=10,
        time_bound=20.0,
        memory_bound=unpack_memory_bound(fuzz_codec, 4096),
    )
    assert not report.violations, [v.problem for v in report.violations[:5]]
    # Without the CRC repair, nearly everything would stop at the checksum: these counts show
    # that the model checks and both index coders saw damaged input.
    for stage in ("container", "model", "payload-fixed", "payload-entropy", "accepted"):
        assert report.stages[stage] >= 20, (stage, report.summary())
    for error in ALL_ERRORS:
        assert report.outcomes[error] > 0, (error, report.summary())
    assert report.outcomes["decoded"] >= 10
    assert 0 < report.peak_unpack_bytes <= unpack_memory_bound(fuzz_codec, 4096)


def test_a_run_traces_memory_once_not_per_input(fuzz_codec, seeds, monkeypatch):
    """Each tracemalloc start/stop cycle leaks in CPython: per input, a long run grew by
    ~700 bytes an input. A run starts tracing once and stops it at the end."""
    import tracemalloc

    calls = []
    real_start, real_stop = tracemalloc.start, tracemalloc.stop
    monkeypatch.setattr(tracemalloc, "start", lambda *a: (calls.append("start"), real_start(*a)))
    monkeypatch.setattr(tracemalloc, "stop", lambda: (calls.append("stop"), real_stop()))
    report = fuzz(
        fuzz_codec,
        seeds,
        seed=1,
        max_inputs=200,
        memory_bound=unpack_memory_bound(fuzz_codec, 4096),
    )
    assert report.inputs == 200 and report.peak_unpack_bytes > 0
    assert calls == ["start", "stop"] and not tracemalloc.is_tracing()


def test_the_check_catches_violations(fuzz_codec, seeds, monkeypatch):
    """The oracle itself: a stray exception and a non-canonical acceptance are reported."""
    data = seeds[-1]
    with monkeypatch.context() as m:
        m.setattr(fuzz_codec, "unpack", lambda _: 1 / 0)
        with pytest.raises(ContractViolation, match="ZeroDivisionError"):
            check_input(fuzz_codec, data)
    entropy = next(d for d in seeds if d[5] & 0x0F == 1)
    real_pack = fuzz_codec.pack
    with monkeypatch.context() as m:
        m.setattr(fuzz_codec, "pack", lambda record, coder: real_pack(record, "fixed") + b"x")
        with pytest.raises(ContractViolation, match="canonical"):
            check_input(fuzz_codec, entropy, decode=False)
    with pytest.raises(ContractViolation, match="bound"):
        check_input(fuzz_codec, data, decode=False, memory_bound=10)


_small = st.integers(0, 80)
_side = st.one_of(_small, st.integers(0, 65535), st.sampled_from([63, 64, 65, 4096, 65535]))


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    level=st.one_of(st.integers(0, 7), st.integers(0, 255)),
    coder_flags=st.one_of(st.sampled_from([0x00, 0x01, 0x10, 0x11]), st.integers(0, 255)),
    real_fingerprint=st.booleans(),
    height=_side,
    width=_side,
    side_info=st.binary(min_size=4, max_size=4),
    payload=st.one_of(st.binary(max_size=64), st.binary(min_size=64, max_size=600)),
    length_lie=st.sampled_from([None, None, None, 0, 1, 2**20, 2**28 - 1]),
    words=st.booleans(),
)
def test_crafted_headers_with_valid_checksums(
    fuzz_codec,
    level,
    coder_flags,
    real_fingerprint,
    height,
    width,
    side_info,
    payload,
    length_lie,
    words,
):
    """Header fields anywhere in their range, a payload of any length (or whole words, for
    the range coder), a valid CRC: an image or a BitstreamError, never anything else."""
    if words:
        payload = payload[: len(payload) // 4 * 4]
    fingerprint = fuzz_codec.fingerprint if real_fingerprint else b"\x00\x01\x02\x03"
    fixed = b"OSC\x01" + bytes([level, coder_flags]) + fingerprint
    fixed += struct.pack(">HH", height, width) + side_info
    data = assemble(fixed, payload, length_lie)
    outcome = check_input(
        fuzz_codec, data, decode=False, memory_bound=unpack_memory_bound(fuzz_codec, len(data))
    )
    assert outcome == "unpacked" or outcome.endswith("Error")


def test_truncations_and_splices_of_every_seed(fuzz_codec, seeds):
    """Exhaustive, small: every prefix of a few seeds, CRC repaired or not."""
    for data in seeds[::7]:
        for cut in range(len(data)):
            for candidate in (data[:cut], with_crc(data[:cut])):
                outcome = check_input(fuzz_codec, candidate, decode=False)
                assert outcome.endswith("Error")


def test_mutation_fuzzing_command(tiny_model_dir, tmp_path, capsys):
    """The long run's command (docs/robustness.md) works and prints its JSON summary."""
    import json

    from oscar.fuzz.__main__ import main

    threads = torch.get_num_threads()
    try:
        args = ["--model", str(tiny_model_dir), "--minutes", "0.05", "--seed", "1"]
        assert main([*args, "--crashes", str(tmp_path / "x")]) == 0
    finally:
        torch.set_num_threads(threads)
    summary = json.loads(capsys.readouterr().out)
    assert summary["inputs"] > 0 and summary["violations"] == [] and summary["seeds"] > 0
    assert summary["peak_unpack_bytes"] > 0 and not (tmp_path / "x").exists()


def test_atheris_harness(tiny_model_dir, tmp_path):
    """The coverage-guided long run's command works (a hundred inputs)."""
    pytest.importorskip("atheris")
    command = [sys.executable, "-m", "oscar.fuzz", "--model", str(tiny_model_dir), "--atheris"]
    command += ["--runs", "100", "--corpus", str(tmp_path / "c"), "--crashes", str(tmp_path / "x")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done 100 runs" in run.stderr
    assert not [p for p in (tmp_path / "x").iterdir() if p.suffix != ".json"]
