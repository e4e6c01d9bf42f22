"""Build modules from a model directory's configs without letting a config decide the memory.

A config (``vae/config.json``, ``unet/config.json``, ``oscar.json``) sets the widths and depths
of what is built, before strict loading can compare anything with the weights. A broken or
hostile one (``"layers_per_block": 2147483648``, a width of 10⁹) would allocate without bound, or
loop for hours: even on the meta device, module objects take memory. So each module is built
on the meta device (shapes, no memory) with a budget: the number of elements its weights file
holds (the file is read first; what that allocates is bounded by the file's size, not by a
config). Building stops as soon as the budget is passed, and the shapes must then match the
file exactly (``state_problems``, the one comparison used for every part) before anything real
is allocated: diffusers parts are filled by assignment (oscar.store.diffusers_io), the OSCAR parts
are built for real only after the check (oscar.store.pretrained).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from oscar.errors import ModelError
from oscar.models.tensor_checks import state_problems

# What building may register beyond the file: non-persistent buffers, small schedules.
_SLACK_ELEMENTS = 2**20


class _OverBudget(Exception):
    pass


def element_count(shapes: Mapping[str, tuple[int, ...]]) -> int:
    return sum(math.prod(shape) for shape in shapes.values())


def build_on_meta(build: Callable[[], nn.Module], budget: int | None, what: str) -> nn.Module:
    """``build()`` on the meta device, stopped once its parameters and buffers pass
    ``budget`` elements (plus a small slack; None: no budget, for configs we trust). Any
    failure is one ModelError."""
    used = 0
    limit = (budget or 0) + _SLACK_ELEMENTS

    def count(module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
        nonlocal used
        if tensor is not None:
            used += tensor.numel()
            if used > limit:
                raise _OverBudget

    hooks = []
    if budget is not None:
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
    problems = state_problems(expected, file_shapes)
    if problems:
        raise ModelError(f"{where} does not match the architecture: " + "; ".join(problems))
