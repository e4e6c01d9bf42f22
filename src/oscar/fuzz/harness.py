"""The fuzzing contract (``check_input``), seed files, and the plain mutation loop (``fuzz``)."""

from __future__ import annotations

import faulthandler
import logging
import os
import random
import resource
import threading
import time
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oscar.errors import BitstreamError, FingerprintMismatchError
from oscar.fuzz.mutations import Mutator

logger = logging.getLogger(__name__)


class ContractViolation(Exception):
    """An input made the decoder break its contract (carries the input)."""

    def __init__(self, problem: str, data: bytes) -> None:
        super().__init__(problem)
        self.problem = problem
        self.data = data


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
    if not container_ok:
        return "container"  # oscar.coding.bitstream.read: magic .. CRC .. flags .. limits
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
    # lazy: the coding modules load after atheris.instrument_imports (oscar.fuzz.__main__)
    from oscar.coding.file_info import describe_file

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
        # A single check traces unpack only; fuzz() keeps tracing on for a whole run instead,
        # because start/stop cycles leak (see there).
        tracemalloc.start()
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
    from oscar.coding.entropy import CODER_NAMES  # lazy: as describe_file above

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
    """Valid files: every level, both coders (entropy where the model has a prior), colour and
    greyscale images of a few sizes within the codec's pixel limit."""

    from oscar.coding.codec import EncodedImage  # lazy: as in check_input

    limit = codec.limits.max_pixels
    sizes = sizes or [(1, 1), (16, 16), (9, 100), (32, 32)]
    sizes = [s for s in sizes if s[0] * s[1] <= limit]
    priors = codec.loaded.priors
    tables = priors.tables if priors is not None else {}
    rng = np.random.default_rng(0)
    seeds = []
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        image = np.stack([xx * 7 % 256, yy * 5 % 256, (xx + yy) * 3 % 256], axis=2)
        image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
        if i % 2:
            image = image[:, :, 0]  # greyscale: sets the grey flag
        source = codec.prepare_image(image)
        y, codes = codec.encode_latents([source])  # once per image, as compress_to_budget does
        for rate in codec.levels:
            record = EncodedImage(
                rate.level, h, w, codec.encode_indices(y, rate.level)[0], codes[0], source.grey
            )
            coders = ["fixed"] + (["entropy"] if rate.level in tables else [])
            seeds += [codec.pack(record, coder) for coder in coders]
    return seeds


def _rss_mib() -> float:
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
                logger.critical("an input ran over %s s; stacks follow", self.hang_seconds)
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
    ``memory_bound``, what ``unpack`` allocates is measured and bounded (tracemalloc runs for the
    whole call)."""
    if max_inputs is None and seconds is None:
        raise ValueError("give max_inputs or seconds")
    rng = random.Random(seed)
    mutator = Mutator(seeds, rng)
    report = FuzzReport()
    # Tracing stays on for the whole run, decoding included (about twice the CPU time per
    # input): every tracemalloc start/stop cycle leaks in CPython 3.11, and starting and stopping
    # it around each unpack grew a long run by ~700 bytes an input (1.2 GB peak RSS after 1.1 M
    # inputs); pausing it only for the decodes still leaked ~220 bytes an input.
    own_trace = memory_bound is not None and not tracemalloc.is_tracing()
    if own_trace:
        tracemalloc.start()
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
        if own_trace:
            tracemalloc.stop()
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
