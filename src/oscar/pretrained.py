"""Model directories: save, strict load, and the fingerprint that ties files to weights.

Layout (diffusers-style subfolders, so a model directory is also a valid ``--base-model``)::

    MODEL_DIR/
      oscar.json                     OSCAR config: hyper widths, rate table, prompt length, LoRA
      oscar.safetensors              hyper-coders ("hyper.<level>.…") and "prompt_embedding"
      priors.safetensors             optional: integer index frequencies, "level.<level>"
      vae/config.json + diffusion_pytorch_model.safetensors        diffusers AutoencoderKL
      unet/config.json + diffusion_pytorch_model.safetensors       diffusers UNet2DConditionModel
      scheduler/scheduler_config.json                              diffusers scheduler config

When the config names a ``base_model`` (or one is given), ``vae/``, ``unet/`` and ``scheduler/``
are read from that folder instead. Only safetensors and JSON are read: no pickle, no code.

The fingerprint is SHA-256 over everything that changes the decoded pixels: the configs (minus
descriptive fields), every tensor as stored on disk (name, dtype, shape, bytes; sorted by name)
and the priors. Files carry its first four bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from oscar.config import ModelConfig
from oscar.errors import ConfigError, ModelError
from oscar.models.oscar import OscarModel
from oscar.priors import IndexPriors
from oscar.safe_build import check_buildable, header_shapes, shape_problems

MODEL_FILE = "oscar.json"
PARTS_FILE = "oscar.safetensors"
PRIORS_FILE = "priors.safetensors"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
SCHEDULER_FILE = "scheduler_config.json"
FORMAT_NAME = "oscar-model"
FORMAT_VERSION = 1
BASE_MODEL_ENV = "OSCAR_BASE_MODEL"
FINGERPRINT_BYTES = 4

# Config fields that describe but do not change decoding.
_DESCRIPTIVE = {"name", "base_model"}


@dataclass
class LoadedModel:
    """A model ready for coding, with its priors (or None) and full SHA-256 fingerprint."""

    model: OscarModel
    priors: IndexPriors | None
    fingerprint: bytes
    directory: Path

    @property
    def short_fingerprint(self) -> bytes:
        return self.fingerprint[:FINGERPRINT_BYTES]

    @classmethod
    def from_model(
        cls,
        model: OscarModel,
        priors: IndexPriors | None = None,
        directory: Path | None = None,
    ) -> LoadedModel:
        """Wrap an in-memory model (training, calibration); the fingerprint is what saving it
        in its current dtype and loading it back would give."""
        parts = {f"hyper.{k}": v for k, v in model.hyper.state_dict().items()}
        parts["prompt_embedding"] = model.prompt_embedding.detach()
        tensors = _named_tensors(model.vae.state_dict(), model.unet.state_dict(), parts, priors)
        digest = fingerprint(model.config, tensors)
        return cls(
            model=model, priors=priors, fingerprint=digest, directory=directory or Path("<memory>")
        )


# ----------------------------------------------------------------------------- fingerprint
def _public(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _canonical_config(config: ModelConfig) -> bytes:
    data = config.to_dict()
    for key in _DESCRIPTIVE:
        data.pop(key, None)
    data["vae"] = _public(data["vae"])
    data["unet"] = _public(data["unet"])
    data["scheduler"] = _public(data["scheduler"])
    for level in data["levels"]:
        level.pop("cosine", None)  # a measurement, not a decoding parameter
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()


def fingerprint(config: ModelConfig, tensors: Iterable[tuple[str, torch.Tensor]]) -> bytes:
    """SHA-256 over the canonical config and the named tensors (order-independent)."""
    h = hashlib.sha256()
    h.update(b"oscar-fingerprint-v1\0")
    h.update(_canonical_config(config))
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()


def _named_tensors(
    vae_state: Mapping[str, torch.Tensor],
    unet_state: Mapping[str, torch.Tensor],
    parts: Mapping[str, torch.Tensor],
    priors: IndexPriors | None,
) -> list[tuple[str, torch.Tensor]]:
    """The tensors a fingerprint covers, with the names it hashes them under."""
    tensors = [(f"vae.{k}", v) for k, v in vae_state.items()]
    tensors += [(f"unet.{k}", v) for k, v in unet_state.items()]
    tensors += list(parts.items())
    if priors is not None:
        tensors += [(f"priors.{k}", v) for k, v in priors.as_tensors().items()]
    return tensors


# ----------------------------------------------------------------------------- reading helpers
def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ModelError(f"{what} is missing: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, bad UTF-8 and integers of over 4300 digits;
        # RecursionError, nesting too deep for the parser.
        raise ModelError(f"{what} at {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{what} at {path} must hold a JSON object")
    return data


def _read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"{what} is missing: {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{what} at {path} is not a readable safetensors file: {exc}") from exc


def _check_finite(state: Mapping[str, torch.Tensor], where: Path) -> None:
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{where}: tensor {name!r} holds NaN or infinite values")


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """load_state_dict(strict) with one readable error listing what does not fit."""
    problems = shape_problems(
        {k: tuple(v.shape) for k, v in module.state_dict().items()},
        {k: tuple(v.shape) for k, v in state.items()},
    )
    if problems:
        raise ModelError(f"{where} does not match the architecture: " + "; ".join(problems))
    _check_finite(state, where)
    module.load_state_dict(state, strict=True)


def _build_diffusers(cls: type, config: dict[str, Any]) -> torch.nn.Module:
    try:
        return cls.from_config(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot build {cls.__name__} from its config: {exc}") from exc


def _diffusers_part(cls: type, folder: Path, what: str) -> tuple[torch.nn.Module, dict, dict]:
    """Build a diffusers model from folder/config.json and load its safetensors strictly."""
    config = _read_json(folder / "config.json", f"{what} config")
    declared = config.get("_class_name", cls.__name__)
    if declared != cls.__name__:
        raise ModelError(f"{folder}: expected a {cls.__name__}, config declares {declared}")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file() and (folder / "diffusion_pytorch_model.bin").is_file():
        raise ModelError(
            f"{folder} holds only pickled weights (.bin); convert them to safetensors first"
        )
    # Shapes first, on the meta device: the config must not decide what is allocated.
    shapes = header_shapes(weights, f"{what} weights")
    check_buildable(lambda: _build_diffusers(cls, _public(config)), shapes, weights, what)
    state = _read_safetensors(weights, f"{what} weights")
    module = _build_diffusers(cls, _public(config))
    _load_strict(module, state, weights)
    return module, state, config


# ----------------------------------------------------------------------------- save
def _oscar_json(config: ModelConfig) -> dict[str, Any]:
    data = config.to_dict()
    for key in ("vae", "unet", "scheduler"):
        data.pop(key)
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": data}


def save_model(
    model: OscarModel,
    directory: str | Path,
    priors: IndexPriors | None = None,
    dtype: torch.dtype | None = None,
    include_base: bool = True,
) -> bytes:
    """Write ``model`` (and ``priors``) as a model directory; returns the full fingerprint.

    ``dtype`` converts floating weights on the way out (the embedded model ships as float16).
    ``include_base=False`` leaves out vae/unet/scheduler (they come from ``config.base_model``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    def cast(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in state.items():
            v = v.detach().to("cpu")
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
            out[k] = v.contiguous()
        return out

    config = model.config
    if include_base:
        for name, part in (("vae", model.vae), ("unet", model.unet)):
            sub = directory / name
            sub.mkdir(exist_ok=True)
            (sub / "config.json").write_text(
                json.dumps({"_class_name": type(part).__name__, **_public(part.config)}, indent=2)
                + "\n"
            )
            save_file(cast(part.state_dict()), str(sub / WEIGHTS_FILE))
        (directory / "scheduler").mkdir(exist_ok=True)
        (directory / "scheduler" / SCHEDULER_FILE).write_text(
            json.dumps(config.scheduler, indent=2) + "\n"
        )
    parts = {f"hyper.{k}": v for k, v in model.hyper.state_dict().items()}
    parts["prompt_embedding"] = model.prompt_embedding
    save_file(cast(parts), str(directory / PARTS_FILE))
    (directory / MODEL_FILE).write_text(json.dumps(_oscar_json(config), indent=2) + "\n")
    priors_path = directory / PRIORS_FILE
    if priors is not None:
        priors.save(priors_path)
    elif priors_path.exists():
        priors_path.unlink()  # stale priors would not match the new weights
    return load_model(directory).fingerprint


def write_model_config(directory: str | Path, config: ModelConfig) -> None:
    """Rewrite a model directory's oscar.json (rate table, widths), atomically."""
    from oscar.io import atomic_output

    with atomic_output(Path(directory) / MODEL_FILE, force=True) as tmp:
        tmp.write_text(json.dumps(_oscar_json(config), indent=2) + "\n")


# ----------------------------------------------------------------------------- load
def read_config(directory: str | Path, base_model: str | Path | None = None) -> ModelConfig:
    """The full ModelConfig of a model directory, without reading any weights."""
    directory = Path(directory)
    meta = _read_json(directory / MODEL_FILE, "model description")
    if meta.get("format") != FORMAT_NAME:
        raise ModelError(f"{directory / MODEL_FILE} is not an OSCAR model description")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{directory}: model format version {meta.get('format_version')} is not supported "
            f"(this build reads version {FORMAT_VERSION})"
        )
    data = meta.get("config")
    if not isinstance(data, dict):
        raise ModelError(f"{directory / MODEL_FILE} has no 'config' object")
    if not isinstance(data.get("base_model"), (str, type(None))):
        raise ModelError(f"{directory / MODEL_FILE}: base_model must be a path or null")
    base = _base_folder(directory, data.get("base_model"), base_model)
    data = dict(data)
    data["vae"] = _public(_read_json(base / "vae" / "config.json", "VAE config"))
    data["unet"] = _public(_read_json(base / "unet" / "config.json", "UNet config"))
    data["scheduler"] = _read_json(base / "scheduler" / SCHEDULER_FILE, "scheduler config")
    try:
        return ModelConfig.from_dict(data)
    except ConfigError as exc:
        raise ModelError(f"{directory}: {exc}") from exc


def _base_folder(directory: Path, configured: str | None, given: str | Path | None) -> Path:
    """Where vae/unet/scheduler live: the given base, $OSCAR_BASE_MODEL, the config's, or here."""
    if given is not None:
        return Path(given)
    if configured is not None:
        env = os.environ.get(BASE_MODEL_ENV)
        base = Path(env) if env else Path(configured)
        if not base.is_absolute() and not env:
            base = directory / base
        if not base.is_dir():
            raise ModelError(
                f"{directory} needs its base model at {base}, which is not a folder; "
                f"pass --base-model DIR or set {BASE_MODEL_ENV}"
            )
        return base
    return directory


def load_model(
    directory: str | Path,
    base_model: str | Path | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> LoadedModel:
    """Load a model directory strictly; every problem is one :class:`ModelError`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"model directory {directory} does not exist")
    config = read_config(directory, base_model)
    base = _base_folder(directory, config.base_model, base_model)
    vae, vae_state, _ = _diffusers_part(AutoencoderKL, base / "vae", "VAE")
    unet, unet_state, _ = _diffusers_part(UNet2DConditionModel, base / "unet", "UNet")

    parts_path = directory / PARTS_FILE
    check_buildable(
        lambda: OscarModel(config, vae=vae, unet=unet),
        header_shapes(parts_path, "OSCAR weights"),
        parts_path,
        "the OSCAR parts",
        select=lambda m: {
            **{f"hyper.{k}": v for k, v in m.hyper.state_dict().items()},
            "prompt_embedding": m.prompt_embedding,
        },
    )
    parts = _read_safetensors(parts_path, "OSCAR weights")
    try:
        model = OscarModel(config, vae=vae, unet=unet)
    except (ConfigError, ValueError, TypeError, RuntimeError) as exc:
        raise ModelError(f"{directory}: cannot build the model: {exc}") from exc
    hyper_state = {k[len("hyper.") :]: v for k, v in parts.items() if k.startswith("hyper.")}
    _load_strict(model.hyper, hyper_state, parts_path)
    prompt = parts.get("prompt_embedding")
    if prompt is None or prompt.shape != model.prompt_embedding.shape:
        raise ModelError(
            f"{parts_path}: prompt_embedding missing or of shape "
            f"{None if prompt is None else tuple(prompt.shape)}, "
            f"expected {tuple(model.prompt_embedding.shape)}"
        )
    _check_finite({"prompt_embedding": prompt}, parts_path)
    extra = sorted(set(parts) - {f"hyper.{k}" for k in hyper_state} - {"prompt_embedding"})
    if extra:
        raise ModelError(f"{parts_path}: unexpected tensors {extra[:5]}")
    with torch.no_grad():
        model.prompt_embedding.copy_(prompt)

    priors = None
    if (directory / PRIORS_FILE).is_file():
        priors = IndexPriors.load(directory / PRIORS_FILE, config.levels)

    digest = fingerprint(config, _named_tensors(vae_state, unet_state, parts, priors))

    model = model.to(device=device or torch.device("cpu"), dtype=dtype).eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, priors=priors, fingerprint=digest, directory=directory)


def embedded_model_dir() -> Path:
    """The model shipped inside the package (``oscar/weights/small``)."""
    return Path(__file__).parent / "weights" / "small"


def resolve_model_dir(model: str | Path | None) -> Path:
    """The ``--model`` given, or the embedded model; a clear error when neither exists."""
    if model is not None:
        return Path(model)
    path = embedded_model_dir()
    if not (path / MODEL_FILE).is_file():
        raise ModelError(
            "this build has no embedded model; pass --model DIR "
            "(make one with `oscar init configs/small.json -o DIR`)"
        )
    return path
