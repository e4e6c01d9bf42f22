"""Model directories: save, strict load, and the fingerprint that ties files to weights.

Layout (diffusers-style subfolders, so a model directory is also a valid ``--base-model``)::

    MODEL_DIR/
      oscar.json                     OSCAR config: hyper widths, rate table, prompt length, LoRA
      oscar.safetensors              hyper-coders ("hyper.<level>.…"), "prompt_embedding", and
                                     with LoRA "unet_lora.…" / "unet_override.…" (models/lora.py)
      priors.safetensors             optional: integer index frequencies, "level.<level>"
      vae/config.json + diffusion_pytorch_model.safetensors        diffusers AutoencoderKL
      unet/config.json + diffusion_pytorch_model.safetensors       diffusers UNet2DConditionModel
      scheduler/scheduler_config.json                              diffusers scheduler config

A model whose ``oscar.json`` has ``vae_decoder`` (a lighter decoder) keeps the VAE's own
config in ``vae/config.json``, but the ``decoder.…`` tensors in ``vae/`` belong to that lighter
decoder (oscar.models.vae_decoder): diffusers alone cannot load such a ``vae/`` folder.

A model built on Stable Diffusion 2.1 has no ``vae/``, ``unet/``, ``scheduler/`` of its own: its
config names a ``base_model`` folder (diffusers format; weights as one safetensors file, shards,
or an fp16 variant: oscar.store.diffusers_io), and ``oscar.json`` keeps a copy of the base's configs
under ``"base"`` so that a wrong base folder (say 2.1-base, 512 px epsilon, instead of 2.1 768 v)
is refused by name. The base folder is, in order: the one given (``--base-model``),
``$OSCAR_BASE_MODEL``, the config's ``base_model`` (relative paths from the model directory).
Only safetensors and JSON are read: no pickle, no code.

The fingerprint is SHA-256 over everything that changes the decoded pixels: the configs (minus
descriptive fields), every tensor as stored on disk (name, dtype, shape, bytes; sorted by name:
the base model's weights included) and the priors. Files carry its first four bytes. The dtype
used for inference is not part of it: a file made in float16 on a GPU decodes on a CPU in float32.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

from oscar.coding.priors import IndexPriors
from oscar.config import ModelConfig
from oscar.errors import ConfigError, ModelError
from oscar.io import atomic_output, give_usual_permissions
from oscar.models.lora import (
    LORA_PREFIX,
    UnetAdapter,
    add_lora,
    base_state_dict,
    check_adapter,
    has_peft_lora,
    identity_adapter,
    is_unet_key,
    load_lora_into_peft,
    lora_state_dict,
    merge_adapter,
)
from oscar.models.oscar import OscarModel
from oscar.models.tensor_checks import state_problems
from oscar.models.vae_decoder import build_vae, vae_class
from oscar.store.diffusers_io import (
    check_finite,
    load_part,
    public_config,
    read_json,
    read_safetensors,
)
from oscar.store.model_files import (  # the parts that read no weights (no torch, no diffusers)
    BASE_MODEL_ENV,  # noqa: F401 (re-exported)
    FINGERPRINT_BYTES,
    FORMAT_NAME,
    FORMAT_VERSION,
    MODEL_FILE,
    PARTS_FILE,
    PRIORS_FILE,
    SCHEDULER_FILE,
    WEIGHTS_FILE,
    _base_folder,
    _read_meta,
    embedded_model_dir,  # noqa: F401 (re-exported)
    read_config,
    resolve_model_dir,  # noqa: F401 (re-exported)
)
from oscar.store.safe_build import check_buildable

# Config fields that describe but do not change decoding.
_DESCRIPTIVE = {"name", "base_model"}

logger = logging.getLogger(__name__)

_public = public_config


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
        in its current dtype and loading it back would give.

        A UNet LoRA counts as saving stores it: the peft factors (training) or the adapter
        record, with the base weights apart. Once a LoRA is merged into the weights (a model
        loaded for inference) the base weights are gone, so the merged ones are hashed instead:
        a fingerprint of this in-memory model only, which no saved directory reproduces.
        """
        parts = {f"hyper.{k}": v for k, v in model.hyper.state_dict().items()}
        parts["prompt_embedding"] = model.prompt_embedding.detach()
        parts.update(_unet_adapter_tensors(model))
        peft = has_peft_lora(model.unet)
        unet_state = base_state_dict(model.unet) if peft else model.unet.state_dict()
        tensors = _named_tensors(model.vae.state_dict(), unet_state, parts, priors)
        digest = fingerprint(model.config, tensors)
        return cls(
            model=model, priors=priors, fingerprint=digest, directory=directory or Path("<memory>")
        )


# ----------------------------------------------------------------------------- fingerprint
def require_fingerprint(loaded: LoadedModel, expected: str | None, role: str, key: str) -> None:
    """Refuse a model whose fingerprint does not start with ``expected`` (hex; None: any).

    For recipes tied to particular weights: a path such as the embedded model's holds other
    weights once a new model is shipped, and training would silently go on from them. ``role``
    and ``key`` name the recipe's path and fingerprint fields in the error.
    """
    if expected is None or loaded.fingerprint.hex().startswith(expected):
        return
    raise ConfigError(
        f"{role} {loaded.directory} has fingerprint {loaded.fingerprint.hex()[: len(expected)]}, "
        f"not {expected} as the recipe expects: it was made for other weights (its header says "
        f"where to get them; to run it on these, set {key} to what `oscar info --model "
        f"{loaded.directory}` prints)"
    )


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
        if t.numel():  # hashed in place: no copy of a 3.4 GB UNet
            h.update(t.reshape(-1).view(torch.uint8).numpy())
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
def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """load_state_dict(strict) with one readable error listing what does not fit."""
    problems = state_problems(module.state_dict(), state)
    if problems:
        raise ModelError(f"{where} does not match the architecture: " + "; ".join(problems))
    check_finite(state, where)
    module.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------- save
def _base_configs(config: ModelConfig) -> dict[str, dict[str, Any]]:
    return {
        "vae": _public(config.vae),
        "unet": _public(config.unet),
        "scheduler": _public(config.scheduler),
    }


def write_model_files(
    directory: str | Path,
    config: ModelConfig,
    parts: Mapping[str, torch.Tensor],
    priors: IndexPriors | None = None,
    base_configs: Mapping[str, Mapping[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``oscar.json``, ``oscar.safetensors`` and the priors (stale priors are removed).

    ``base_configs`` (vae/unet/scheduler) is recorded for a model that references a base
    folder; ``extra`` adds descriptive top-level fields (e.g. where a conversion came from).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in parts.items()}, str(directory / PARTS_FILE)
    )
    give_usual_permissions(directory / PARTS_FILE)
    meta = _oscar_json(config)
    if base_configs is not None:
        meta["base"] = {k: dict(v) for k, v in base_configs.items()}
    if extra:
        meta.update(extra)
    (directory / MODEL_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    priors_path = directory / PRIORS_FILE
    if priors is not None:
        priors.save(priors_path)
    elif priors_path.exists():
        priors_path.unlink()  # stale priors would not match the new weights


def _oscar_json(config: ModelConfig) -> dict[str, Any]:
    data = config.to_dict()
    for key in ("vae", "unet", "scheduler"):
        data.pop(key)
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": data}


def _unet_adapter_tensors(model: OscarModel) -> dict[str, torch.Tensor]:
    """LoRA factors and overrides to store: from peft layers, the merged record, or identity."""
    settings = model.config.lora
    adapter: UnetAdapter | None = model.unet_adapter
    peft = has_peft_lora(model.unet)
    if settings is None:
        if peft or adapter is not None:
            raise ModelError("the model carries UNet LoRA but its config has no 'lora' settings")
        return {}
    if peft:
        tensors = lora_state_dict(model.unet)
        params = dict(base_state_dict(model.unet))
        for name in adapter.overrides if adapter is not None else ():
            tensors[f"unet_override.{name}"] = params[name]
        return tensors
    if adapter is not None:
        return dict(adapter.tensors)
    # A fresh model (`oscar init`): a LoRA that changes nothing yet, as training would start it.
    generator = torch.Generator().manual_seed(0)
    return identity_adapter(model.unet, settings, generator).tensors


def save_model(
    model: OscarModel,
    directory: str | Path,
    priors: IndexPriors | None = None,
    dtype: torch.dtype | None = None,
    include_base: bool = True,
) -> bytes:
    """Write ``model`` (and ``priors``) as a model directory; returns the full fingerprint.

    ``dtype`` converts floating weights on the way out (the embedded model ships as float16).
    ``include_base=False`` leaves out vae/unet/scheduler (they come from ``config.base_model``,
    whose configs are recorded so that a different base is refused at load time). The UNet's LoRA
    (peft layers during training, or the record of a merged one) goes to ``oscar.safetensors``.
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
    unet_tensors = _unet_adapter_tensors(model)
    if include_base:
        if model.unet_adapter is not None and model.unet_adapter.merged:
            raise ModelError(
                "this model's LoRA is merged into its UNet; save it with include_base=False "
                "(the base weights come from the base model) or load it with merge_lora=False"
            )
        unet_state = base_state_dict(model.unet) if has_peft_lora(model.unet) else None
        for name, part in (("vae", model.vae), ("unet", model.unet)):
            sub = directory / name
            sub.mkdir(exist_ok=True)
            (sub / "config.json").write_text(
                json.dumps({"_class_name": type(part).__name__, **_public(part.config)}, indent=2)
                + "\n"
            )
            state = unet_state if name == "unet" and unet_state is not None else part.state_dict()
            save_file(cast(state), str(sub / WEIGHTS_FILE))
            give_usual_permissions(sub / WEIGHTS_FILE)
        (directory / "scheduler").mkdir(exist_ok=True)
        (directory / "scheduler" / SCHEDULER_FILE).write_text(
            json.dumps(config.scheduler, indent=2) + "\n"
        )
    parts = {f"hyper.{k}": v for k, v in model.hyper.state_dict().items()}
    parts["prompt_embedding"] = model.prompt_embedding
    parts.update(unet_tensors)
    if include_base and config.base_model is not None:
        config = replace(config, base_model=None)  # self-contained: its own vae/ and unet/
    write_model_files(
        directory,
        config,
        cast(parts),
        priors,
        base_configs=None if include_base else _base_configs(config),
    )
    return load_model(directory).fingerprint


def write_model_config(directory: str | Path, config: ModelConfig) -> None:
    """Rewrite a model directory's oscar.json (rate table, widths), atomically.

    Everything else the file holds is kept: the base folder it names and the base's configs
    (a model on Stable Diffusion 2.1), and descriptive fields such as where a conversion came
    from; ``config.base_model`` may be a ``--base-model`` given for this run only.
    """

    directory = Path(directory)
    meta = _read_meta(directory)
    data = _oscar_json(config)["config"]
    data["base_model"] = meta["config"].get("base_model")
    meta["config"] = data
    with atomic_output(directory / MODEL_FILE, force=True) as out:
        out.write((json.dumps(meta, indent=2) + "\n").encode())


# ----------------------------------------------------------------------------- load
def _part_dtypes(model: OscarModel, dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    """(UNet dtype, VAE dtype) for an inference dtype.

    The Stable Diffusion VAE overflows in float16 (its config says ``force_upcast``, as diffusers
    pipelines honour), so it stays float32 then; bfloat16 has float32's range and is kept.
    """
    vae_dtype = dtype
    if dtype == torch.float16 and bool(getattr(model.vae.config, "force_upcast", False)):
        vae_dtype = torch.float32
    return dtype, vae_dtype


def load_model(
    directory: str | Path,
    base_model: str | Path | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    merge_lora: bool = True,
) -> LoadedModel:
    """Load a model directory strictly; every problem is one :class:`ModelError`.

    ``dtype`` is the inference dtype of the UNet and the VAE (see :func:`_part_dtypes`); the
    hyper-coders, prompt and all side-information maths stay float32, so indices depend as
    little as possible on it. A UNet LoRA is merged into the weights after the cast (float32
    maths, one rounding), unless ``merge_lora=False``: then the UNet is wrapped with peft
    adapters holding the stored factors, for training.
    """

    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"model directory {directory} does not exist")
    device = device or torch.device("cpu")
    config = read_config(directory, base_model)
    base = _base_folder(directory, config.base_model, base_model)
    if config.base_model is not None:
        # The folder actually used, absolute: saving this model elsewhere (training, export)
        # then still finds it. Descriptive only: not part of the fingerprint.
        config = replace(config, base_model=str(base.resolve()))
    # A lighter decoder of its own (config.vae_decoder) is not what AutoencoderKL would build.
    vae_builder = None
    if config.vae_decoder is not None:
        vae_builder = partial(build_vae, settings=config.vae_decoder)
    try:
        vae_cls = vae_class(config.vae)
    except ConfigError as exc:
        raise ModelError(f"{base / 'vae'}: {exc}") from None
    vae, vae_state, _ = load_part(vae_cls, base / "vae", "VAE", vae_builder)
    unet, unet_state, _ = load_part(UNet2DConditionModel, base / "unet", "UNet")

    parts_path = directory / PARTS_FILE
    parts = read_safetensors(parts_path, "OSCAR weights")
    hyper_state = {k[len("hyper.") :]: v for k, v in parts.items() if k.startswith("hyper.")}
    unet_tensors = {k: v for k, v in parts.items() if is_unet_key(k)}
    extra = sorted(set(parts) - {f"hyper.{k}" for k in hyper_state} - set(unet_tensors))
    extra = [k for k in extra if k != "prompt_embedding"]
    if extra:
        raise ModelError(f"{parts_path}: unexpected tensors {extra[:5]}")
    if unet_tensors and config.lora is None:
        raise ModelError(
            f"{parts_path}: holds UNet LoRA tensors, but {directory / MODEL_FILE} has no 'lora'"
        )
    if config.lora is not None and not any(k.startswith(LORA_PREFIX) for k in unet_tensors):
        raise ModelError(f"{parts_path}: the config asks for a UNet LoRA, the file has none")

    priors = None
    if (directory / PRIORS_FILE).is_file():
        priors = IndexPriors.load(directory / PRIORS_FILE, config.levels)

    # The fingerprint covers the weights as stored, before any cast or LoRA merge.
    digest = fingerprint(config, _named_tensors(vae_state, unet_state, parts, priors))
    del vae_state, unet_state  # the modules own these tensors now

    # The OSCAR parts on the meta device first, within the elements their file holds: the
    # config (widths, levels, prompt length) must not decide what is allocated.
    check_buildable(
        lambda: OscarModel(config, vae=vae, unet=unet),
        {k: tuple(v.shape) for k, v in parts.items() if not is_unet_key(k)},
        parts_path,
        "the OSCAR parts",
        select=lambda m: {
            **{f"hyper.{k}": v for k, v in m.hyper.state_dict().items()},
            "prompt_embedding": m.prompt_embedding,
        },
    )
    try:
        model = OscarModel(config, vae=vae, unet=unet)
    except (ConfigError, ValueError, TypeError, RuntimeError) as exc:
        raise ModelError(f"{directory}: cannot build the model: {exc}") from exc
    _load_strict(model.hyper, hyper_state, parts_path)
    prompt = parts.get("prompt_embedding")
    if prompt is None or prompt.shape != model.prompt_embedding.shape:
        raise ModelError(
            f"{parts_path}: prompt_embedding missing or of shape "
            f"{None if prompt is None else tuple(prompt.shape)}, "
            f"expected {tuple(model.prompt_embedding.shape)}"
        )
    check_finite({"prompt_embedding": prompt}, parts_path)
    with torch.no_grad():
        model.prompt_embedding.copy_(prompt)

    adapter = None
    if config.lora is not None:
        adapter = UnetAdapter(config.lora, unet_tensors)
        check_adapter(model.unet, adapter, parts_path)

    unet_dtype, vae_dtype = _part_dtypes(model, dtype)
    # nn.Module.to, not diffusers' override: that one warns about "modules to keep in float32"
    # even when its list is empty; we decide the dtypes here (_part_dtypes).
    torch.nn.Module.to(model.unet, device=device, dtype=unet_dtype)
    torch.nn.Module.to(model.vae, device=device, dtype=vae_dtype)
    model.to(device=device)  # hyper-coders and prompt: float32
    if adapter is not None:
        if merge_lora:
            merge_adapter(model.unet, adapter, parts_path)
        else:
            add_lora(model.unet, config.lora)
            load_lora_into_peft(model.unet, adapter.tensors)
            model.unet.to(device=device)
        model.unet_adapter = adapter
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, priors=priors, fingerprint=digest, directory=directory)


def model_on_base(config: ModelConfig, base_model: str | Path, seed: int = 0) -> OscarModel:
    """A new model on a base folder (Stable Diffusion 2.1): the folder's VAE, UNet and
    scheduler, and ``config``'s own parts (hyper-coders, prompt, rate table, LoRA settings)
    freshly initialised from ``seed``; float32.

    The base's configs replace ``config``'s vae/unet/scheduler, and ``config.base_model`` is set
    to the folder, so :func:`save_model` with ``include_base=False`` references it (``oscar init
    --base-model``, a training recipe with ``base_model``).
    """

    base = _base_folder(Path("."), str(base_model), base_model)
    vae, _, vae_config = load_part(AutoencoderKL, base / "vae", "VAE")
    unet, _, unet_config = load_part(UNet2DConditionModel, base / "unet", "UNet")
    scheduler = read_json(base / "scheduler" / SCHEDULER_FILE, "scheduler config")
    try:
        config = replace(
            config,
            vae=_public(vae_config),
            unet=_public(unet_config),
            scheduler=scheduler,
            base_model=str(base.resolve()),
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = OscarModel(config, vae=vae, unet=unet)
    except (ConfigError, ValueError, TypeError, RuntimeError) as exc:
        raise ModelError(f"cannot build {config.name} on the base model {base}: {exc}") from exc
    return torch.nn.Module.to(model, dtype=torch.float32)
