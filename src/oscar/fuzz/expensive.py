"""Valid but expensive files: small, correct files that announce large images.

Mutation fuzzing looks for files the decoder mishandles; these are files it handles correctly
and that still cost a lot: every check passes (CRC, fingerprint, level, payload length), so the
decoder runs the networks on the announced size. What bounds them is the user's pixel limit
(``--max-pixels``) and memory budget (``--max-memory``), not the file. This mode measures the
cost per input byte: for each level and size, the smallest valid file (all tokens the same
codeword, the coder that gives fewer bytes), its decode time and its peak memory, each decode in
a fresh forked process so that peaks do not mix.

``python -m oscar.fuzz --model DIR --expensive --sizes 256,512,1024`` prints one JSON record per
(level, size) and the worst seconds and MiB per input byte; docs/robustness.md reports a run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from oscar.coding.codec import EncodedImage


def expensive_file(codec: Any, level: int, height: int, width: int) -> bytes:
    """The smallest valid file for ``codec`` announcing ``height`` × ``width`` at ``level``."""

    h, w = codec.token_grid(height, width, level)
    indices = np.zeros((h, w), dtype=np.int64)
    codes = np.full(4, 128, dtype=np.uint8)  # mid-range channel RMS
    return codec.pack(EncodedImage(level, height, width, indices, codes), "auto")


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _measure_in_child(codec: Any, data: bytes, write_fd: int) -> None:
    """In a forked child: decode ``data``; report (seconds, peak extra bytes, outcome)."""
    outcome = "decoded"
    try:
        try:  # reset the peak-RSS mark (Linux), so VmHWM is this decode's peak
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        before = _status_kib("VmRSS")
        t0 = time.perf_counter()
        try:
            codec.decompress(data)
        except Exception as exc:  # a refusal (limits, memory budget) is an outcome too
            outcome = f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - t0
        peak = max(0, _status_kib("VmHWM") - before) * 1024
        os.write(write_fd, f"{seconds}\n{peak}\n{outcome}".encode())
    finally:
        os._exit(0)


def measure(codec: Any, data: bytes, timeout: float = 600.0) -> dict[str, Any]:
    """Decode ``data`` in a forked process; its seconds, peak extra memory and outcome."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_fd)
        _measure_in_child(codec, data, write_fd)
    os.close(write_fd)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(read_fd)
            return {"seconds": timeout, "peak_bytes": None, "outcome": "timeout"}
        time.sleep(0.05)
    with os.fdopen(read_fd, "rb") as f:
        text = f.read().decode()
    parts = text.split("\n", 2)
    if len(parts) < 3:
        return {"seconds": None, "peak_bytes": None, "outcome": f"child died ({status})"}
    return {"seconds": float(parts[0]), "peak_bytes": int(parts[1]), "outcome": parts[2]}


def run(
    codec: Any, sizes: Sequence[int], levels: Sequence[int] | None = None, timeout: float = 600.0
) -> dict[str, Any]:
    """Every level × square size: file bytes, decode seconds and peak memory, per byte; and the
    worst seconds and bytes of memory per input byte over all decoded files."""
    records = []
    for level in levels if levels is not None else codec.model.config.level_numbers:
        for side in sizes:
            data = expensive_file(codec, level, side, side)
            result = measure(codec, data, timeout)
            record = {"level": level, "size": f"{side}x{side}", "file_bytes": len(data), **result}
            if result["outcome"] == "decoded":
                record["seconds_per_byte"] = result["seconds"] / len(data)
                record["peak_bytes_per_byte"] = result["peak_bytes"] / len(data)
            records.append(record)
    decoded = [r for r in records if r["outcome"] == "decoded"]

    def worst(key: str) -> dict[str, Any] | None:
        return max(decoded, key=lambda r: r[key]) if decoded else None

    return {
        "records": records,
        "worst_seconds_per_byte": worst("seconds_per_byte"),
        "worst_memory_per_byte": worst("peak_bytes_per_byte"),
    }
