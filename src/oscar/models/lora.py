"""LoRA on the UNet: which modules, how it is stored, how it is merged (docs/method.md §5, stage 2).

Storage convention (in a model directory's ``oscar.safetensors``)::

    unet_lora.<module>.lora_A.weight     Linear: (r, in)       Conv2d: (r, in, k, k)
    unet_lora.<module>.lora_B.weight     Linear: (out, r)      Conv2d: (out, r, 1, 1)
    unet_override.<parameter>            replaces one UNet base parameter (the original release
                                         saves its own ``conv_in``:
                                         docs/official-checkpoint.md §3.3)

with ``config.lora`` = (rank r, alpha, target_modules) giving the scale s = alpha / r. The target
modules are the UNet's ``nn.Linear`` and ``nn.Conv2d`` whose name equals one of
``target_modules`` or ends with ``"." + name`` (peft's rule). For the original's 14 names this is
the 258 modules of docs/official-checkpoint.md Appendix A on Stable Diffusion 2.1.

Inference merges the factors into the base weights once, at load time (no peft at run time and no
extra work per pass), exactly as docs/official-checkpoint.md §3.2 writes it:

- Linear: W' = W + s · B A
- Conv2d: W'[o, i, :, :] = W[o, i, :, :] + s · Σ_r B[o, r, 0, 0] · A[r, i, :, :]

(valid for strided convolutions too, because B is 1×1). Training wraps the modules with peft
instead (:func:`add_lora`), reads the factors back with :func:`lora_state_dict` and restores them
with :func:`load_lora_into_peft`; peft is imported only there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from oscar.config import LoraSettings
from oscar.errors import ModelError
from oscar.models.tensor_checks import all_finite, state_problems

LORA_PREFIX = "unet_lora."
OVERRIDE_PREFIX = "unet_override."
ADAPTER_NAME = "default"
_A, _B = ".lora_A.weight", ".lora_B.weight"


def lora_scale(settings: LoraSettings) -> float:
    """s = alpha / rank (peft's scaling without rsLoRA)."""
    return float(settings.alpha) / settings.rank


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _base(module: nn.Module) -> nn.Module:
    """The wrapped layer of a peft LoRA layer, or the module itself."""
    return getattr(module, "base_layer", module)


def lora_target_names(unet: nn.Module, settings: LoraSettings) -> list[str]:
    """Names of the modules LoRA adapts, in ``named_modules`` order (works on meta modules).

    A matching module that is neither ``nn.Linear`` nor ``nn.Conv2d`` is an error: the storage
    convention and the merge formulas cover those two only.
    """
    names = []
    for name, module in unet.named_modules():
        if not name or ".lora_" in name or name.endswith(".base_layer"):
            continue
        if not _matches(name, settings.target_modules):
            continue
        layer = _base(module)
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise ModelError(
                f"LoRA target {name!r} is a {type(layer).__name__}; only Linear and Conv2d are "
                "supported"
            )
        names.append(name)
    if not names:
        raise ModelError(f"no UNet module matches the LoRA targets {settings.target_modules}")
    return names


def lora_shapes(layer: nn.Module, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of (A, B) for a base Linear or Conv2d (docs/official-checkpoint.md §3.2)."""
    w = layer.weight
    if isinstance(layer, nn.Conv2d):
        return (rank, w.shape[1], *w.shape[2:]), (w.shape[0], rank, 1, 1)
    return (rank, w.shape[1]), (w.shape[0], rank)


def expected_lora_shapes(unet: nn.Module, settings: LoraSettings) -> dict[str, tuple[int, ...]]:
    """Every key of the storage convention with its shape, for this UNet and these settings."""
    out: dict[str, tuple[int, ...]] = {}
    for name in lora_target_names(unet, settings):
        a, b = lora_shapes(_base(unet.get_submodule(name)), settings.rank)
        out[f"{LORA_PREFIX}{name}{_A}"] = a
        out[f"{LORA_PREFIX}{name}{_B}"] = b
    return out


# ----------------------------------------------------------------------------- stored form
@dataclass
class UnetAdapter:
    """The UNet's LoRA factors and base-parameter overrides, keyed as in ``oscar.safetensors``.

    ``merged`` is True once they have been added into a UNet's weights (a merged UNet must not
    be saved as a base model again: the LoRA would be applied twice).
    """

    settings: LoraSettings
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    merged: bool = False

    @property
    def lora(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """module name → (A, B)."""
        names = [k[len(LORA_PREFIX) : -len(_A)] for k in self.tensors if k.endswith(_A)]
        return {
            n: (self.tensors[f"{LORA_PREFIX}{n}{_A}"], self.tensors[f"{LORA_PREFIX}{n}{_B}"])
            for n in names
        }

    @property
    def overrides(self) -> dict[str, torch.Tensor]:
        """UNet parameter name → replacement tensor."""
        return {
            k[len(OVERRIDE_PREFIX) :]: v
            for k, v in self.tensors.items()
            if k.startswith(OVERRIDE_PREFIX)
        }


def is_unet_key(key: str) -> bool:
    return key.startswith((LORA_PREFIX, OVERRIDE_PREFIX))


def check_adapter(
    unet: nn.Module, adapter: UnetAdapter, where: object = "LoRA", values: bool = True
) -> None:
    """Strict check of the stored tensors against a (plain or meta) UNet; one clear error.

    Names and shapes always; with ``values`` also that every tensor is finite floating point.
    """
    expected: dict[str, tuple[int, ...]] = dict(expected_lora_shapes(unet, adapter.settings))
    params = dict(unet.named_parameters())
    for name in adapter.overrides:
        if name in params:
            expected[OVERRIDE_PREFIX + name] = tuple(params[name].shape)
    problems = state_problems(expected, adapter.tensors)
    if problems:
        raise ModelError(f"{where}: UNet LoRA does not match the UNet: " + "; ".join(problems))
    for key, t in adapter.tensors.items() if values else ():
        if not t.is_floating_point() or not all_finite(t):
            raise ModelError(f"{where}: {key} is not a finite floating-point tensor")


@torch.no_grad()
def merge_adapter(unet: nn.Module, adapter: UnetAdapter, where: object = "LoRA") -> None:
    """Apply overrides, then add s · B A into every target weight, in place (float32 maths)."""
    if adapter.merged:
        raise ModelError(f"{where}: LoRA is already merged")
    check_adapter(unet, adapter, where)
    params = dict(unet.named_parameters())
    for name, value in adapter.overrides.items():
        params[name].copy_(value.to(params[name].dtype))
    scale = lora_scale(adapter.settings)
    for name, (a, b) in adapter.lora.items():
        w = unet.get_submodule(name).weight
        # W (out, in[·k·k]) += s · B (out, r) @ A (r, in[·k·k]): the Linear formula, and the
        # Conv2d one with the kernel flattened (B is 1×1). In place: no copy of the weight.
        w32 = w if w.dtype == torch.float32 else w.float()
        a32 = a.to(w.device, torch.float32).reshape(a.shape[0], -1)
        b32 = b.to(w.device, torch.float32).reshape(b.shape[0], -1)
        w32.view(w.shape[0], -1).addmm_(b32, a32, alpha=scale)
        if w32 is not w:
            w.copy_(w32)
    adapter.merged = True


def merge_lora(
    unet: nn.Module, state: Mapping[str, torch.Tensor], settings: LoraSettings
) -> UnetAdapter:
    """Merge tensors in the storage convention into a plain UNet; returns the adapter record."""
    adapter = UnetAdapter(settings, {k: v for k, v in state.items() if is_unet_key(k)})
    merge_adapter(unet, adapter)
    return adapter


def identity_adapter(
    unet: nn.Module, settings: LoraSettings, generator: torch.Generator | None = None
) -> UnetAdapter:
    """A LoRA that changes nothing yet: A ~ N(0, 1/r²) as peft's "gaussian" init, B = 0."""
    tensors = {}
    for key, shape in expected_lora_shapes(unet, settings).items():
        if key.endswith(_A):
            tensors[key] = torch.randn(shape, generator=generator) / settings.rank
        else:
            tensors[key] = torch.zeros(shape)
    return UnetAdapter(settings, tensors)


# ----------------------------------------------------------------------------- training (peft)
def _peft_layers(unet: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer  # lazy: the train extra, which may be absent

    return {n: m for n, m in unet.named_modules() if isinstance(m, LoraLayer)}


def has_peft_lora(unet: nn.Module) -> bool:
    """Whether ``unet`` carries peft LoRA layers (without importing peft if it never did)."""
    return any(".lora_A." in n for n, _ in unet.named_parameters())


def add_lora(
    unet: nn.Module, settings: LoraSettings, generator: torch.Generator | None = None
) -> list[str]:
    """Wrap the target modules with one peft LoRA adapter, as the original (rank, alpha, targets).

    A is drawn from N(0, 1/r²) with ``generator`` (peft's "gaussian" init) and B is zero, so the
    UNet's output is unchanged until training moves B. Only the LoRA factors require grad.
    Returns the wrapped module names.
    """
    from peft import LoraConfig  # lazy: the train extra, which may be absent

    names = lora_target_names(unet, settings)  # also refuses unsupported module types
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        init_lora_weights="gaussian",
        target_modules=list(settings.target_modules),
    )
    unet.add_adapter(config, adapter_name=ADAPTER_NAME)
    layers = _peft_layers(unet)
    if sorted(layers) != sorted(names):
        raise ModelError("peft wrapped a different set of modules than the LoRA targets")
    with torch.no_grad():
        for layer in layers.values():
            a = layer.lora_A[ADAPTER_NAME].weight
            a.copy_(torch.randn(a.shape, generator=generator, dtype=torch.float32) / settings.rank)
    unet.requires_grad_(False)
    for p in lora_parameters(unet):
        p.requires_grad_(True)
    return names


def lora_parameters(unet: nn.Module) -> list[nn.Parameter]:
    """The LoRA factors (A and B) of a peft-wrapped UNet: what LoRA training optimises."""
    return [p for n, p in unet.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def lora_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA factors of a peft-wrapped UNet in the storage convention (detached, on CPU)."""
    out = {}
    for name, layer in _peft_layers(unet).items():
        adapters = list(layer.lora_A.keys())
        if adapters != [ADAPTER_NAME]:
            raise ModelError(f"{name}: expected one adapter {ADAPTER_NAME!r}, has {adapters}")
        out[f"{LORA_PREFIX}{name}{_A}"] = layer.lora_A[ADAPTER_NAME].weight.detach().cpu()
        out[f"{LORA_PREFIX}{name}{_B}"] = layer.lora_B[ADAPTER_NAME].weight.detach().cpu()
    return out


def base_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """A peft-wrapped UNet's base weights under the plain UNet's parameter names."""
    out = {}
    for key, value in unet.state_dict().items():
        if ".lora_" in key:
            continue
        out[key.replace(".base_layer.", ".")] = value
    return out


@torch.no_grad()
def load_lora_into_peft(unet: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy stored LoRA factors (and overrides) into a UNet wrapped by :func:`add_lora`; strict."""
    layers = _peft_layers(unet)
    if not layers:
        raise ModelError("the UNet has no LoRA layers; call add_lora first")
    lora_keys = {k for k in state if k.startswith(LORA_PREFIX)}
    expected = {f"{LORA_PREFIX}{n}{s}" for n in layers for s in (_A, _B)}
    if lora_keys != expected:
        missing, extra = sorted(expected - lora_keys), sorted(lora_keys - expected)
        raise ModelError(
            f"LoRA state does not match the UNet: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for name, layer in layers.items():
        for suffix, module in ((_A, layer.lora_A), (_B, layer.lora_B)):
            target = module[ADAPTER_NAME].weight
            value = state[f"{LORA_PREFIX}{name}{suffix}"]
            if value.shape != target.shape:
                raise ModelError(
                    f"{name}{suffix}: stored {tuple(value.shape)}, UNet {tuple(target.shape)}"
                )
            target.copy_(value)
    params = dict(base_state_dict_names(unet))
    for key, value in state.items():
        if not key.startswith(OVERRIDE_PREFIX):
            continue
        name = key[len(OVERRIDE_PREFIX) :]
        if name not in params or params[name].shape != value.shape:
            raise ModelError(f"override {name!r} does not match a UNet parameter")
        params[name].copy_(value)


def base_state_dict_names(unet: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(plain parameter name, parameter) of a possibly peft-wrapped UNet's base weights."""
    return [
        (n.replace(".base_layer.", "."), p) for n, p in unet.named_parameters() if ".lora_" not in n
    ]
