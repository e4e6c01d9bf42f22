"""Build modules from a model directory's configs without letting a config decide the memory.

A config (``vae/config.json``, ``unet/config.json``, ``oscar.json``) sets the widths and depths
of what is built, before strict loading can compare anything with the weights. A broken or
hostile one (``"layers_per_block": 2147483648``, a width of 10⁹) would allocate without bound, or
loop for hours. So each module is first built on the meta device (shapes, no memory) with a
budget: the number of elements its weights file holds, read from the file's header without
loading a tensor. Building stops as soon as the budget is passed, and the shapes must then
match the file exactly; only then is the module built for real.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from oscar.errors import ModelError

# What building may register beyond the file: non-persistent buffers, small schedules.
_SLACK_ELEMENTS = 2**20


class _OverBudget(Exception):
    pass


def header_shapes(path: Path, what: str) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape from a safetensors header (no tensor is read)."""
    if not path.is_file():
        raise ModelError(f"{what} is missing: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{what} at {path} is not a readable safetensors file: {exc}") from None


def element_count(shapes: Mapping[str, tuple[int, ...]]) -> int:
    return sum(math.prod(shape) for shape in shapes.values())


def build_on_meta(build: Callable[[], nn.Module], budget: int, what: str) -> nn.Module:
    """``build()`` on the meta device, stopped once its parameters and buffers pass
    ``budget`` elements (plus a small slack). Any failure is one ModelError."""
    used = 0
    limit = budget + _SLACK_ELEMENTS

    def count(module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
        nonlocal used
        if tensor is not None:
            used += tensor.numel()
            if used > limit:
                raise _OverBudget

    hooks = [
        nn.modules.module.register_module_parameter_registration_hook(count),
        nn.modules.module.register_module_buffer_registration_hook(count),
    ]
    try:
        with torch.device("meta"):
            return build()
    except _OverBudget:
        raise ModelError(
            f"{what}: its config describes more weights than its file holds "
            f"({budget} elements); refused before allocating"
        ) from None
    except ModelError:
        raise
    except Exception as exc:  # a config value the constructor cannot use, whatever it raises
        raise ModelError(f"{what}: cannot build it from its config: {exc}") from None
    finally:
        for hook in hooks:
            hook.remove()


def shape_problems(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]
) -> list[str]:
    """Readable differences between the shapes a module needs and those a file holds."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(
        f"{k} (file {found[k]}, model {expected[k]})"
        for k in set(found) & set(expected)
        if tuple(found[k]) != tuple(expected[k])
    )
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            shown = ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
            problems.append(f"{label}: {shown}")
    return problems


def check_buildable(
    build: Callable[[], nn.Module],
    file_shapes: Mapping[str, tuple[int, ...]],
    where: Path,
    what: str,
    select: Callable[[nn.Module], Mapping[str, torch.Tensor]] = lambda m: m.state_dict(),
) -> None:
    """Build on meta within the file's budget and require the file's exact shapes.

    ``select`` picks the tensors of the built module that the file must hold (by default its
    whole state dict).
    """
    module = build_on_meta(build, element_count(file_shapes), what)
    expected = {k: tuple(v.shape) for k, v in select(module).items()}
    problems = shape_problems(expected, file_shapes)
    if problems:
        raise ModelError(f"{where} does not match the architecture: " + "; ".join(problems))
