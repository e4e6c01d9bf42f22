"""Model directories as files: names, ``oscar.json`` and the configuration, without weights.

This module imports neither torch nor diffusers, so that commands can check a model's rate table
(levels, bpp range) and file headers before anything heavy loads. Loading weights is
``oscar.store.pretrained``'s job; it re-exports everything here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oscar.config import ModelConfig
from oscar.errors import ConfigError, ModelError
from oscar.filetypes import read_bounded

MODEL_FILE = "oscar.json"
PARTS_FILE = "oscar.safetensors"
PRIORS_FILE = "priors.safetensors"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
SCHEDULER_FILE = "scheduler_config.json"
FORMAT_NAME = "oscar-model"
FORMAT_VERSION = 1
BASE_MODEL_ENV = "OSCAR_BASE_MODEL"
FINGERPRINT_BYTES = 4

_BASE_PARTS = (("vae", "VAE"), ("unet", "UNet"), ("scheduler", "scheduler"))


def public_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers config without its bookkeeping keys (``_class_name``, ``_diffusers_version``)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


_public = public_config


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from a model folder, read with a bound (MAX_METADATA_BYTES)."""
    text = read_bounded(path, what)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, bad UTF-8 and integers of over 4300 digits;
        # RecursionError, nesting too deep for the parser.
        raise ModelError(f"{what} at {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{what} at {path} must hold a JSON object")
    return data


def _read_meta(directory: Path) -> dict[str, Any]:
    meta = read_json(directory / MODEL_FILE, "model description")
    if meta.get("format") != FORMAT_NAME:
        raise ModelError(f"{directory / MODEL_FILE} is not an OSCAR model description")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{directory}: model format version {meta.get('format_version')} is not supported "
            f"(this build reads version {FORMAT_VERSION})"
        )
    if not isinstance(meta.get("config"), dict):
        raise ModelError(f"{directory / MODEL_FILE} has no 'config' object")
    return meta


def _check_base_configs(
    directory: Path, base: Path, expected: Any, found: Mapping[str, Mapping[str, Any]]
) -> None:
    """Refuse a base folder whose configs differ from those the model was made with."""
    if not isinstance(expected, dict):
        raise ModelError(f"{directory / MODEL_FILE}: 'base' must be an object")
    for key, what in _BASE_PARTS:
        want = expected.get(key)
        if not isinstance(want, dict):
            raise ModelError(f"{directory / MODEL_FILE}: 'base.{key}' must be an object")
        have = _public(found[key])
        diffs = [
            f"{k} {have[k]!r} (expected {want[k]!r})"
            for k in sorted(set(want) & set(have))
            if have[k] != want[k] and not (isinstance(want[k], list) and tuple(want[k]) == have[k])
        ]
        if diffs:
            raise ModelError(
                f"base model {base}: its {what} config differs from the one {directory} was "
                f"made for: {', '.join(diffs[:4])}" + (" …" if len(diffs) > 4 else "")
            )


def read_config(directory: str | Path, base_model: str | Path | None = None) -> ModelConfig:
    """The full ModelConfig of a model directory, without reading any weights."""
    directory = Path(directory)
    meta = _read_meta(directory)
    data = dict(meta["config"])
    if not isinstance(data.get("base_model"), (str, type(None))):
        raise ModelError(f"{directory / MODEL_FILE}: base_model must be a path or null")
    base = _base_folder(directory, data.get("base_model"), base_model)
    if base == directory and not (directory / "unet").is_dir() and "base" in meta:
        raise ModelError(
            f"{directory} uses a base model (Stable Diffusion folder with vae/, unet/, "
            f"scheduler/); pass --base-model DIR or set {BASE_MODEL_ENV}"
        )
    found = {
        "vae": read_json(base / "vae" / "config.json", "VAE config"),
        "unet": read_json(base / "unet" / "config.json", "UNet config"),
        "scheduler": read_json(base / "scheduler" / SCHEDULER_FILE, "scheduler config"),
    }
    if "base" in meta:
        _check_base_configs(directory, base, meta["base"], found)
    # The VAE's class is kept: two autoencoder classes exist (oscar.models.vae_decoder.vae_class).
    vae_class_name = found["vae"].get("_class_name", "AutoencoderKL")
    data["vae"] = {**_public(found["vae"]), "_class_name": vae_class_name}
    data["unet"] = _public(found["unet"])
    data["scheduler"] = found["scheduler"]
    try:
        return ModelConfig.from_dict(data)
    except ConfigError as exc:
        raise ModelError(f"{directory}: {exc}") from exc


def _base_folder(directory: Path, configured: str | None, given: str | Path | None) -> Path:
    """Where vae/unet/scheduler live: the given base, $OSCAR_BASE_MODEL, the config's, or here."""
    if given is not None:
        base = Path(given)
        where = "--base-model"
    elif os.environ.get(BASE_MODEL_ENV) and configured is not None:
        base = Path(os.environ[BASE_MODEL_ENV])
        where = f"${BASE_MODEL_ENV}"
    elif configured is not None:
        base = Path(configured)
        if not base.is_absolute():
            base = directory / base
        where = f"{directory / MODEL_FILE}"
    else:
        return directory
    if not base.is_dir():
        raise ModelError(
            f"base model folder {base} (from {where}) does not exist; pass --base-model DIR "
            f"(a diffusers folder with vae/, unet/, scheduler/) or set {BASE_MODEL_ENV}"
        )
    return base


def embedded_model_dir() -> Path:
    """The model shipped inside the package (``oscar/weights/small``)."""
    return Path(__file__).parents[1] / "weights" / "small"


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
