"""Checks of tensors against what a module expects: names, shapes, finite values.

Used wherever weights arrive from a file (oscar.store) or are attached to a network
(oscar.models.lora), so that every mismatch reads the same.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

_Shaped = torch.Tensor | torch.Size | tuple[int, ...]


def _shape(value: _Shaped) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)


def state_problems(expected: Mapping[str, _Shaped], found: Mapping[str, _Shaped]) -> list[str]:
    """Readable differences between the tensors (or shapes) a module needs and those a file
    holds: missing, unexpected, wrong shape."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(
        f"{k} (file {_shape(found[k])}, model {_shape(expected[k])})"
        for k in set(found) & set(expected)
        if _shape(found[k]) != _shape(expected[k])
    )
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            shown = ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
            problems.append(f"{label}: {shown}")
    return problems


def all_finite(tensor: torch.Tensor) -> bool:
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    # One float32 sum is non-finite if any element is (and, rarely, on overflow): cheap for a
    # 3.4 GB UNet; the exact elementwise test runs only when the sum is not finite.
    if bool(torch.isfinite(tensor.sum(dtype=torch.float32))):
        return True
    return bool(torch.isfinite(tensor).all())
