"""Fuzzing the decoder: mutated files through ``decompress`` and ``info``.

The contract (design.md invariant 5): whatever the bytes, ``OscarCodec.decompress`` returns an
image or raises a :class:`~oscar.errors.BitstreamError`, and so does the parser behind
``oscar info``; nothing else escapes, no input runs past a time bound, and no allocation is
decided by an unchecked header field. On top of that, every file the decoder accepts must be
*canonical*: packing what it decoded gives back the same bytes, so a file has one reading.

Inputs are valid files made by the codec under test, then mutated: bit flips, extreme bytes,
truncation, appended bytes, splices of two files, header fields set to extremes, payload-length
lies, coder-id swaps, payloads replaced, resized or cut at a word. Most mutations get their
CRC-32 recomputed, or the checksum would reject nearly all of them before the deeper checks (the
model-level checks and both index coders) ever ran.

Long runs (their results are recorded in docs/robustness.md)::

    oscar init configs/tiny.json -o /tmp/fuzz-model --force
    oscar fit-priors /tmp/fuzz-model src/oscar/assets/sample.png
    nice -n 19 python -m oscar.fuzz --model /tmp/fuzz-model --minutes 30 --crashes fuzz-crashes
    nice -n 19 python -m oscar.fuzz --model /tmp/fuzz-model --minutes 30 --atheris  # guided

The second form needs ``pip install atheris``: libFuzzer's coverage-guided search over the
instrumented ``oscar`` modules, with the same check and a mutator that repairs the CRC.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import random
import struct
import sys
import threading
import time
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_FIXED = 18  # bytes before the payload-length field (oscar.bitstream)
_INTERESTING_BYTES = (0x00, 0x01, 0x02, 0x07, 0x0F, 0x10, 0x11, 0x7F, 0x80, 0x81, 0xFE, 0xFF)
_INTERESTING_SIDES = (0, 1, 2, 7, 8, 63, 64, 65, 127, 128, 255, 256, 4096, 32767, 65535)
_INTERESTING_LENGTHS = (0, 1, 3, 4, 5, 127, 128, 16383, 16384, 2**21, 2**28 - 1)


class ContractViolation(Exception):
    """An input made the decoder break its contract (carries the input)."""

    def __init__(self, problem: str, data: bytes) -> None:
        super().__init__(problem)
        self.problem = problem
        self.data = data


# ----------------------------------------------------------------------------- mutations
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _split(data: bytes) -> tuple[bytes, bytes] | None:
    """(18-byte fixed header, payload) of a well-formed file, or None."""
    if len(data) < _FIXED + 5:
        return None
    value, shift, offset = 0, 0, _FIXED
    while offset < len(data) and offset < _FIXED + 4:
        byte = data[offset]
        value |= (byte & 0x7F) << shift
        offset += 1
        shift += 7
        if not byte & 0x80:
            break
    payload = data[offset : offset + value]
    return (data[:_FIXED], payload) if offset + value + 4 == len(data) else None


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
            fixed[14 + rng.randrange(4)] = rng.choice((0, 1, 128, 254, 255, rng.randrange(256)))
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


# ----------------------------------------------------------------------------- the check
@dataclass
class FuzzReport:
    """What a fuzzing run did: counts per outcome, stage and strategy, and any violations."""

    inputs: int = 0
    seconds: float = 0.0
    outcomes: Counter = field(default_factory=Counter)  # error class name, or "decoded"
    stages: Counter = field(default_factory=Counter)  # where inputs were stopped
    strategies: Counter = field(default_factory=Counter)
    accepted_by_strategy: Counter = field(default_factory=Counter)
    violations: list[ContractViolation] = field(default_factory=list)
    slowest_seconds: float = 0.0  # CPU time
    peak_unpack_bytes: int = 0
    peak_rss_mib: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "seconds": round(self.seconds, 1),
            "inputs_per_second": round(self.inputs / max(self.seconds, 1e-9), 1),
            "violations": [v.problem for v in self.violations],
            "outcomes": dict(self.outcomes.most_common()),
            "stages": dict(self.stages.most_common()),
            "accepted_by_strategy": dict(self.accepted_by_strategy.most_common()),
            "slowest_input_cpu_seconds": round(self.slowest_seconds, 3),
            "peak_unpack_bytes": self.peak_unpack_bytes,
            "peak_rss_mib": round(self.peak_rss_mib, 1),
        }


def _stage(exc: Exception, container_ok: bool, coder_id: int | None) -> str:
    from oscar.errors import FingerprintMismatchError

    if not container_ok:
        return "container"  # oscar.bitstream.read: magic .. CRC .. flags .. limits
    if isinstance(exc, FingerprintMismatchError) or "rate table" in str(exc):
        return "model"
    return {0: "payload-fixed", 1: "payload-entropy"}.get(coder_id, "payload")


def check_input(
    codec: Any,
    data: bytes,
    *,
    decode: bool = True,
    memory_bound: int | None = None,
    report: FuzzReport | None = None,
) -> str:
    """Run one input through ``info``'s parser, ``unpack`` and (if accepted) ``decode``.

    Returns the outcome (an error class name, "unpacked" or "decoded"). Raises
    ContractViolation when the decoder breaks its contract: an exception other than a
    BitstreamError, an accepted file that is not canonical, a wrong image shape, or (with
    ``memory_bound``) more Python-visible memory in ``unpack`` than the bound, as tracemalloc
    measures it (numpy's buffers included; torch's CPU allocator is not seen, and no tensor
    exists before ``decode``).
    """
    from oscar.commands.coding import describe_file
    from oscar.errors import BitstreamError

    def violation(problem: str) -> ContractViolation:
        return ContractViolation(problem, data)

    config = codec.model.config
    try:
        info = describe_file(data, config, codec.limits)
    except BitstreamError:
        info = None
    except Exception as exc:
        raise violation(f"info raised {type(exc).__name__}: {exc}") from exc
    coder_id = data[5] & 0x0F if info is not None else None

    own_trace = memory_bound is not None and not tracemalloc.is_tracing()
    if own_trace:
        tracemalloc.start()  # around unpack only: tracing would slow the network 4 to 5 times
    if memory_bound is not None:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    try:
        record = codec.unpack(data)
    except BitstreamError as exc:
        outcome = type(exc).__name__
        if report is not None:
            report.stages[_stage(exc, info is not None, coder_id)] += 1
        record = None
    except Exception as exc:
        raise violation(f"unpack raised {type(exc).__name__}: {exc}") from exc
    finally:
        if memory_bound is not None:
            used = tracemalloc.get_traced_memory()[1] - base
            if own_trace:
                tracemalloc.stop()
    if memory_bound is not None:
        if report is not None:
            report.peak_unpack_bytes = max(report.peak_unpack_bytes, used)
        if used > memory_bound:
            raise violation(f"unpack allocated {used} bytes, over the bound of {memory_bound}")
    if record is None:
        return outcome

    if info is None:
        raise violation("unpack accepted a file that info's parser rejects")
    from oscar.entropy import CODER_NAMES

    if report is not None:
        report.stages["accepted"] += 1
    repacked = codec.pack(record, coder=CODER_NAMES[coder_id])
    if repacked != data:
        raise violation("an accepted file is not canonical: repacking gives other bytes")
    expected = codec.token_grid(record.height, record.width, record.level)
    if record.indices.shape != expected or info.get("tokens") != list(expected):
        raise violation(f"token grid {record.indices.shape}, expected {expected}")
    if not decode:
        return "unpacked"
    try:
        image = codec.decode(record)
    except Exception as exc:
        raise violation(f"decode of an accepted file raised {type(exc).__name__}: {exc}") from exc
    shape = (record.height, record.width) + (() if record.grey else (3,))
    if image.shape != shape or str(image.dtype) != "uint8":
        raise violation(f"decoded image {image.shape} {image.dtype}, expected {shape} uint8")
    return "decoded"


# ----------------------------------------------------------------------------- seeds and runs
def make_seeds(codec: Any, sizes: Sequence[tuple[int, int]] | None = None) -> list[bytes]:
    """Valid files: every level, both coders (entropy when the model has priors), colour and
    greyscale images of a few sizes within the codec's pixel limit."""
    import numpy as np

    from oscar.codec import EncodedImage

    limit = codec.limits.max_pixels
    sizes = sizes or [(1, 1), (16, 16), (9, 100), (32, 32)]
    sizes = [s for s in sizes if s[0] * s[1] <= limit]
    coders = ["fixed"] + (["entropy"] if codec.loaded.priors is not None else [])
    rng = np.random.default_rng(0)
    seeds = []
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        image = np.stack([xx * 7 % 256, yy * 5 % 256, (xx + yy) * 3 % 256], axis=2)
        image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
        if i % 2:
            image = image[:, :, 0]  # greyscale: sets the grey flag
        source = codec.prepare_image(image)
        y, rms_codes = codec.encode_latent(source)  # once per image, as compress_to_budget does
        for rate in codec.levels:
            record = EncodedImage(
                rate.level, h, w, codec.hyper_encode(y, rate.level), rms_codes, source.grey
            )
            seeds += [codec.pack(record, coder) for coder in coders]
    return seeds


def _rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Watchdog:
    """Ends the process (after saving the input) when one input runs past ``hang_seconds``:
    a hang would otherwise stop the run without a report."""

    def __init__(self, hang_seconds: float, crashes: Path | None) -> None:
        self.hang_seconds = hang_seconds
        self.crashes = crashes
        self.current: tuple[float, bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            current = self.current
            if current is not None and time.monotonic() - current[0] > self.hang_seconds:
                if self.crashes is not None:
                    _save(self.crashes, "hang", current[1])
                print(f"oscar.fuzz: an input ran over {self.hang_seconds} s", file=sys.stderr)
                faulthandler.dump_traceback(all_threads=True)
                os._exit(70)

    def stop(self) -> None:
        self._stop.set()


def _save(folder: Path, kind: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}-{zlib.crc32(data):08x}.oscar"
    path.write_bytes(data)
    return path


def fuzz(
    codec: Any,
    seeds: Sequence[bytes],
    *,
    seed: int = 0,
    max_inputs: int | None = None,
    seconds: float | None = None,
    decode_every: int = 1,
    time_bound: float = 10.0,
    memory_bound: int | None = None,
    crashes: Path | None = None,
    hang_seconds: float = 120.0,
    progress: Callable[[FuzzReport], None] | None = None,
) -> FuzzReport:
    """Mutate ``seeds`` and check each input (see :func:`check_input`) until ``max_inputs``
    or ``seconds``; violations (and inputs slower than ``time_bound``) are collected, not raised.
    Every ``decode_every``-th accepted input is decoded to pixels (0: none); with
    ``memory_bound``, what ``unpack`` allocates is measured and bounded."""
    if max_inputs is None and seconds is None:
        raise ValueError("give max_inputs or seconds")
    rng = random.Random(seed)
    mutator = Mutator(seeds, rng)
    report = FuzzReport()
    watchdog = _Watchdog(hang_seconds, crashes)
    started = time.monotonic()
    last_progress = started
    try:
        while True:
            now = time.monotonic()
            if max_inputs is not None and report.inputs >= max_inputs:
                break
            if seconds is not None and now - started >= seconds:
                break
            strategy, data = mutator.mutate()
            report.inputs += 1
            report.strategies[strategy] += 1
            watchdog.current = (time.monotonic(), data)
            # The bound is on CPU time (all threads): wall time on a shared machine measures
            # the neighbours. The watchdog, on wall time, catches true hangs.
            t0 = time.process_time()
            try:
                decode = decode_every > 0 and report.stages["accepted"] % decode_every == 0
                outcome = check_input(
                    codec, data, decode=decode, memory_bound=memory_bound, report=report
                )
            except ContractViolation as exc:
                exc.problem = f"{exc.problem} (strategy {strategy})"
                report.violations.append(exc)
                if crashes is not None:
                    _save(crashes, "crash", data)
                outcome = "violation"
            elapsed = time.process_time() - t0
            watchdog.current = None
            report.outcomes[outcome] += 1
            if outcome in ("decoded", "unpacked"):
                report.accepted_by_strategy[strategy.split("+")[0]] += 1
            report.slowest_seconds = max(report.slowest_seconds, elapsed)
            if elapsed > time_bound:
                report.violations.append(
                    ContractViolation(f"input took {elapsed:.1f} CPU s (strategy {strategy})", data)
                )
                if crashes is not None:
                    _save(crashes, "slow", data)
            if progress is not None and now - last_progress > 60:
                report.seconds = now - started
                progress(report)
                last_progress = now
    finally:
        watchdog.stop()
    report.seconds = time.monotonic() - started
    report.peak_rss_mib = _rss_mib()
    return report


def unpack_memory_bound(codec: Any, data_bytes: int) -> int:
    """What ``unpack`` may allocate (Python-visible) for a file of ``data_bytes``: a constant,
    a few copies of the file, and 64 bytes per token for the most tokens the limit allows.

    That token count follows from the pixel limit P alone, never from a field of the file: an
    image of H·W ≤ P pixels pads to at most P + m·(H + W) + m² pixels (m the pad multiple,
    H + W ≤ P + 1 and each side ≤ 65535), coded at the finest grid factor.
    """
    m = codec.pad_multiple
    finest = min(rate.grid_factor for rate in codec.levels)
    p = codec.limits.max_pixels
    padded = p + m * min(p + 1, 2 * 65535) + m * m
    return 2**20 + 16 * data_bytes + 64 * (padded // (finest * finest))


# ----------------------------------------------------------------------------- command line
def _load_codec(args: argparse.Namespace) -> Any:
    from oscar.bitstream import Limits
    from oscar.codec import OscarCodec

    return OscarCodec.from_pretrained(
        args.model, device="cpu", limits=Limits(max_pixels=args.max_pixels)
    )


def _run_atheris(args: argparse.Namespace) -> int:
    import atheris

    with atheris.instrument_imports(include=["oscar"]):
        import oscar.bitstream
        import oscar.codec
        import oscar.commands.coding
        import oscar.entropy  # noqa: F401
    codec = _load_codec(args)
    seeds = make_seeds(codec)
    corpus = Path(args.corpus)
    corpus.mkdir(parents=True, exist_ok=True)
    for data in seeds:
        (corpus / f"seed-{zlib.crc32(data):08x}.oscar").write_bytes(data)
    crashes = Path(args.crashes)
    crashes.mkdir(parents=True, exist_ok=True)
    mutator = Mutator(seeds, random.Random(args.seed))
    report = FuzzReport()
    stats_path = crashes / "atheris-stats.json"
    last = [time.monotonic()]

    def test_one(data: bytes) -> None:
        report.inputs += 1
        decode = args.decode_every > 0 and report.stages["accepted"] % args.decode_every == 0
        t0 = time.process_time()
        outcome = check_input(codec, data, decode=decode, report=report)
        elapsed = time.process_time() - t0  # CPU time; libFuzzer's -timeout (wall) is for hangs
        report.slowest_seconds = max(report.slowest_seconds, elapsed)
        if elapsed > args.time_bound:
            raise ContractViolation(f"input took {elapsed:.1f} CPU s", data)
        report.outcomes[outcome] += 1
        if time.monotonic() - last[0] > 30:
            stats_path.write_text(json.dumps(report.summary(), indent=1))
            last[0] = time.monotonic()

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        mutator.rng.seed(seed)
        if mutator.rng.random() < 0.5:
            out = atheris.Mutate(data, max_size)
            if mutator.rng.random() < 0.75:
                out = with_crc(out)
        else:
            out = mutator.mutate(data if _split(data) else None)[1]
        return out[:max_size]

    argv = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={int(args.minutes * 60)}",
        "-timeout=300",
        "-rss_limit_mb=6144",
        "-max_len=4096",
        f"-seed={args.seed + 1}",
        *([f"-runs={args.runs}"] if args.runs else []),
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
    ]
    atheris.Setup(argv, test_one, custom_mutator=custom_mutator)
    atheris.Fuzz()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oscar.fuzz", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="model directory")
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mutations")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=32 * 32,
        help="the decoder's pixel limit while fuzzing (small, so each decode is quick)",
    )
    parser.add_argument("--time-bound", type=float, default=10.0, help="CPU seconds per input")
    parser.add_argument(
        "--decode-every", type=int, default=5, help="decode one accepted input in N to pixels"
    )
    parser.add_argument("--crashes", default="fuzz-crashes", help="folder for failing inputs")
    parser.add_argument("--corpus", default="fuzz-corpus", help="atheris corpus folder")
    parser.add_argument("--atheris", action="store_true", help="coverage-guided (libFuzzer)")
    parser.add_argument("--runs", type=int, default=0, help="with --atheris: stop after N inputs")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared machine, spinning OpenMP threads waste CPU)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    if args.atheris:
        return _run_atheris(args)

    codec = _load_codec(args)
    seeds = make_seeds(codec)

    def progress(report: FuzzReport) -> None:
        print(
            f"{report.seconds / 60:5.1f} min  {report.inputs} inputs  "
            f"{report.outcomes['decoded']} decoded  {len(report.violations)} violations",
            file=sys.stderr,
            flush=True,
        )

    report = fuzz(
        codec,
        seeds,
        seed=args.seed,
        seconds=args.minutes * 60,
        decode_every=args.decode_every,
        time_bound=args.time_bound,
        memory_bound=unpack_memory_bound(codec, 4096),
        crashes=Path(args.crashes),
        progress=progress,
    )
    summary = {
        "seeds": len(seeds),
        "max_pixels": args.max_pixels,
        "decode_every": args.decode_every,
        **report.summary(),
    }
    print(json.dumps(summary, indent=2))
    return 1 if report.violations else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
