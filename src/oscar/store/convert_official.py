"""Import the original release's checkpoint (``oscar.pkl``) as an OSCAR model directory.

The original (jp-guo/OSCAR, HEAD of 2025-10-19) saves one ``torch.save`` dict; its layout is
documented in ``docs/official-checkpoint.md`` (cited as §n below)::

    hyper_encoders      "{level}.backbone.…", "{level}.proj.…", "{level}.quantizer.…"   8 levels
    embeddings          (77, 1024) learned prompt
    unet_lora_{encoder,decoder,others}_modules   three lists of UNet module names (94/148/16)
    rank_unet           16
    state_dict_unet     "<module>.lora_{A,B}.default_{encoder,decoder,others}.weight",
                        "conv_in.base_layer.{weight,bias}"

Mapping (§6), into ``oscar.safetensors`` of a model directory that references the SD 2.1 folder:

    {L}.backbone.<i>.…                  → hyper.{L}.g_a.<i>.…      (same Sequential indices)
    {L}.proj.<i>.…                      → hyper.{L}.g_s.<i>.…      (ConvTranspose2d kept as is)
    {L}.quantizer.project_{in,out}.*    → hyper.{L}.quantizer.project_{in,out}.*
    {L}.quantizer._codebook.embed[0]    → hyper.{L}.quantizer.codebook        (K, d)
    {L}.quantizer._codebook.{initted, cluster_size, embed_avg}   dropped: EMA training state
    embeddings                          → prompt_embedding
    <m>.lora_{A,B}.<adapter>.weight     → unet_lora.<m>.lora_{A,B}.weight  (one adapter per module)
    conv_in.base_layer.{weight,bias}    → unet_override.conv_in.{weight,bias}

with LoRA rank ``rank_unet``, alpha 8 (peft's default, not stored: §3.2) and the original's 14
target names, and the original's rate table: timesteps [500, 400, 310, 280, 210, 190, 170, 150]
(§5). The base must be Stable Diffusion 2.1 768 v (prediction type v, VAE scaling 0.18215,
scaled-linear betas 0.00085–0.012 over 1000 steps); anything else is refused.

Every tensor of the checkpoint is either mapped or explicitly dropped; an unknown, missing or
misshapen key is an error that names it. The old hyper-encoder layout (before the 2025-10-19 fix,
§2.7) is recognised and refused. The pickle is read only with ``torch.load(weights_only=True)``.
Entropy priors are not part of the release: fit them with ``oscar fit-priors`` or code with
``--coder fixed``.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open

from oscar.config import HyperConfig, LoraSettings, ModelConfig
from oscar.errors import ConfigError, ModelError
from oscar.models.hyper import HyperCoder
from oscar.models.lora import (
    LORA_PREFIX,
    OVERRIDE_PREFIX,
    UnetAdapter,
    check_adapter,
    lora_target_names,
)
from oscar.models.tensor_checks import state_problems
from oscar.rates import RateLevel
from oscar.store.diffusers_io import (
    build_empty,
    check_finite,
    find_weights,
    public_config,
    read_json,
)
from oscar.store.pretrained import SCHEDULER_FILE, load_model, write_model_files

logger = logging.getLogger(__name__)

# (grid factor, codebook size, timestep) of levels 0-7 in the original (§2.1, §5).
OFFICIAL_LEVELS = (
    (64, 256, 500),
    (32, 1024, 400),
    (16, 256, 310),
    (16, 2048, 280),
    (8, 16, 210),
    (8, 32, 190),
    (8, 64, 170),
    (8, 256, 150),
)
# The original's LoRA target names (§3.1) and peft's default alpha (§3.2).
OFFICIAL_TARGETS = (
    "to_k",
    "to_q",
    "to_v",
    "to_out.0",
    "conv",
    "conv1",
    "conv2",
    "conv_in",
    "conv_shortcut",
    "conv_out",
    "proj_out",
    "proj_in",
    "ff.net.2",
    "ff.net.0.proj",
)
OFFICIAL_LORA_ALPHA = 8.0
ADAPTERS = {
    "unet_lora_encoder_modules": "default_encoder",
    "unet_lora_decoder_modules": "default_decoder",
    "unet_lora_others_modules": "default_others",
}
TOP_LEVEL_KEYS = (
    "hyper_encoders",
    "embeddings",
    *ADAPTERS,
    "rank_unet",
    "state_dict_unet",
)
CONV_IN_KEYS = {
    "conv_in.base_layer.weight": "conv_in.weight",
    "conv_in.base_layer.bias": "conv_in.bias",
}
# What the base folder must say to be the model the original was trained on (§4).
SD21_SCHEDULER = {
    "prediction_type": "v_prediction",
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
}
SD21_SCALING_FACTOR = 0.18215
_DROPPED = ("initted", "cluster_size", "embed_avg")
_OLD_LAYOUT_MARK = ".attn.in_proj_weight"


@dataclass
class ConversionReport:
    """What a conversion read, wrote and left out."""

    levels: int = 0
    hyper_tensors: int = 0
    dropped: list[str] = field(default_factory=list)
    lora_modules: dict[str, int] = field(default_factory=dict)
    lora_rank: int = 0
    prompt_shape: tuple[int, ...] = ()
    conv_in_difference: float | None = None
    codebook_norm_error: float | None = None
    fingerprint: bytes | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class MappedCheckpoint:
    """The checkpoint in our layout: the config and the tensors of ``oscar.safetensors``."""

    config: ModelConfig
    parts: dict[str, torch.Tensor]
    report: ConversionReport


# ----------------------------------------------------------------------------- reading
def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` on CPU; any refusal becomes one :class:`ModelError`."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{path}: refused by the weights-only loader (the file holds objects other than "
            f"tensors, dicts, lists and numbers; it was not unpickled): {first}"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, AttributeError) as exc:
        raise ModelError(f"{path} is not a readable PyTorch checkpoint: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a dict at the top level, found {type(data).__name__}")
    return data


def _tensor_map(value: Any, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    ):
        raise ModelError(f"'{what}' must map names to tensors")
    return dict(value)


def _check_top_level(ckpt: Mapping[str, Any]) -> None:
    unknown = sorted(str(k) for k in ckpt if k not in TOP_LEVEL_KEYS)
    missing = [k for k in TOP_LEVEL_KEYS if k not in ckpt]
    if unknown or missing:
        raise ModelError(
            "not the original OSCAR checkpoint layout: "
            + "; ".join(
                part
                for part in (
                    f"missing keys {missing}" if missing else "",
                    f"unknown keys {unknown}" if unknown else "",
                )
                if part
            )
        )
    for key in ADAPTERS:
        names = ckpt[key]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ModelError(f"'{key}' must be a list of module names")
    rank = ckpt["rank_unet"]
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ModelError(f"'rank_unet' must be a positive integer, found {rank!r}")
    emb = ckpt["embeddings"]
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2:
        raise ModelError("'embeddings' must be a 2-D tensor (prompt length, context width)")


# ----------------------------------------------------------------------------- hyper-encoders
def _split_levels(hyper: Mapping[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    if any(k.endswith(_OLD_LAYOUT_MARK) for k in hyper):
        raise ModelError(
            "this checkpoint has the original's old hyper-encoder layout (nn.MultiheadAttention "
            "layers, e.g. '0.backbone.4.attn.in_proj_weight': jp-guo/OSCAR before the "
            "2025-10-19 'update hyper-encoder' fix). Its two lowest levels code a grid twice too "
            "fine and its timesteps differ; it is not supported. Use the checkpoint released "
            "with the fixed code."
        )
    levels: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in hyper.items():
        head, _, sub = key.partition(".")
        if not head.isdigit() or not sub:
            raise ModelError(f"hyper_encoders: key {key!r} does not start with a level number")
        levels.setdefault(int(head), {})[sub] = value
    expected = set(range(len(OFFICIAL_LEVELS)))
    if set(levels) != expected:
        raise ModelError(
            f"hyper_encoders: levels {sorted(levels)} found, expected {sorted(expected)}"
        )
    return levels


def _official_name(ours: str) -> str:
    """Our hyper-coder state-dict name → the original's (§2.3)."""
    if ours.startswith("g_a."):
        return "backbone." + ours[4:]
    if ours.startswith("g_s."):
        return "proj." + ours[4:]
    if ours == "quantizer.codebook":
        return "quantizer._codebook.embed"
    return ours


def _hyper_widths(level0: Mapping[str, torch.Tensor]) -> HyperConfig:
    try:
        hidden = level0["backbone.0.weight"].shape[0]
        features = level0["backbone.13.weight"].shape[0]
        codebook_dim = level0["quantizer.project_in.weight"].shape[0]
    except KeyError as exc:
        raise ModelError(f"hyper_encoders: level 0 has no {exc.args[0]!r}") from None
    try:
        return HyperConfig(int(hidden), int(features), int(codebook_dim))
    except ConfigError as exc:
        raise ModelError(f"hyper_encoders: unusable widths: {exc}") from None


def _map_level(
    level: int,
    rate: RateLevel,
    widths: HyperConfig,
    state: Mapping[str, torch.Tensor],
    latent_channels: int,
    report: ConversionReport,
) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        ours = HyperCoder(rate, widths, latent_channels).state_dict()
    expected: dict[str, tuple[int, ...]] = {}
    for name, tensor in ours.items():
        shape = tensor.shape
        if name == "quantizer.codebook":
            shape = (1, *shape)  # (num_codebooks = 1, K, d)
        expected[_official_name(name)] = shape
    k, d = rate.codebook_size, widths.codebook_dim
    # EMA training state of the codebook (§2.4): checked, then dropped. ``initted`` is a float
    # of shape (1,) in vector-quantize-pytorch 1.22.3 and a 0-dim bool in newer versions (§2.5).
    initted = state.get("quantizer._codebook.initted")
    expected["quantizer._codebook.initted"] = (
        initted.shape if initted is not None and initted.shape in ((), (1,)) else (1,)
    )
    expected["quantizer._codebook.cluster_size"] = (1, k)
    expected["quantizer._codebook.embed_avg"] = (1, k, d)
    problems = state_problems(expected, state)
    if problems:
        raise ModelError(
            f"hyper_encoders level {level} (grid factor {rate.grid_factor}, codebook "
            f"{rate.codebook_size}) does not match the original's layout: " + "; ".join(problems)
        )
    mapped = {}
    for name in ours:
        value = state[_official_name(name)]
        mapped[f"hyper.{level}.{name}"] = value[0] if name == "quantizer.codebook" else value
    report.dropped += [f"{level}.quantizer._codebook.{n}" for n in _DROPPED]
    return mapped


# ----------------------------------------------------------------------------- UNet LoRA
def _map_unet(
    ckpt: Mapping[str, Any], unet_config: Mapping[str, Any], report: ConversionReport
) -> tuple[LoraSettings, dict[str, torch.Tensor]]:
    settings = LoraSettings(int(ckpt["rank_unet"]), OFFICIAL_LORA_ALPHA, OFFICIAL_TARGETS)
    unet = build_empty(UNet2DConditionModel, unet_config)
    targets = lora_target_names(unet, settings)
    owner: dict[str, str] = {}
    for list_key, adapter in ADAPTERS.items():
        for name in ckpt[list_key]:
            if name in owner:
                raise ModelError(
                    f"UNet module {name!r} is listed for two adapters ({owner[name]}, {adapter}); "
                    "each module must carry exactly one"
                )
            owner[name] = adapter
        report.lora_modules[adapter] = len(ckpt[list_key])
    missing = [n for n in targets if n not in owner]
    extra = sorted(set(owner) - set(targets))
    if missing or extra:
        raise ModelError(
            "the checkpoint's LoRA module lists do not match the base UNet's targets: "
            f"{len(missing)} not listed {missing[:3]}, {len(extra)} unknown {extra[:3]}"
        )
    state = _tensor_map(ckpt["state_dict_unet"], "state_dict_unet")
    tensors: dict[str, torch.Tensor] = {}
    consumed = set()
    for name, adapter in owner.items():
        for part in ("lora_A", "lora_B"):
            key = f"{name}.{part}.{adapter}.weight"
            if key not in state:
                raise ModelError(f"state_dict_unet: missing {key!r}")
            tensors[f"{LORA_PREFIX}{name}.{part}.weight"] = state[key]
            consumed.add(key)
    for key, ours in CONV_IN_KEYS.items():
        if key not in state:
            raise ModelError(f"state_dict_unet: missing {key!r}")
        tensors[OVERRIDE_PREFIX + ours] = state[key]
        consumed.add(key)
    unknown = sorted(set(state) - consumed)
    if unknown:
        raise ModelError(
            f"state_dict_unet: {len(unknown)} key(s) this converter does not know: "
            f"{', '.join(unknown[:5])}"
        )
    check_adapter(unet, UnetAdapter(settings, tensors), "state_dict_unet", values=False)
    report.lora_rank = settings.rank
    return settings, tensors


# ----------------------------------------------------------------------------- whole checkpoint
def check_base_configs(vae: Mapping[str, Any], scheduler: Mapping[str, Any]) -> None:
    """Refuse a base folder that is not Stable Diffusion 2.1 768 v (§4)."""
    wrong = [
        f"scheduler {k} = {scheduler.get(k)!r} (expected {v!r})"
        for k, v in SD21_SCHEDULER.items()
        if scheduler.get(k) != v
    ]
    scaling = vae.get("scaling_factor", SD21_SCALING_FACTOR)  # absent in SD 2.1: class default
    if scaling != SD21_SCALING_FACTOR:
        wrong.append(f"VAE scaling_factor = {scaling!r} (expected {SD21_SCALING_FACTOR})")
    if wrong:
        raise ModelError(
            "the base model is not Stable Diffusion 2.1 (768, v-prediction), which the original "
            "was trained on: " + "; ".join(wrong)
        )


def map_checkpoint(
    ckpt: Mapping[str, Any],
    vae_config: Mapping[str, Any],
    unet_config: Mapping[str, Any],
    scheduler_config: Mapping[str, Any],
    base_model: str | None = None,
    name: str = "sd21-official",
) -> MappedCheckpoint:
    """Check and rename every tensor (shapes only: works on meta tensors too)."""
    _check_top_level(ckpt)
    check_base_configs(vae_config, scheduler_config)
    report = ConversionReport()
    hyper = _tensor_map(ckpt["hyper_encoders"], "hyper_encoders")
    levels = _split_levels(hyper)
    widths = _hyper_widths(levels[0])
    rates = tuple(
        RateLevel(level=i, grid_factor=f, codebook_size=k, timestep=t)
        for i, (f, k, t) in enumerate(OFFICIAL_LEVELS)
    )
    latent_channels = int(vae_config.get("latent_channels", 4))
    parts: dict[str, torch.Tensor] = {}
    for rate in rates:
        parts.update(
            _map_level(rate.level, rate, widths, levels[rate.level], latent_channels, report)
        )
    report.levels = len(rates)
    report.hyper_tensors = len(hyper)

    prompt = ckpt["embeddings"].detach()
    context = unet_config.get("cross_attention_dim")
    if prompt.shape[1] != context:
        raise ModelError(
            f"embeddings of shape {tuple(prompt.shape)} do not fit the base UNet's "
            f"cross_attention_dim {context}"
        )
    parts["prompt_embedding"] = prompt
    report.prompt_shape = tuple(prompt.shape)

    settings, unet_tensors = _map_unet(ckpt, unet_config, report)
    parts.update(unet_tensors)
    try:
        config = ModelConfig(
            name=name,
            vae=public_config(vae_config),
            unet=public_config(unet_config),
            scheduler=dict(scheduler_config),
            hyper=widths,
            prompt_length=int(prompt.shape[0]),
            levels=rates,
            lora=settings,
            base_model=base_model,
        )
    except ConfigError as exc:
        raise ModelError(f"the converted model's config is invalid: {exc}") from None
    return MappedCheckpoint(config, parts, report)


def _base_tensor(folder: Path, name: str) -> torch.Tensor | None:
    """One tensor of a diffusers weights file, read lazily (no full load)."""

    kind, path = find_weights(folder, "UNet")
    if kind == "index":
        weight_map = read_json(path, "UNet shard index").get("weight_map", {})
        if name not in weight_map:
            return None
        path = path.parent / weight_map[name]
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(name) if name in f.keys() else None  # noqa: SIM118 (no __contains__)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_official(
    checkpoint: str | Path,
    base_model: str | Path,
    output: str | Path,
    force: bool = False,
    verify: bool = True,
) -> ConversionReport:
    """Convert ``oscar.pkl`` into the model directory ``output`` referencing ``base_model``.

    With ``verify`` the written directory is loaded once (base weights included) and its
    fingerprint is reported.
    """

    checkpoint, base, output = Path(checkpoint), Path(base_model).resolve(), Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not force:
        raise ConfigError(f"{output} exists and is not empty; pass --force to write into it")
    for sub in ("vae", "unet", "scheduler"):
        if not (base / sub).is_dir():
            raise ModelError(
                f"base model {base} has no {sub}/ folder; give the Stable Diffusion 2.1 "
                "diffusers folder (with vae/, unet/, scheduler/)"
            )
    vae_config = read_json(base / "vae" / "config.json", "VAE config")
    unet_config = read_json(base / "unet" / "config.json", "UNet config")
    scheduler_config = read_json(base / "scheduler" / SCHEDULER_FILE, "scheduler config")
    for what, cfg, cls in (
        ("VAE", vae_config, "AutoencoderKL"),
        ("UNet", unet_config, "UNet2DConditionModel"),
    ):
        if cfg.get("_class_name", cls) != cls:
            raise ModelError(
                f"base model {base}: the {what} config declares "
                f"{cfg.get('_class_name')}, expected {cls}"
            )

    ckpt = load_checkpoint(checkpoint)
    mapped = map_checkpoint(ckpt, vae_config, unet_config, scheduler_config, str(base))
    check_finite(mapped.parts, checkpoint)
    report = mapped.report

    codebooks = [v for k, v in mapped.parts.items() if k.endswith("quantizer.codebook")]
    report.codebook_norm_error = max(float((c.norm(dim=-1) - 1).abs().max()) for c in codebooks)
    if report.codebook_norm_error > 1e-3:
        report.notes.append(
            f"codebook rows are not unit-norm (max error {report.codebook_norm_error:.2e}); "
            "they are used normalised, as the original's cosine quantiser does"
        )
    base_conv_in = _base_tensor(base / "unet", "conv_in.weight")
    if base_conv_in is not None:
        ours = mapped.parts[OVERRIDE_PREFIX + "conv_in.weight"]
        report.conv_in_difference = float((ours.float() - base_conv_in.float()).abs().max())
        if report.conv_in_difference > 1e-3:
            report.notes.append(
                f"the checkpoint's conv_in differs from the base UNet's (max "
                f"{report.conv_in_difference:.3g}); the checkpoint's is used, as the original does"
            )

    if output.exists() and force:
        for sub in ("vae", "unet", "scheduler"):  # a model directory that had its own base
            if (output / sub).is_dir():
                shutil.rmtree(output / sub)
    base_configs = {
        "vae": public_config(vae_config),
        "unet": public_config(unet_config),
        "scheduler": public_config(scheduler_config),
    }
    source = {
        "converted_from": {
            "file": checkpoint.name,
            "sha256": _sha256(checkpoint),
            "layout": "jp-guo/OSCAR HEAD (2025-10-19)",
            "dropped": sorted(report.dropped),
        }
    }
    contiguous = {k: v.detach().float().contiguous() for k, v in mapped.parts.items()}
    write_model_files(output, mapped.config, contiguous, None, base_configs, source)
    logger.info("wrote %d tensors to %s", len(contiguous), output)
    if verify:
        report.fingerprint = load_model(output).fingerprint
    return report
