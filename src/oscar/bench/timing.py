"""Timing and memory per pipeline stage: the library behind ``oscar bench``.

What one *configuration* (image size, level, dtype, batch size) measures::

    load the model ─► warm-up (encode, decode with the fewest steps; not recorded)
    repeat R times:   encode (compress) ─► decode with steps s₁ ─► decode with steps s₂ ─► …
    count FLOPs:      encode, decode with one step (untimed; N steps = N UNet passes)

Encoding and every number of decoding steps are interleaved within each repeat, so slow
periods on a shared machine hit all of them alike and their ratios stay fair. Each run records
the wall time of every stage of ``oscar.runtime.stages`` (the codec's own code paths, with the
device synchronised on GPU), the process CPU time, and peak memory: torch's allocator on GPU,
resident set size (RSS, the whole process: libraries and weights included) on CPU. Stages not
listed in ``oscar.runtime.stages`` (input checks, Python glue) appear as ``other`` = end to end − Σ
stages. Each configuration also measures the machine's float32 speed (:func:`float32_throughput`),
so that results from different machines can be compared.

On CPU, ``run_isolated`` runs each configuration in a fresh Python process so that one
configuration's peak RSS does not carry over into the next. The input image is the packaged
sample (768×512), mirrored and tiled to the requested size, so entropy coding sees a natural
image and every run is reproducible.
"""

from __future__ import annotations

import json
import logging
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from oscar import sample_image_path
from oscar.coding.codec import OscarCodec
from oscar.coding.effort import DEFAULT_EFFORT
from oscar.rates import padded_size
from oscar.runtime import device as dev
from oscar.runtime.allocator import tune_cpu_allocator
from oscar.runtime.device import synchronize
from oscar.runtime.provenance import environment, load_average
from oscar.runtime.stages import DECODE_STAGES, ENCODE_STAGES, recording

logger = logging.getLogger(__name__)

SCHEMA = "oscar-bench/1"
MB = 1024 * 1024


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class BenchConfig:
    """One configuration; JSON-able so that a child process can run it."""

    model: str
    height: int
    width: int
    level: int | None = None  # None: the model's highest-rate level
    steps: tuple[int, ...] = (1,)
    dtype: str = "float32"
    device: str = "auto"
    batch: int = 1
    repeats: int = 5
    warmup: int = 1
    threads: int | None = None  # None: torch's default
    baseline: bool = False  # the path before tuning: default allocator, networks as diffusers
    compare_float32: bool = True  # for other dtypes, measure the pixel difference to float32
    flops: bool = True  # count floating-point operations per stage (one extra, untimed run)
    effort: int = DEFAULT_EFFORT  # encoder effort (oscar.coding.index_search)


def parse_size(text: str) -> tuple[int, int]:
    """``"768x512"`` → (height 512, width 768): sizes are written width × height."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise ValueError(f"size must look like 768x512 (width x height), got {text!r}")
    return int(match.group(2)), int(match.group(1))


def bench_image(height: int, width: int) -> np.ndarray:
    """The packaged sample image, mirrored and tiled to (height, width, 3) uint8."""

    with Image.open(sample_image_path()) as image:
        tile = np.asarray(image.convert("RGB"))
    tile = np.concatenate([tile, tile[:, ::-1]], axis=1)
    tile = np.concatenate([tile, tile[::-1]], axis=0)
    reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]), 1)
    return np.ascontiguousarray(np.tile(tile, reps)[:height, :width])


# ----------------------------------------------------------------------------- measuring
def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Median and spread of repeated measurements (seconds or bytes)."""
    ordered = sorted(values)
    n = len(ordered)
    quartiles = statistics.quantiles(ordered, n=4, method="inclusive") if n > 1 else ordered * 3
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "p25": quartiles[0],
        "p75": quartiles[2],
        "n": n,
        "values": list(values),
    }


class RssProbe:
    """Resident set size of this process on Linux: now, and the peak since the last reset.

    The peak (VmHWM) is reset by writing 5 to /proc/self/clear_refs; where that is not
    allowed, the peak is the process's lifetime peak (which is why configurations run in
    separate processes).
    """

    def __init__(self) -> None:
        self.resettable = self._try_reset()

    @staticmethod
    def _status() -> dict[str, int]:
        try:
            text = Path("/proc/self/status").read_text()
        except OSError:
            return {}
        return {k: int(v) * 1024 for k, v in re.findall(r"(VmHWM|VmRSS):\s+(\d+) kB", text)}

    @staticmethod
    def _try_reset() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def reset(self) -> None:
        if self.resettable:
            self._try_reset()

    def read(self) -> tuple[int, int]:
        """(RSS now, peak RSS) in bytes."""
        status = self._status()
        if "VmRSS" in status:
            return status["VmRSS"], status["VmHWM"]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
        return peak, peak


@dataclass
class Run:
    """One recorded run: per-stage wall and CPU seconds, and memory."""

    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    total_wall: float = 0.0
    total_cpu: float = 0.0
    start_memory: int = 0
    peak_memory: int = 0


class Recorder:
    """Measures stages (``oscar.runtime.stages``) and whole runs on one device."""

    def __init__(self, device) -> None:
        self.device = device
        self._dev = dev
        self.rss = None if dev.is_accelerator(device) else RssProbe()
        self.run: Run | None = None

    def _memory(self) -> tuple[int, int]:
        measured = self._dev.memory_bytes(self.device)
        return measured if measured is not None else self.rss.read()

    def _reset_peak(self) -> None:
        if self.rss is None:
            self._dev.reset_peak_memory(self.device)
        else:
            self.rss.reset()

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        self._dev.synchronize(self.device)
        self._reset_peak()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self._dev.synchronize(self.device)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            run = self.run
            if run is not None:
                run.wall[name] = run.wall.get(name, 0.0) + wall
                run.cpu[name] = run.cpu.get(name, 0.0) + cpu
                run.peak[name] = max(run.peak.get(name, 0), self._memory()[1])

    @contextmanager
    def record(self) -> Iterator[Run]:
        """Record one end-to-end run (the stages inside it are added to it)."""

        self._dev.synchronize(self.device)
        self._reset_peak()
        run = Run(start_memory=self._memory()[0])
        self.run = run
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            with recording(self):
                yield run
        finally:
            self._dev.synchronize(self.device)
            run.total_wall = time.perf_counter() - wall
            run.total_cpu = time.process_time() - cpu
            run.peak_memory = max([self._memory()[1], *run.peak.values()])
            self.run = None


def summarize_runs(runs: Sequence[Run], stages: Sequence[str], batch: int) -> dict[str, Any]:
    """Per-stage and end-to-end statistics of repeated runs of one path."""
    out_stages = {}
    for name in (*stages, "other"):
        if name == "other":
            walls = [r.total_wall - sum(r.wall.values()) for r in runs]
            cpus = [r.total_cpu - sum(r.cpu.values()) for r in runs]
            peaks = None
        else:
            walls = [r.wall.get(name, 0.0) for r in runs]
            cpus = [r.cpu.get(name, 0.0) for r in runs]
            peaks = max(r.peak.get(name, 0) for r in runs) / MB
        out_stages[name] = {"wall_s": summarize(walls), "cpu_s": summarize(cpus)}
        if peaks is not None:
            out_stages[name]["peak_memory_mb"] = peaks
    total = summarize([r.total_wall for r in runs])
    return {
        "total": {"wall_s": total, "cpu_s": summarize([r.total_cpu for r in runs])},
        "stages": out_stages,
        "images_per_s": batch / total["median"],
        "peak_memory_mb": max(r.peak_memory for r in runs) / MB,
        "start_memory_mb": statistics.median(r.start_memory for r in runs) / MB,
    }


class FlopRecorder:
    """Counts floating-point operations per stage with torch's FlopCounterMode.

    Multiply-adds count as 2. torch has no formula for the CPU flash-attention kernel, so one
    is added (the same count as for the CUDA kernels).
    """

    def __init__(self) -> None:
        self.flops: dict[str, int] = {}

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        def cpu_attention(q, k, v, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(q, k, v)

        mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention}
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            yield
        self.flops[name] = self.flops.get(name, 0) + counter.get_total_flops()


# ----------------------------------------------------------------------------- running
def _psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """PSNR in dB of two uint8 images; None when they are identical (JSON has no infinity)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return None if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def float32_throughput(device, repeats: int = 5) -> dict[str, float]:
    """The machine's float32 speed in GFLOP/s, measured in this process with its threads.

    Two kernels: a 2048×2048 matrix product, near the machine's peak, and a 3×3 convolution of
    64 channels on a 256×384 channels-last image, like the VAE decoder's largest ones. Machines
    sold under one CPU name differ by 2× or more here (vector units, clocks, neighbours), and
    the codec's stages depend on it unequally (the VAE decoder runs at the convolution's rate,
    the UNet partly below it), so every result records it: runs on different machines can then
    be told apart, and compared.
    """

    def rate(work, flop: float) -> float:
        for _ in range(2):
            work()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            work()
            synchronize(device)
            times.append(time.perf_counter() - start)
        return flop / statistics.median(times) / 1e9

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(2048, 2048, generator=generator).to(device)
    x = torch.randn(1, 64, 256, 384, generator=generator).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3, generator=generator).to(device)
    w = w.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return {
            "matmul": rate(lambda: a @ a, 2 * 2048**3),
            "conv3x3": rate(
                lambda: torch.nn.functional.conv2d(x, w, padding=1), 2 * 64 * 64 * 9 * 256 * 384
            ),
        }


def _load_codec(config: BenchConfig, dtype: str | None = None):
    return OscarCodec.from_pretrained(
        config.model,
        device=config.device,
        dtype=dtype or config.dtype,
        optimize=not config.baseline,
        effort=config.effort,
    )


def run_configuration(config: BenchConfig, save_file: Path | None = None) -> dict[str, Any]:
    """Measure one configuration in this process; returns a JSON-ready dict.

    ``save_file`` receives the (first) compressed file, for :func:`decode_only`.
    """

    allocator_tuned = False if config.baseline else tune_cpu_allocator()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    load_start = time.perf_counter()
    codec = _load_codec(config)
    load_s = time.perf_counter() - load_start
    level = config.level
    if level is None:
        level = max(codec.levels, key=lambda lv: lv.nominal_bpp).level
    for steps in config.steps:
        codec.check_steps(steps, level)
    image = bench_image(config.height, config.width)
    images = [image] * config.batch
    recorder = Recorder(codec.device)

    def encode() -> list[bytes]:
        if config.batch == 1:
            return [codec.compress(image, level)]
        return [codec.pack(r) for r in codec.encode_batch(images, level)]

    def decode(data: list[bytes], steps: int) -> list[np.ndarray]:
        if config.batch == 1:
            return [codec.decompress(data[0], steps)]
        return codec.decode_batch([codec.unpack(d) for d in data], steps)

    throughput = float32_throughput(codec.device)
    for _ in range(config.warmup):  # the fewest steps: every UNet shape is the same
        decode(encode(), min(config.steps))
    encode_runs: list[Run] = []
    decode_runs: dict[int, list[Run]] = {s: [] for s in config.steps}
    outputs: dict[int, list[np.ndarray]] = {}
    files: list[list[bytes]] = []
    for _ in range(config.repeats):
        with recorder.record() as run:
            data = encode()
        encode_runs.append(run)
        files.append(data)
        for steps in config.steps:
            with recorder.record() as run:
                decoded = decode(data, steps)
            decode_runs[steps].append(run)
            outputs.setdefault(steps, decoded)
            if any(not np.array_equal(a, b) for a, b in zip(decoded, outputs[steps], strict=True)):
                raise RuntimeError(f"decoding with {steps} steps is not deterministic")
    if any(f != files[0] for f in files):
        raise RuntimeError("encoding is not deterministic: the bytes changed between repeats")
    if save_file is not None:
        save_file.write_bytes(files[0][0])
    flops: dict[str, dict[str, int]] = {}
    if config.flops:
        for key, work in [("encode", encode), ("1", lambda: decode(files[0], 1))]:
            with recording(FlopRecorder()) as counter:
                work()
            flops[key] = counter.flops
        for steps in config.steps:  # each DDIM step is one more UNet pass of the same shape
            flops[str(steps)] = {**flops["1"], "unet": steps * flops["1"].get("unet", 0)}

    decoded_by_steps = {
        str(s): summarize_runs(decode_runs[s], DECODE_STAGES, config.batch) for s in config.steps
    }
    encoded = summarize_runs(encode_runs, ENCODE_STAGES, config.batch)
    for key, entry in [("encode", encoded), *decoded_by_steps.items()]:
        for name, count in flops.get(key, {}).items():
            entry["stages"][name]["gflop"] = count / 1e9
        if key in flops:
            entry["total"]["gflop"] = sum(flops[key].values()) / 1e9
    if "1" in decoded_by_steps:
        one = decoded_by_steps["1"]["total"]["wall_s"]["median"]
        for entry in decoded_by_steps.values():
            entry["time_vs_one_step"] = entry["total"]["wall_s"]["median"] / one
    pixels = config.height * config.width
    result: dict[str, Any] = {
        "config": {**asdict(config), "level": level, "steps": list(config.steps)},
        "model": {
            "name": codec.model.config.name,
            "directory": str(codec.loaded.directory),
            "parameters": sum(p.numel() for p in codec.model.parameters()),
            "fingerprint": codec.fingerprint.hex(),
        },
        "runtime": {
            "device": str(codec.device),
            "dtype": str(codec.dtype).removeprefix("torch."),
            "memory_format": "channels_last"
            if codec.memory_format == torch.channels_last
            else "contiguous",
            "allocator_tuned": allocator_tuned,
            "threads": torch.get_num_threads(),
            "model_load_s": load_s,
            "float32_gflops": throughput,
        },
        "padded_size": list(padded_size(config.height, config.width, codec.pad_multiple)),
        "file_bytes": len(files[0][0]),
        "bpp": len(files[0][0]) * 8 / pixels,
        "encode": encoded,
        "decode": decoded_by_steps,
        "deterministic": True,  # checked above: same bytes and pixels in every repeat
    }
    if config.compare_float32 and codec.dtype != torch.float32:
        result["vs_float32"] = compare_to_float32(codec, config, level, image)
    return result


def compare_to_float32(codec, config: BenchConfig, level: int, image: np.ndarray) -> dict:
    """How far a reduced-precision codec is from float32: indices and decoded pixels."""
    reference = _load_codec(config, dtype="float32")
    ref_record = reference.encode(image, level)
    our_record = codec.encode(image, level)
    ref_image = reference.decode(ref_record)
    decoded = codec.decode(ref_record)  # the decoder alone: one file, both precisions
    return {
        "indices_equal_fraction": float(np.mean(ref_record.indices == our_record.indices)),
        "decoder_psnr_db": _psnr(decoded, ref_image),
        "decoder_max_abs_diff": int(np.abs(decoded.astype(int) - ref_image.astype(int)).max()),
        "end_to_end_psnr_db": _psnr(codec.decode(our_record), ref_image),
    }


def decode_only(config: BenchConfig, path: Path) -> dict[str, Any]:
    """Decode one file once in this (fresh) process, as ``oscar decompress`` would.

    Its peak memory is what decoding alone needs: in the main measurement the same process has
    encoded first, and memory the allocator keeps from that can raise the decoding peak.
    """

    allocator_tuned = False if config.baseline else tune_cpu_allocator()
    codec = _load_codec(config)
    recorder = Recorder(codec.device)
    data = path.read_bytes()
    with recorder.record() as run:
        codec.decompress(data)
    return {
        "wall_s": run.total_wall,
        "peak_memory_mb": run.peak_memory / MB,
        "start_memory_mb": run.start_memory / MB,
        "stage_peak_memory_mb": {k: v / MB for k, v in run.peak.items()},
        "allocator_tuned": allocator_tuned,
    }


def _run_child(args: Sequence[str], out: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "oscar.bench.timing", *args, str(out)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"benchmark process failed ({proc.returncode}):\n{tail}")
    return json.loads(out.read_text())


def run_isolated(config: BenchConfig) -> dict[str, Any]:
    """Run one configuration in a fresh Python process (clean peak RSS); same result dict.

    A second fresh process then decodes the file once (one step) and adds ``decode_only``:
    the peak memory of decoding alone.
    """
    with tempfile.TemporaryDirectory(prefix="oscar-bench-") as tmp:
        payload = json.dumps(asdict(config))
        file = Path(tmp) / "image.oscar"
        result = _run_child([payload, str(file)], Path(tmp) / "result.json")
        if config.batch == 1 and file.is_file():
            result["decode_only"] = _run_child(
                ["--decode-only", payload, str(file)], Path(tmp) / "decode.json"
            )
        return result


def run_benchmark(configs: Sequence[BenchConfig], isolate: bool, progress=None) -> dict[str, Any]:
    """Run every configuration; the full results document (``SCHEMA``)."""
    started = datetime.now(timezone.utc)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "created": started.isoformat(timespec="seconds"),
        "command": sys.argv,
        "isolated": isolate,
        **environment(configs[0].device if configs else "auto"),
        "load_average": {"start": load_average()},
        "results": [],
    }
    for i, config in enumerate(configs):
        if progress is not None:
            progress(i, config)
        result = run_isolated(config) if isolate else run_configuration(config)
        result["load_average_after"] = load_average()
        doc["results"].append(result)
    doc["load_average"]["end"] = load_average()
    doc["elapsed_s"] = (datetime.now(timezone.utc) - started).total_seconds()
    return doc


def _child_main(argv: Sequence[str]) -> int:
    """For run_isolated: ``python -m oscar.bench.timing CONFIG_JSON FILE OUT_JSON`` measures one
    configuration and writes its first file to FILE; ``--decode-only CONFIG_JSON FILE OUT_JSON``
    decodes FILE once."""
    only = argv[0] == "--decode-only"
    if only:
        argv = argv[1:]
    data = json.loads(argv[0])
    data["steps"] = tuple(data["steps"])
    config = BenchConfig(**data)
    if only:
        result = decode_only(config, Path(argv[1]))
    else:
        result = run_configuration(config, save_file=Path(argv[1]))
    Path(argv[2]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
