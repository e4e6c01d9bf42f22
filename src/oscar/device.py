"""The one place that names devices and dtypes (design.md invariant 7)."""

from __future__ import annotations

from typing import Literal

import torch

from oscar.errors import ConfigError

DeviceName = Literal["auto", "cpu", "cuda"]
DtypeName = Literal["auto", "float32", "float16", "bfloat16"]

CPU = torch.device("cpu")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    """Map a user's device choice to a torch device; ``auto`` picks CUDA when present."""
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else CPU
    if name == "cpu":
        return CPU
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but no CUDA device is available")
        return torch.device(name)
    raise ConfigError(f"unknown device {name!r}: use auto, cpu or cuda")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Map a dtype choice; ``auto`` is float32 (the reference path) on every device for now."""
    if name == "auto":
        return torch.float32
    try:
        return _DTYPES[name]
    except KeyError:
        raise ConfigError(
            f"unknown dtype {name!r}: use auto, float32, float16 or bfloat16"
        ) from None


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so wall-clock timings measure the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
