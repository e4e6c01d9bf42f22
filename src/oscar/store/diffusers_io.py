"""Reading diffusers-format model folders (``vae/``, ``unet/``) without running their code.

A diffusers model folder holds ``config.json`` and its weights in one of these layouts; the first
one present is read:

1. ``diffusion_pytorch_model.safetensors``                      one file
2. ``diffusion_pytorch_model.safetensors.index.json``           sharded (``weight_map`` → files)
3. ``diffusion_pytorch_model.fp16.safetensors``, then the sharded fp16 variant
   (``diffusion_pytorch_model.safetensors.index.fp16.json``); likewise ``bf16``

Pickled ``.bin`` weights are refused with a message saying how to convert them: pickles are read
only to import the original release's checkpoint (design.md, invariant 6), and Stable Diffusion
2.1 is distributed with safetensors files anyway.

Weights keep the dtype they are stored in (a float16 variant loads as float16; the fingerprint
covers the stored bytes, so a float16 copy of a base model is a different model from the float32
one). The module is built on the ``meta`` device and the loaded tensors are assigned to it, so a
866 M-parameter UNet is never randomly initialised first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from oscar.errors import ModelError
from oscar.filetypes import open_regular_file
from oscar.limits import MAX_METADATA_BYTES
from oscar.models.tensor_checks import all_finite, state_problems
from oscar.store.model_files import public_config, read_json
from oscar.store.safe_build import build_on_meta

WEIGHTS_NAME = "diffusion_pytorch_model"
WEIGHTS_FILE = f"{WEIGHTS_NAME}.safetensors"
VARIANTS = ("fp16", "bf16")


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = MAX_METADATA_BYTES  # a safetensors header is JSON metadata too


def _read_into(f, tensor: torch.Tensor) -> None:
    if tensor.numel():
        buffer = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        if f.readinto(buffer) != len(buffer):
            raise ValueError("file ends inside a tensor")


def read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, read once into freshly allocated CPU memory.

    ``safetensors.torch.load_file`` hands out tensors backed by a private memory map: touching
    them page-faults the file in, and their odd alignment makes CPU kernels round differently
    from torch-allocated copies. Reading each tensor sequentially into ``torch.empty`` (64-byte
    aligned) is several times faster for a 3.4 GB UNet and makes a loaded model compute exactly
    what the saved one did. The header is validated first by the safetensors library.
    """
    if not path.exists():
        raise ModelError(f"{what} is missing: {path}")
    open_regular_file(path, ModelError).close()  # not a FIFO, device or folder
    try:
        with safe_open(str(path), framework="pt"):  # the library's own header validation
            pass
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            length = int.from_bytes(f.read(8), "little")
            if not 0 < length <= min(_MAX_HEADER, size - 8):
                raise ValueError("bad header length")
            header = json.loads(f.read(length))
            entries = sorted(
                (info["data_offsets"][0], name, info)
                for name, info in header.items()
                if name != "__metadata__"
            )
            state, position = {}, 0
            for begin, name, info in entries:
                dtype, shape = _DTYPES[info["dtype"]], [int(n) for n in info["shape"]]
                end = int(info["data_offsets"][1])
                tensor = torch.empty(shape, dtype=dtype)
                if begin != position or end - begin != tensor.numel() * tensor.element_size():
                    raise ValueError(f"tensor {name!r} has inconsistent data offsets")
                _read_into(f, tensor)
                state[name], position = tensor, end
            if 8 + length + position != size:
                raise ValueError("data section length does not match the header")
            return state
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelError(f"{what} at {path} is not a readable safetensors file: {exc}") from exc


def _candidates(folder: Path) -> list[tuple[str, Path]]:
    """(kind, path) in order of preference; kind is 'single' or 'index'."""
    out = [("single", folder / WEIGHTS_FILE), ("index", folder / f"{WEIGHTS_FILE}.index.json")]
    for variant in VARIANTS:
        out.append(("single", folder / f"{WEIGHTS_NAME}.{variant}.safetensors"))
        out.append(("index", folder / f"{WEIGHTS_FILE}.index.{variant}.json"))
    return out


def find_weights(folder: Path, what: str) -> tuple[str, Path]:
    """The weights file (or shard index) of a diffusers model folder; a clear error if none."""
    for kind, path in _candidates(folder):
        if path.is_file():
            return kind, path
    if not folder.is_dir():
        raise ModelError(f"{what} folder is missing: {folder}")
    pickles = sorted(p.name for p in folder.glob(f"{WEIGHTS_NAME}*.bin"))
    if pickles:
        raise ModelError(
            f"{folder} holds only pickled weights ({', '.join(pickles)}); oscar reads safetensors "
            'only. Convert once with diffusers, e.g. python -c "from diffusers import '
            f"{'AutoencoderKL as M' if what == 'VAE' else 'UNet2DConditionModel as M'}; "
            f"M.from_pretrained('{folder}').save_pretrained('{folder}')\""
        )
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    hint = f" (found {', '.join(others)}; variants read: {', '.join(VARIANTS)})" if others else ""
    raise ModelError(f"{what} weights is missing: {folder / WEIGHTS_FILE}{hint}")


def _read_sharded(index_path: Path, what: str) -> dict[str, torch.Tensor]:
    index = read_json(index_path, f"{what} shard index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelError(f"{index_path}: no 'weight_map' object")
    by_file: dict[str, set[str]] = {}
    for name, file in weight_map.items():
        if (
            not isinstance(file, str)
            or Path(file).name != file
            or not file.endswith(".safetensors")
        ):
            raise ModelError(f"{index_path}: tensor {name!r} maps to an invalid file {file!r}")
        by_file.setdefault(file, set()).add(name)
    state: dict[str, torch.Tensor] = {}
    for file, names in sorted(by_file.items()):
        shard = read_safetensors(index_path.parent / file, f"{what} shard")
        if set(shard) != names:
            extra = sorted(set(shard) - names)[:3]
            missing = sorted(names - set(shard))[:3]
            raise ModelError(
                f"{index_path.parent / file} does not hold what {index_path.name} lists "
                f"(missing {missing}, not listed {extra})"
            )
        state.update(shard)
    return state


def read_weights(folder: Path, what: str) -> tuple[dict[str, torch.Tensor], Path]:
    """All tensors of a diffusers model folder (any supported layout) and the file read."""
    kind, path = find_weights(folder, what)
    state = read_safetensors(path, f"{what} weights") if kind == "single" else None
    if state is None:
        state = _read_sharded(path, what)
    return state, path


def check_finite(state: Mapping[str, torch.Tensor], where: Path) -> None:
    for name, tensor in state.items():
        if not all_finite(tensor):
            raise ModelError(f"{where}: tensor {name!r} holds NaN or infinite values")


def build_empty(
    cls: type, config: Mapping[str, Any], budget: int | None = None, what: str | None = None
) -> torch.nn.Module:
    """A diffusers model built on the meta device: shapes only, no memory, no random init.

    With ``budget`` (the elements its weights hold), building stops once the module registers
    more: a config must not decide how much is allocated, not even in module objects
    (``"layers_per_block": 2147483648`` would build for ever). Any failure is one ModelError.
    """
    return build_on_meta(
        lambda: cls.from_config(public_config(config)), budget, what or cls.__name__
    )


def load_into_empty(
    module: torch.nn.Module, state: dict[str, torch.Tensor], where: Path
) -> torch.nn.Module:
    """Strictly assign ``state`` to a meta-device module; one readable error on any mismatch."""
    problems = state_problems(module.state_dict(), state)
    if problems:
        raise ModelError(f"{where} does not match the architecture: " + "; ".join(problems))
    check_finite(state, where)
    module.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:  # a non-persistent buffer the file cannot hold: not expected for diffusers models
        raise ModelError(f"{where}: no values for {left[:3]} after loading")
    return module


def load_part(
    cls: type,
    folder: Path,
    what: str,
    build: Callable[[dict[str, Any]], torch.nn.Module] | None = None,
) -> tuple[torch.nn.Module, dict, dict]:
    """Build a diffusers model from ``folder/config.json`` and its weights, strictly.

    ``build(config)`` replaces ``cls.from_config`` (a VAE with another decoder,
    oscar.models.vae_decoder); it may build a throw-away placeholder no larger than the weights
    it is given, so its budget is twice the file's elements.
    Returns (module on CPU in the stored dtype, the state dict as stored, the config).
    """
    config = read_json(folder / "config.json", f"{what} config")
    declared = config.get("_class_name", cls.__name__)
    if declared != cls.__name__:
        raise ModelError(f"{folder}: expected a {cls.__name__}, config declares {declared}")
    state, path = read_weights(folder, what)
    budget = sum(t.numel() for t in state.values())
    where = f"{what} ({folder})"
    if build is None:
        empty = build_empty(cls, config, budget, where)
    else:
        empty = build_on_meta(lambda: build(public_config(config)), 2 * budget, where)
    module = load_into_empty(empty, state, path)
    return module, state, config
