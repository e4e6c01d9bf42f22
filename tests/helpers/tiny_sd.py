"""A tiny Stable-Diffusion-like base folder and models that reference it (test helpers).

The folder has the layout of the real ``stabilityai/stable-diffusion-2-1`` diffusers folder
(``vae/``, ``unet/``, ``scheduler/``; written by diffusers' own ``save_pretrained``), the real
SD 2.1 scheduler config and VAE scaling factor, and tiny widths.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from helpers import CONFIGS
from oscar.config import LoraSettings, ModelConfig
from oscar.models.lora import add_lora
from oscar.models.oscar import OscarModel

SD21 = json.loads((CONFIGS / "sd21.json").read_text())
TINY = json.loads((CONFIGS / "tiny.json").read_text())
# The tiny VAE with SD's scaling factor, as in the real folder (there implied by the default).
TINY_VAE = {**TINY["vae"], "scaling_factor": 0.18215}
LORA = LoraSettings(rank=2, alpha=3.0, target_modules=tuple(SD21["lora"]["target_modules"]))


# The original release's three LoRA adapters and its `initialize_unet` module selection
# (docs/official-checkpoint.md §3.1), re-implemented here as an oracle independent of
# oscar.models.lora.
ADAPTERS = ("default_encoder", "default_decoder", "default_others")


def original_lora_lists(unet: torch.nn.Module) -> dict[str, list[str]]:
    """The official initialize_unet's three module lists for ``unet``."""
    keys = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in"]
    keys += ["conv_shortcut", "conv_out", "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj"]
    out: dict[str, list[str]] = {a: [] for a in ADAPTERS}
    for name, _ in unet.named_parameters():
        if "bias" in name or "norm" in name or not any(k in name for k in keys):
            continue
        module = name[: -len(".weight")]
        if "down_blocks" in module or "conv_in" in module:
            out["default_encoder"].append(module)
        elif "up_blocks" in module or "conv_out" in module:
            out["default_decoder"].append(module)
        else:
            out["default_others"].append(module)
    return out


def save_tiny_base(folder: Path, seed: int = 0) -> Path:
    """Write a diffusers folder: vae/, unet/ (safetensors) and scheduler/ (SD 2.1's config)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL.from_config({k: v for k, v in TINY_VAE.items() if k != "_class_name"})
        unet = UNet2DConditionModel.from_config(
            {k: v for k, v in TINY["unet"].items() if k != "_class_name"}
        )
    vae.save_pretrained(folder / "vae")
    unet.save_pretrained(folder / "unet")
    DDIMScheduler.from_config(SD21["scheduler"]).save_pretrained(folder / "scheduler")
    return folder


def tiny_sd_config(base: Path, lora: LoraSettings | None = LORA) -> ModelConfig:
    """The tiny OSCAR config on ``base``: its configs as read from the folder, LoRA on the UNet."""
    from oscar.store.diffusers_io import public_config, read_json

    config = ModelConfig.from_json_file(CONFIGS / "tiny.json")
    return replace(
        config,
        name="tiny-sd",
        vae=public_config(read_json(base / "vae" / "config.json", "VAE")),
        unet=public_config(read_json(base / "unet" / "config.json", "UNet")),
        scheduler=read_json(base / "scheduler" / "scheduler_config.json", "scheduler"),
        lora=lora,
        base_model=str(base),
    )


def tiny_sd_model(base: Path, seed: int = 0, lora_seed: int = 1) -> OscarModel:
    """A tiny OSCAR model on ``base`` with a trained-looking (random, non-zero) peft LoRA."""
    from oscar.store.diffusers_io import load_part

    config = tiny_sd_config(base)
    vae, _, _ = load_part(AutoencoderKL, base / "vae", "VAE")
    unet, _, _ = load_part(UNet2DConditionModel, base / "unet", "UNet")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = OscarModel(config, vae=vae, unet=unet)
    add_lora(model.unet, config.lora, generator=torch.Generator().manual_seed(lora_seed))
    g = torch.Generator().manual_seed(lora_seed + 1)
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models run faster on one thread (and much faster on a shared, busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
