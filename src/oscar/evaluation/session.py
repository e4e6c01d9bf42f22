"""One ``oscar eval`` run: shard the images over processes, evaluate, merge, compute BD-rates
and write the outputs. The command parses its options into an :class:`EvalRequest` and prints
what :func:`run_evaluation` returns.

Several processes (``accelerate launch -m oscar.cli eval ...``, or ``torchrun``) each evaluate
every N-th image and save their part under ``OUT/shards``; process 0 waits for all, merges the
parts and writes the outputs.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from oscar.coding.codec import OscarCodec
from oscar.errors import ConfigError
from oscar.evaluation.baselines import baseline_versions, get_baselines
from oscar.evaluation.bdrate import bd_rates
from oscar.evaluation.metrics import MetricSuite
from oscar.evaluation.plots import read_published
from oscar.evaluation.report import write_outputs
from oscar.evaluation.runner import (
    EvalOptions,
    EvalResult,
    Shard,
    evaluate_images,
    finalize,
    list_images,
)
from oscar.evaluation.shards import load_partial, save_partial
from oscar.runtime.device import is_accelerator
from oscar.runtime.provenance import environment, summary


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate and how (the options of ``oscar eval``, docs/evaluation.md)."""

    data: Sequence[str]
    output: Path
    baselines: str
    metrics: Sequence[str]
    options: EvalOptions = field(default_factory=EvalOptions)  # levels, sweeps, crops, …
    anchor: str | None = None
    weights_dir: str | None = None
    fid_patch: int = 256
    fid_shifted: bool = True
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    published: str | None = None
    force: bool = False


@dataclass(frozen=True)
class EvalOutcome:
    """What process 0 wrote: the merged result and the metrics shown (not skipped)."""

    result: EvalResult
    metrics: list[str]


def check_output(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConfigError(f"{out} exists and is not empty; pass --force to write into it")


def process_shard(device: str):
    """(index, count, device, state) under ``accelerate launch`` / ``torchrun``; (0, 1, None,
    None) for a single process. Without CUDA (or with ``device`` cpu) processes share the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None, None
    try:
        from accelerate import PartialState  # lazy: optional, only several processes need it
    except ImportError:
        raise ConfigError("several processes need `accelerate` (pip install accelerate)") from None

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    if state.num_processes <= 1:
        return 0, 1, None, None
    return state.process_index, state.num_processes, state.device, state


def run_evaluation(
    request: EvalRequest,
    load_codec: Callable[[str], OscarCodec],
    device: str = "auto",
    notice: Callable[[str], None] = print,
) -> EvalOutcome | None:
    """Run the evaluation; ``load_codec(device)`` loads the model on a device. Returns the
    outcome on process 0, None on the others."""
    out = Path(request.output)
    index, count, shard_device, state = process_shard(device)
    check_output(out, request.force)
    if state is not None:  # every process has checked OUT before any of them writes to it
        state.wait_for_everyone()
    baselines = get_baselines(request.baselines)
    metrics = list(request.metrics)
    published = read_published(request.published) if request.published else []
    images = list_images(request.data, request.options.max_images)
    if not images:
        raise ConfigError("no images found in " + ", ".join(request.data))
    if shard_device is not None and is_accelerator(shard_device) and device == "auto":
        device = str(shard_device)
    codec = load_codec(device)
    options = replace(
        request.options, levels=tuple(request.options.levels or codec.model.config.level_numbers)
    )
    for level in options.levels:  # before any work: a level whose timestep cannot hold the steps
        codec.check_steps(options.steps, level)
    anchor = request.anchor or (baselines[0].name if baselines else "oscar")
    suite = MetricSuite(
        metrics,
        request.weights_dir,
        codec.device,
        fid_patch=request.fid_patch,
        fid_shifted=request.fid_shifted,
        kid_subsets=request.kid_subsets,
        kid_subset_size=request.kid_subset_size,
    )
    if index == 0:
        for line in suite.skip_lines():
            notice(line)
    part = evaluate_images(codec, images, baselines, suite, options, Shard(index, count))
    if count > 1:
        save_partial(part, out / "shards" / f"part-{index:03d}")
        state.wait_for_everyone()
        if index != 0:
            return None
        parts = [load_partial(out / "shards" / f"part-{i:03d}") for i in range(count)]
    else:
        parts = [part]
    result = finalize(parts, suite)
    shown = [m for m in metrics if m not in suite.skipped]
    bd = bd_rates(result.aggregates, anchor, shown)
    steps = options.steps
    info = {
        "data": ", ".join(request.data),
        "images": len(images),
        "model": str(codec.loaded.directory),
        "model fingerprint": codec.fingerprint.hex(),
        "levels": ", ".join(map(str, options.levels)),
        "protocol": options.protocol,
        "encoder effort": str(codec.effort),
        "decoding steps": f"{steps} ({'one-step decoder' if steps == 1 else 'DDIM'})",
        "baselines": ", ".join(f"{b.name} ({b.options})" for b in baselines) or "none",
        "down-scaled baselines": f"2x and 4x, {options.downscaled}",
        "FID/KID protocol": f"{request.fid_patch}px patches"
        + (" + half-patch-shifted grid" if request.fid_shifted else "")
        + ", resized to 299, pytorch-fid Inception pool3",
        "processes": count,
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        **summary(environment(codec.device)),
        **baseline_versions(),
    }
    write_outputs(result, out, metrics, bd, info, published)
    return EvalOutcome(result, shown)
