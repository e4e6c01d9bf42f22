"""The loop every training stage shares: accelerate, optimisers, checkpoints, resume, logging.

A stage (oscar.training.stages) supplies its trainable modules and a ``train_step``; this module
does the rest::

    for step in [start, steps):
        batch(es) ─► stage.train_step ─► backward (accumulated) ─► clip ─► optimiser, LR schedule
        every checkpoint_every: accelerator.save_state (models, optimisers, schedulers, RNG, EMA)
        every validate_every:   stage.validate (the project's evaluation code)
    stage.finish ─► model directory

Resume is exact: data and every random draw are functions of (seed, step), and the checkpoint
holds everything else. A killed run loses at most ``checkpoint_every`` steps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.optimization import get_scheduler
from torch import nn
from tqdm.auto import tqdm

from oscar.training.config import StageConfig, TrainConfig

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"


@dataclass
class Optimized:
    """A trainable module with its optimiser and LR schedule (all prepared by accelerate)."""

    name: str
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    grad_clip: float

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]


class EMA:
    """Exponential moving average of parameters, checkpointed with the run.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the formula of
    diffusers' ``EMAModel``): without it the random initial weights keep a share of
    ``decay ** steps`` in the average (5 % after 3000 steps at 0.999), which cost the first
    ``small`` autoencoder 3 dB of held-out PSNR. Written here rather than using ``EMAModel``
    because that class leaves its shadows on the CPU after accelerate restores a checkpoint.
    """

    def __init__(self, params: list[nn.Parameter], decay: float) -> None:
        self.params = params
        self.decay = decay
        self.updates = 0
        self.shadow = [p.detach().clone().float() for p in params]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 - self.current_decay()
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach().float(), weight)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, params: list[nn.Parameter]) -> None:
        for s, p in zip(self.shadow, params, strict=True):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = state["decay"]
        self.updates = state["updates"]
        self.shadow = [s.to(p.device) for s, p in zip(state["shadow"], self.params, strict=True)]


@dataclass
class LoopContext:
    config: TrainConfig
    stage: StageConfig
    stage_dir: Path
    accelerator: Any
    optimized: list[Optimized] = field(default_factory=list)
    ema: EMA | None = None
    # Wall time of this stage: earlier runs (restored from the checkpoint) + since ``started``.
    seconds_before: float = 0.0
    started: float = field(default_factory=time.time)

    def wall_seconds(self) -> float:
        return self.seconds_before + (time.time() - self.started)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def generator(self, step: int, stream: int) -> torch.Generator:
        """A CPU generator seeded by (seed, step, process, stream): resumable random draws."""
        g = torch.Generator()
        g.manual_seed(
            hash((self.config.seed, step, self.accelerator.process_index, stream))
            & 0x7FFFFFFFFFFFFFFF
        )
        return g


def make_accelerator(config: TrainConfig, stage_dir: Path):
    # lazy: the train extra, which may be absent (oscar.extras names it first)
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    return Accelerator(
        # Without CUDA, accelerate joins a torchrun process group only when told it is on CPU.
        cpu=not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(
            project_dir=str(stage_dir), logging_dir=str(stage_dir / "logs")
        ),
        # One level per step leaves the other levels' hyper-coders unused.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def make_optimized(
    ctx: LoopContext,
    name: str,
    module: nn.Module,
    lr: float,
    steps: int,
) -> Optimized:
    """AdamW + warm-up schedule for the trainable parameters of ``module``, prepared."""

    stage = ctx.stage
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"stage {stage.kind}: {name} has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=stage.weight_decay, betas=(0.9, 0.99))
    schedule = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}
    scheduler = get_scheduler(
        schedule[stage.lr_schedule],
        optimizer,
        num_warmup_steps=stage.warmup_steps,
        num_training_steps=steps,
    )
    module, optimizer, scheduler = ctx.accelerator.prepare(module, optimizer, scheduler)
    opt = Optimized(name, module, optimizer, scheduler, stage.grad_clip)
    ctx.optimized.append(opt)
    return opt


def backward_and_step(ctx: LoopContext, opt: Optimized, losses: Iterator[torch.Tensor]) -> None:
    """Accumulate gradients over the micro-batch losses, then clip and step ``opt``.

    DDP's gradient all-reduce runs only on the last micro-batch.
    """
    acc = ctx.accelerator
    losses = list(losses) if not isinstance(losses, list) else losses
    opt.optimizer.zero_grad(set_to_none=True)
    for i, loss in enumerate(losses):
        sync = i == len(losses) - 1
        with nullcontext() if sync else acc.no_sync(opt.module):
            acc.backward(loss / len(losses))
    if opt.grad_clip and opt.grad_clip > 0:
        acc.clip_grad_norm_(opt.parameters(), opt.grad_clip)
    opt.optimizer.step()
    opt.scheduler.step()


def replicas_agree(accelerator, params: list[nn.Parameter]) -> bool:
    """Whether every process holds bit-identical parameters (a check on data parallelism)."""

    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    mine = torch.tensor([int.from_bytes(h.digest()[:7], "big")], device=accelerator.device)
    every = accelerator.gather(mine)
    return bool((every == every[0]).all())


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_dirs(stage_dir: Path) -> list[Path]:
    root = stage_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(ctx: LoopContext, step: int) -> Path:
    """Write checkpoint ``step`` (number of completed steps) and prune old ones."""
    acc = ctx.accelerator
    root = ctx.stage_dir / CHECKPOINTS
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()  # every process has written its part before the rename
    if ctx.is_main:
        state = {"step": step, "stage": ctx.stage.kind, "wall_seconds": ctx.wall_seconds()}
        (tmp / STATE_FILE).write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # a checkpoint exists only once complete
        for old in checkpoint_dirs(ctx.stage_dir)[: -ctx.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def load_latest_checkpoint(ctx: LoopContext) -> int:
    """Restore the newest complete checkpoint; returns its step (0 when there is none)."""
    found = checkpoint_dirs(ctx.stage_dir)
    if not found:
        return 0
    latest = found[-1]
    ctx.accelerator.load_state(str(latest))
    state = json.loads((latest / STATE_FILE).read_text())
    step = int(state["step"])
    # Checkpoints written before wall time was recorded count from the resume.
    ctx.seconds_before = float(state.get("wall_seconds", 0.0))
    log.info("resumed %s from %s (step %d)", ctx.stage.kind, latest, step)
    return step


# ----------------------------------------------------------------------------- the loop
def validate(stage, step: int) -> dict[str, float]:
    """Run the stage's validation; a missing optional dependency skips it with a warning."""
    try:
        return stage.validate(step)
    except ImportError as exc:
        log.warning("validation at step %d skipped: %s", step, exc)
        return {}


@dataclass
class LoopResult:
    steps_done: int
    finished: bool
    last_logs: dict[str, float]


def run_loop(ctx: LoopContext, stage, start_step: int, max_seconds: float | None) -> LoopResult:
    """Run ``stage.train_step`` from ``start_step`` to ``stage.steps``."""

    config, sc = ctx.config, ctx.stage
    began = time.monotonic()
    logs: dict[str, float] = {}
    bar = tqdm(
        total=sc.steps,
        initial=start_step,
        desc=f"{sc.kind}",
        unit="step",
        disable=not ctx.is_main,
        dynamic_ncols=True,
    )
    step = start_step
    try:
        while step < sc.steps:
            logs = stage.train_step(step)
            if ctx.ema is not None:
                ctx.ema.update()
            step += 1
            bar.update(1)
            if step % config.log_every == 0 or step == sc.steps:
                lrs = {f"lr/{o.name}": o.scheduler.get_last_lr()[0] for o in ctx.optimized}
                ctx.accelerator.log({**logs, **lrs}, step=step)
                bar.set_postfix(
                    {k.split("/")[-1]: f"{v:.4g}" for k, v in logs.items()}, refresh=False
                )
            if step % config.checkpoint_every == 0 and step < sc.steps:
                save_checkpoint(ctx, step)
            if config.validate_every and step % config.validate_every == 0 and step < sc.steps:
                validate(stage, step)
            out_of_time = max_seconds is not None and time.monotonic() - began > max_seconds
            if out_of_time and step < sc.steps:
                save_checkpoint(ctx, step)
                log.warning("time limit reached at step %d; resume with --resume", step)
                return LoopResult(step, False, logs)
    finally:
        bar.close()
    return LoopResult(step, True, logs)
