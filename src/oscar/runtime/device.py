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


def inference_memory_format(
    device: torch.device, channels_last: bool | None = None
) -> torch.memory_format:
    """Memory format for the VAE's activations: channels-last on CPU unless told otherwise.

    oneDNN's CPU convolutions run natively in channels-last (NHWC); the VAE, whose
    full-resolution convolutions dominate decoding, is faster that way (BENCHMARKS.md).
    """
    if channels_last is None:
        channels_last = device.type == "cpu"
    return torch.channels_last if channels_last else torch.contiguous_format


def is_accelerator(device: torch.device) -> bool:
    """True for devices whose kernels run asynchronously (CUDA), whose memory torch counts."""
    return device.type == "cuda"


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for :func:`peak_memory_bytes` (no-op on CPU)."""
    if is_accelerator(device):
        torch.cuda.reset_peak_memory_stats(device)


def memory_bytes(device: torch.device) -> tuple[int, int] | None:
    """(allocated now, peak since the last reset) by torch's allocator; None on CPU."""
    if is_accelerator(device):
        return torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device)
    return None


def device_name(device: torch.device) -> str | None:
    """The accelerator's name (None on CPU)."""
    if is_accelerator(device):
        return torch.cuda.get_device_name(device)
    return None
