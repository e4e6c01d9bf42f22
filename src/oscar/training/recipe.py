"""Run a recipe: stages in order, each from the previous stage's model directory.

Layout under ``output_dir``::

    00-vae/         checkpoints/step-NNNNNNN/  logs/ (TensorBoard)  samples/  model/  done.json
    01-diffusion/   ...
    ...

A stage whose ``done.json`` exists is skipped, so re-running a recipe continues where it ended;
a stage with checkpoints but no ``done.json`` is resumed with ``--resume`` (without it, the run
refuses rather than silently restarting). ``done.json`` records the hardware, the steps, the wall
time and the final losses of the stage.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from oscar.coding.codec import OscarCodec
from oscar.coding.prior_fitting import fit_priors
from oscar.coding.priors import IndexPriors
from oscar.config import ModelConfig
from oscar.errors import ConfigError
from oscar.models.oscar import OscarModel
from oscar.runtime.provenance import environment
from oscar.store.pretrained import (
    LoadedModel,
    load_model,
    model_on_base,
    require_fingerprint,
    save_model,
)
from oscar.training.add_level import add_level
from oscar.training.calibration import calibrate, format_table
from oscar.training.config import TRAINING_KINDS, StageConfig, TrainConfig
from oscar.training.data import list_images
from oscar.training.loop import (
    EMA,
    LoopContext,
    checkpoint_dirs,
    load_latest_checkpoint,
    make_accelerator,
    replicas_agree,
    run_loop,
    validate,
)
from oscar.training.stages.decoder import DecoderStage
from oscar.training.stages.diffusion import DiffusionStage
from oscar.training.stages.hyper import HyperStage
from oscar.training.stages.joint import JointStage
from oscar.training.stages.vae import VAEStage

log = logging.getLogger(__name__)
DONE_FILE = "done.json"


def stage_dir(config: TrainConfig, index: int) -> Path:
    return Path(config.output_dir) / f"{index:02d}-{config.stages[index].kind}"


def _hardware(accelerator) -> dict[str, Any]:
    """How the stage ran: processes and precision; the machine is in ``environment``."""
    return {
        "processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
    }


def _input_model(config: TrainConfig, index: int) -> Path | None:
    """Model directory stage ``index`` starts from (None: build from the architecture)."""
    if index == 0:
        return Path(config.init_from) if config.init_from else None
    previous = stage_dir(config, index - 1) / "model"
    if not (stage_dir(config, index - 1) / DONE_FILE).is_file():
        raise ConfigError(f"stage {index} needs stage {index - 1} finished first ({previous})")
    return previous


def _build_model(config: TrainConfig, source: Path | None, device: torch.device):
    """(model, priors): from the architecture with random weights, or from a model directory."""
    if source is None:
        arch = ModelConfig.from_json_file(config.model)
        if config.base_model is not None:  # VAE and UNet from the base folder, the rest new
            return model_on_base(arch, config.base_model, config.seed).to(device), None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = OscarModel(arch)
        return model.to(device), None
    # merge_lora=False: a UNet LoRA stays a peft adapter holding the stored factors, so a stage
    # trains it further (or leaves it alone) and the saved directory keeps it apart from the
    # base weights (oscar.models.lora).
    loaded = load_model(source, base_model=config.base_model, device=device, merge_lora=False)
    if config.init_from is not None and source == Path(config.init_from):
        require_fingerprint(loaded, config.init_fingerprint, "init_from", "init_fingerprint")
    return loaded.model.train(), loaded.priors


def _trains_base_weights(stage: StageConfig) -> bool:
    """Whether a stage changes VAE or UNet weights that a base folder would otherwise supply."""
    return stage.kind in ("vae", "diffusion", "decoder") or (
        stage.kind == "joint" and stage.train_unet == "full"
    )


def _save(
    model: OscarModel, directory: Path, priors=None, stage: StageConfig | None = None
) -> None:
    """Write a stage's model. One on a base folder (Stable Diffusion 2.1) stores only its own
    parts, unless the stage trained the base's weights: then it gets its own vae/ and unet/."""
    trained_base = stage is not None and _trains_base_weights(stage)
    include_base = model.config.base_model is None or trained_base
    save_model(model, directory, priors=priors, include_base=include_base)


def run_stage(config: TrainConfig, index: int, resume: bool, max_seconds: float | None) -> bool:
    """Run stage ``index``; returns True when it finished (False: stopped by the time limit)."""
    sc: StageConfig = config.stages[index]
    sdir = stage_dir(config, index)
    if (sdir / DONE_FILE).is_file():
        log.info("stage %d (%s) already done: %s", index, sc.kind, sdir)
        return True
    if checkpoint_dirs(sdir) and not resume:
        raise ConfigError(f"{sdir} holds checkpoints of an unfinished run; pass --resume")
    source = _input_model(config, index)
    accelerator = make_accelerator(config, sdir)
    ctx = LoopContext(config, sc, sdir, accelerator)
    model, priors = _build_model(config, source, accelerator.device)
    if accelerator.is_main_process:
        sdir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "stage": sc.kind,
        "index": index,
        "config": asdict(sc),
        "input_model": str(source) if source else config.model,
        "hardware": _hardware(accelerator),
        "environment": environment(accelerator.device),
    }
    if sc.kind in TRAINING_KINDS:
        finished = _run_training(ctx, model, priors, record, max_seconds)
        if not finished:
            _close_trackers(accelerator)
            return False
    else:
        # Weights do not change here, so the priors of untouched levels stay valid.
        _run_tool_stage(ctx, model, priors, record)
    record["wall_seconds"] = round(ctx.wall_seconds(), 1)  # over every resumed run
    if accelerator.is_main_process:
        (sdir / DONE_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    accelerator.wait_for_everyone()
    _close_trackers(accelerator)
    return True


def _close_trackers(accelerator) -> None:
    """Close this stage's TensorBoard writers; the process group stays for the next stage
    (``Accelerator.end_training`` would destroy it)."""
    for tracker in accelerator.trackers:
        tracker.finish()


def _run_training(ctx: LoopContext, model: OscarModel, priors, record: dict, max_seconds) -> bool:
    kinds = {
        "vae": VAEStage,
        "diffusion": DiffusionStage,
        "hyper": HyperStage,
        "joint": JointStage,
        "decoder": DecoderStage,
    }
    stage = kinds[ctx.stage.kind](ctx, model)
    stage.setup()
    gen_params = [p for p in model.parameters() if p.requires_grad]
    if ctx.stage.ema_decay is not None:
        ctx.ema = EMA(gen_params, ctx.stage.ema_decay)
        ctx.accelerator.register_for_checkpointing(ctx.ema)
    ctx.accelerator.init_trackers(f"oscar-{ctx.stage.kind}")
    start = load_latest_checkpoint(ctx)
    stage.start_data(start)
    result = run_loop(ctx, stage, start, max_seconds)
    if not result.finished:
        return False
    record["steps"] = result.steps_done
    record["final_losses"] = result.last_logs
    record["replicas_agree"] = replicas_agree(ctx.accelerator, gen_params)
    if not record["replicas_agree"]:
        log.error("processes ended %s with different parameters", ctx.stage.kind)
    if ctx.ema is not None:
        ctx.ema.copy_to(gen_params)
    if ctx.config.validate_every:
        record["validation"] = validate(stage, result.steps_done)
    model = stage.finish()
    report = getattr(stage, "usage_report", None)
    if report:
        record["codebook_usage"] = {str(k): v for k, v in report.items()}
    if ctx.is_main:
        _save(
            model.eval(), ctx.stage_dir / "model", _still_valid(priors, ctx.stage, stage), ctx.stage
        )
    return True


def _still_valid(priors, stage_config: StageConfig, stage) -> IndexPriors | None:
    """The prior tables a training stage leaves valid: indices depend only on the VAE encoder
    and each level's analysis and codebook, never on the UNet or the VAE decoder."""
    if priors is None or stage_config.kind == "vae":
        return None
    trained = set(getattr(stage, "levels", ()))
    kept = {lv: t for lv, t in priors.tables.items() if lv not in trained}
    return IndexPriors(kept) if kept else None


def _run_tool_stage(ctx: LoopContext, model: OscarModel, priors, record: dict) -> None:
    """calibrate, priors and add_level: no optimiser, main process only."""
    sc, config = ctx.stage, ctx.config
    model.eval()
    if not ctx.is_main:
        return

    if sc.kind == "calibrate":
        images = list_images(config.data.validation)[: config.data.max_validation_images]
        levels = None if sc.levels == "all" else list(sc.levels)
        _, rows = calibrate(model, images, levels, device=ctx.device)
        record["calibration"] = [asdict(r) for r in rows]
        log.info("calibration:\n%s", format_table(rows))
        print(format_table(rows))
    elif sc.kind == "priors":
        codec = OscarCodec(LoadedModel.from_model(model), device=ctx.device, optimize=False)
        levels = None if sc.levels == "all" else list(sc.levels)
        fitted, reports = fit_priors(codec, list_images(config.data.train), levels)
        if priors is not None:  # keep the tables of levels not refitted
            fitted = IndexPriors({**priors.tables, **fitted.tables})
        priors = fitted
        record["priors"] = [asdict(r) for r in reports]
    elif sc.kind == "add_level":
        rate = add_level(model, sc.grid_factor, sc.codebook_size, config.seed)
        record["added_level"] = asdict(rate)
    _save(model, ctx.stage_dir / "model", priors=priors)


def run_recipe(
    config: TrainConfig,
    only: int | None = None,
    resume: bool = False,
    max_minutes: float | None = None,
) -> Path | None:
    """Run every stage (or only stage ``only``); returns the final model dir when complete."""
    began = time.monotonic()
    indices = range(len(config.stages)) if only is None else [only]
    for index in indices:
        remaining = None
        if max_minutes is not None:
            remaining = max_minutes * 60 - (time.monotonic() - began)
            if remaining <= 0:
                log.warning("time limit reached before stage %d", index)
                return None
        if not run_stage(config, index, resume, remaining):
            return None
    last = stage_dir(config, indices[-1]) / "model"
    return last
