"""Model architecture configuration: dataclasses, validated, JSON in and out.

One JSON file describes a whole model (``configs/tiny.json``, ``configs/small.json``,
``configs/sd21.json``)::

    {
      "name": "tiny",
      "vae": {...},          # diffusers AutoencoderKL config, used as is
      "unet": {...},         # diffusers UNet2DConditionModel config, used as is
      "scheduler": {...},    # diffusers scheduler config: beta schedule and prediction_type
      "hyper": {"hidden_channels": 192, "feature_channels": 320, "codebook_dim": 32},
      "prompt_length": 77,
      "levels": [{"level": 0, "grid_factor": 64, "codebook_size": 256, "timestep": 500}, ...],
      "lora": null,          # or {"rank": 16, "alpha": 8, "target_modules": [...]}
      "vae_decoder": null    # or {"block_out_channels": [32, 64, 128], "layers_per_block": 0,
                             #     "pixel_shuffle": 2}: a lighter VAE decoder (VaeDecoderConfig)
    }

Unknown keys are an error everywhere: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from oscar.errors import ConfigError
from oscar.filetypes import open_regular_file
from oscar.limits import MAX_METADATA_BYTES
from oscar.rates import DEFAULT_LADDER, VAE_FACTOR, RateLevel, padded_size, validate_ladder


def _check_keys(kind: str, data: dict[str, Any], allowed: set[str], required: set[str]) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{kind} must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"unknown {kind} field(s): {', '.join(unknown)}")
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"missing {kind} field(s): {', '.join(missing)}")


@dataclass(frozen=True)
class HyperConfig:
    """Widths of the per-level hyper-coders (docs/method.md §3; the original: N=192, M=320,
    d=32)."""

    hidden_channels: int = 192
    feature_channels: int = 320
    codebook_dim: int = 32

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or value < 2:
                raise ConfigError(f"hyper.{f.name} must be an integer >= 2, got {value!r}")
        for name in ("hidden_channels", "feature_channels"):
            if getattr(self, name) % 2:
                raise ConfigError(f"hyper.{name} must be even (bottleneck blocks halve it)")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HyperConfig:
        names = {f.name for f in fields(cls)}
        _check_keys("hyper", data, names, set())
        return cls(**data)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA on the UNet (peft). ``None`` in a config means the UNet itself is trained."""

    rank: int = 16
    alpha: float = 8.0
    target_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora.rank must be >= 1, got {self.rank}")
        if not self.target_modules:
            raise ConfigError("lora.target_modules must name at least one module")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraSettings:
        _check_keys("lora", data, {"rank", "alpha", "target_modules"}, {"target_modules"})
        data = dict(data)
        data["target_modules"] = tuple(data["target_modules"])
        return cls(**data)


@dataclass(frozen=True)
class VaeDecoderConfig:
    """A VAE decoder of its own widths and depth, replacing the one AutoencoderKL builds
    (oscar.models.vae_decoder). AutoencoderKL gives its encoder and decoder the same widths and
    depth; the decoder is most of a one-step decode on CPU (BENCHMARKS.md), so a model trained
    from scratch may want a lighter one. diffusers' ``Decoder`` with these ``block_out_channels``
    (lowest resolution last, as in AutoencoderKL) and ``layers_per_block``, whose output has
    ``3 · pixel_shuffle²`` channels rearranged into ``pixel_shuffle × pixel_shuffle`` pixels
    (depth-to-space): the last blocks then work below full resolution. ``layers_per_block`` is
    one number for every block (as in diffusers) or a list with one per block, in the order of
    ``block_out_channels``; a block has that many ResNet blocks plus one, as in diffusers.
    Norm groups, activation and mid-block attention come from the VAE's config."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int | tuple[int, ...]
    pixel_shuffle: int = 1

    def __post_init__(self) -> None:
        channels = self.block_out_channels
        if not isinstance(channels, tuple) or not channels:
            raise ConfigError("vae_decoder.block_out_channels must be a non-empty list")
        for c in channels:
            # Bounded: a config must not decide how much memory a model takes (safe_build).
            if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= 4096:
                raise ConfigError(f"vae_decoder.block_out_channels: {c!r} is not in 1..4096")
        lpb = self.layers_per_block
        if isinstance(lpb, tuple) and len(lpb) != len(channels):
            raise ConfigError(
                f"vae_decoder.layers_per_block has {len(lpb)} entries for {len(channels)} blocks"
            )
        for d in self.depths:
            if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 8:
                raise ConfigError(f"vae_decoder.layers_per_block must be in 0..8, got {d!r}")
        ps = self.pixel_shuffle
        if isinstance(ps, bool) or not isinstance(ps, int) or ps not in (1, 2, 4, 8):
            raise ConfigError(
                f"vae_decoder.pixel_shuffle must be 1, 2, 4 or 8, got {self.pixel_shuffle!r}"
            )
        scale = 2 ** (len(channels) - 1) * self.pixel_shuffle
        if scale != VAE_FACTOR:
            raise ConfigError(
                f"vae_decoder upsamples {scale}x (2^(blocks-1) x pixel_shuffle), the latent "
                f"needs {VAE_FACTOR}x"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VaeDecoderConfig:
        keys = {"block_out_channels", "layers_per_block", "pixel_shuffle"}
        _check_keys("vae_decoder", data, keys, {"block_out_channels", "layers_per_block"})
        data = dict(data)
        if not isinstance(data["block_out_channels"], list):
            raise ConfigError("vae_decoder.block_out_channels must be a list")
        data["block_out_channels"] = tuple(data["block_out_channels"])
        if isinstance(data["layers_per_block"], list):
            data["layers_per_block"] = tuple(data["layers_per_block"])
        return cls(**data)

    @property
    def depths(self) -> tuple[int, ...]:
        """``layers_per_block`` for each block, in the order of ``block_out_channels``."""
        lpb = self.layers_per_block
        return lpb if isinstance(lpb, tuple) else (lpb,) * len(self.block_out_channels)

    def to_dict(self) -> dict[str, Any]:
        lpb = self.layers_per_block
        return {
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": list(lpb) if isinstance(lpb, tuple) else lpb,
            "pixel_shuffle": self.pixel_shuffle,
        }


_LEVEL_KEYS = {"level", "grid_factor", "codebook_size", "timestep", "cosine"}


def level_from_dict(data: dict[str, Any]) -> RateLevel:
    _check_keys("level", data, _LEVEL_KEYS, {"level", "grid_factor", "codebook_size", "timestep"})
    return RateLevel(**data)


def level_to_dict(level: RateLevel) -> dict[str, Any]:
    return asdict(level)


LATENT_RESCALES = ("channel", "global")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build an OSCAR model with random weights.

    ``vae``, ``unet`` and ``scheduler`` are diffusers configs passed to the diffusers classes
    unchanged. ``base_model`` names a local diffusers folder whose ``vae/``, ``unet/`` and
    ``scheduler/`` replace the model directory's own (used for Stable Diffusion 2.1).
    ``vae_decoder`` replaces the decoder AutoencoderKL builds from ``vae`` (None: keep it).
    ``latent_rescale`` says how the decoder sizes the coarse latent from the transmitted
    per-channel RMS (oscar.models.norms): ``"channel"`` each channel to its own RMS,
    ``"global"`` the whole latent by one gain to their total, for latents whose channels differ
    in energy (a PatchAutoencoder with one latent scale for all channels).
    """

    name: str
    vae: dict[str, Any]
    unet: dict[str, Any]
    scheduler: dict[str, Any]
    hyper: HyperConfig = field(default_factory=HyperConfig)
    prompt_length: int = 77
    levels: tuple[RateLevel, ...] = DEFAULT_LADDER
    lora: LoraSettings | None = None
    base_model: str | None = None
    vae_decoder: VaeDecoderConfig | None = None
    latent_rescale: str = "channel"

    def __post_init__(self) -> None:
        validate_ladder(self.levels)
        if self.latent_rescale not in LATENT_RESCALES:
            raise ConfigError(
                f"latent_rescale must be one of {', '.join(LATENT_RESCALES)}, "
                f"got {self.latent_rescale!r}"
            )
        if isinstance(self.prompt_length, bool) or not isinstance(self.prompt_length, int):
            raise ConfigError(f"prompt_length must be an integer, got {self.prompt_length!r}")
        if self.prompt_length < 1:
            raise ConfigError(f"prompt_length must be >= 1, got {self.prompt_length}")
        if self.base_model is not None and not isinstance(self.base_model, str):
            raise ConfigError(f"base_model must be a path or null, got {self.base_model!r}")
        steps = self.scheduler.get("num_train_timesteps", 1000)
        # Bounded: the schedule's arrays have this length (SD uses 1000).
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 100_000:
            raise ConfigError(f"scheduler.num_train_timesteps must be in 1..100000, got {steps!r}")
        for lv in self.levels:
            if lv.timestep >= steps:
                raise ConfigError(
                    f"level {lv.level}: timestep {lv.timestep} is outside the schedule's "
                    f"{steps} steps"
                )
        latent = self.vae.get("latent_channels", 4)
        if isinstance(latent, bool) or not isinstance(latent, int) or not 1 <= latent <= 64:
            # A file carries one norm per channel, at most 64 (docs/format.md).
            raise ConfigError(f"vae.latent_channels must be an integer in 1..64, got {latent!r}")
        for key in ("in_channels", "out_channels"):
            if self.unet.get(key, 4) != latent:
                raise ConfigError(f"unet.{key} must equal vae.latent_channels ({latent})")
        if self.vae_decoder is not None and self.base_model is not None:
            # A base folder's vae/ holds the base's own decoder weights.
            raise ConfigError("vae_decoder cannot be combined with base_model")
        prediction = self.scheduler.get("prediction_type", "epsilon")
        if prediction not in ("epsilon", "v_prediction", "sample"):
            raise ConfigError(f"unsupported scheduler.prediction_type {prediction!r}")

    # ----------------------------------------------------------------------------- access
    def level(self, level: int) -> RateLevel:
        for lv in self.levels:
            if lv.level == level:
                return lv
        known = ", ".join(str(lv.level) for lv in self.levels)
        raise ConfigError(f"level {level} is not in this model's rate table (levels: {known})")

    @property
    def level_numbers(self) -> tuple[int, ...]:
        return tuple(lv.level for lv in self.levels)

    @property
    def cross_attention_dim(self) -> int:
        dim = self.unet.get("cross_attention_dim", 1280)
        if isinstance(dim, (list, tuple)):
            raise ConfigError("per-block cross_attention_dim is not supported")
        return int(dim)

    @property
    def unet_downsample(self) -> int:
        """Latent downsampling inside the UNet: 2 ** (number of down blocks − 1)."""
        return 2 ** (len(self.unet.get("down_block_types", ())) - 1)

    @property
    def pad_multiple(self) -> int:
        """Images are padded to a multiple of this: every level's grid factor and the UNet's
        downsampling divide it (64 for the default ladder), so one latent serves all levels."""
        return math.lcm(*(lv.grid_factor for lv in self.levels), VAE_FACTOR * self.unet_downsample)

    def token_grid(self, height: int, width: int, level: int) -> tuple[int, int]:
        """Token grid (h, w) of ``level`` for an original image size."""
        return self.level(level).token_grid(*padded_size(height, width, self.pad_multiple))

    # ----------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        data = {
            "name": self.name,
            "vae": self.vae,
            "unet": self.unet,
            "scheduler": self.scheduler,
            "hyper": asdict(self.hyper),
            "prompt_length": self.prompt_length,
            "levels": [level_to_dict(lv) for lv in self.levels],
            "lora": None
            if self.lora is None
            else {
                "rank": self.lora.rank,
                "alpha": self.lora.alpha,
                "target_modules": list(self.lora.target_modules),
            },
            "base_model": self.base_model,
        }
        # Only when set: models without it keep their oscar.json and their fingerprint.
        if self.vae_decoder is not None:
            data["vae_decoder"] = self.vae_decoder.to_dict()
        if self.latent_rescale != "channel":
            data["latent_rescale"] = self.latent_rescale
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        allowed = {f.name for f in fields(cls)}
        _check_keys("model config", data, allowed, {"name", "vae", "unet", "scheduler"})
        data = dict(data)
        for key in ("vae", "unet", "scheduler"):
            if not isinstance(data[key], dict):
                raise ConfigError(f"{key} must be a JSON object")
        if "hyper" in data:
            data["hyper"] = HyperConfig.from_dict(data["hyper"])
        if "levels" in data:
            if not isinstance(data["levels"], list):
                raise ConfigError("levels must be a list")
            data["levels"] = tuple(level_from_dict(d) for d in data["levels"])
        if data.get("lora") is not None:
            data["lora"] = LoraSettings.from_dict(data["lora"])
        if data.get("vae_decoder") is not None:
            data["vae_decoder"] = VaeDecoderConfig.from_dict(data["vae_decoder"])
        try:
            return cls(**data)
        except TypeError as exc:  # a wrong value type reaching a dataclass check
            raise ConfigError(f"invalid model config: {exc}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            with open_regular_file(path, ConfigError) as f:
                text = f.read(MAX_METADATA_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        if len(text) > MAX_METADATA_BYTES:
            raise ConfigError(f"config {path} is larger than {MAX_METADATA_BYTES} bytes")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # also bad UTF-8, huge integers, deep nesting
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def replace_levels(self, levels: tuple[RateLevel, ...]) -> ModelConfig:
        return replace(self, levels=tuple(sorted(levels, key=lambda lv: lv.level)))
