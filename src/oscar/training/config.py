"""Training recipes: YAML or JSON, validated into dataclasses; every field is used.

A recipe names the starting model and a list of stages that run in order, each starting from the
model the previous stage wrote::

    model: configs/small.json          # architecture to initialise (or init_from: MODEL_DIR)
    output_dir: runs/small
    seed: 0
    data: {train: [data/train], validation: [data/heldout], patch_size: 128}
    stages:
      - {kind: vae, steps: 4000, batch_size: 16, lr: 2.0e-4}
      - {kind: diffusion, steps: 6000, batch_size: 32, lr: 1.0e-4}
      - {kind: hyper, steps: 3000, batch_size: 16, lr: 3.0e-4}
      - {kind: calibrate}
      - {kind: joint, steps: 3000, batch_size: 8, lr: 5.0e-5}
      - {kind: priors}

Stage kinds (docs/method.md §4-5): ``vae`` and ``diffusion`` (stage 0, models trained from scratch),
``hyper`` (stage 1), ``calibrate``, ``joint`` (stage 2), ``decoder`` (refines the VAE decoder
alone, oscar.training.stages.decoder), ``priors``, and ``add_level`` (adds a new rate level whose
hyper-coder the next ``hyper`` stage trains).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

from oscar.config import VaeDecoderConfig
from oscar.errors import ConfigError

StageKind = Literal[
    "vae", "diffusion", "hyper", "calibrate", "joint", "decoder", "priors", "add_level"
]
TRAINING_KINDS = ("vae", "diffusion", "hyper", "joint", "decoder")
PerceptualKind = Literal["lpips_vgg", "lpips_alex", "dists", "ms_ssim", "none"]


def _build(cls: type, data: Any, where: str) -> Any:
    """Instantiate a dataclass from a dict, refusing unknown keys (nested dataclasses too)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown field(s) in {where}: {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        nested = _NESTED.get((cls.__name__, name))
        kwargs[name] = _build(nested, value, f"{where}.{name}") if nested else value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


@dataclass(frozen=True)
class DataConfig:
    """Image folders and how training crops are drawn from them."""

    train: tuple[str, ...] = ()
    validation: tuple[str, ...] = ()
    patch_size: int = 128
    num_workers: int = 2
    cache_images: bool = True
    max_validation_images: int = 8
    colour_augment: bool = False  # permute colour channels and scale saturation (data.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", tuple(self.train))
        object.__setattr__(self, "validation", tuple(self.validation))
        if self.patch_size < 16 or self.patch_size % 16:
            raise ConfigError(f"data.patch_size must be a multiple of 16, got {self.patch_size}")
        if self.num_workers < 0:
            raise ConfigError("data.num_workers must be >= 0")


LossPreset = Literal["ours", "paper"]

# The weights and forms each preset gives the fields a recipe leaves out (docs/method.md §5-6).
# ``paper`` is the original release's stage-2 loss (stage 1: its per-position cosine, no VQ term
# but the codebook update) with one deliberate exception: the generator receives the adversarial
# gradient, which the original's discriminator (features under no_grad) never passed on.
LOSS_PRESETS: dict[str, dict[str, Any]] = {
    "ours": {
        "l1": 1.0,
        "perceptual": 1.0,
        "perceptual_kind": "lpips_vgg",
        "perceptual_fallback": "ms_ssim",
        "edge_perceptual": 1.0,
        "cosine": 2.0,
        "commitment": 1.0,
        "codebook": 0.0,
        "adversarial": 5.0e-3,
        "discriminator": 1.0,
        "discriminator_timesteps": (0, 500),
    },
    "paper": {
        "l1": 1.0,
        "perceptual": 1.0,
        "perceptual_kind": "dists",
        "perceptual_fallback": "none",
        "edge_perceptual": 1.0,
        "cosine": 2.0,
        "commitment": 0.0,
        "codebook": 1.0,
        "adversarial": 5.0e-3,
        "discriminator": 1.0e-2,
        "discriminator_timesteps": (20, 980),
    },
}


LATENT_WEIGHTINGS = ("uniform", "energy")
LATENT_SCALES = ("channel", "global")


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and forms; which ones a stage reads is listed in its docstring.

    ``preset`` picks the forms of the terms and the defaults of every field left out (None):

    - ``ours``: L1 on [-1, 1] images, LPIPS-VGG (``perceptual_fallback`` MS-SSIM when its weights
      are absent, logged), the perceptual distance between per-channel RGB Sobel maps, 1 − cosine
      over the whole latent, the VQ-VAE codebook + commitment term, hinge adversarial losses,
      discriminator timesteps in [0, 500).
    - ``paper``: the original release's terms (docs/method.md §5, §6.2): L1 on [0, 1] images,
      DISTS (no fallback: missing weights are an error), DISTS between grey Sobel-magnitude maps,
      1 − the per-channel latent cosine (stage 2) or the per-position one (stage 1), no
      commitment term (the codebook term alone stands in for the original's EMA codebook
      update), generator loss softplus(−D), discriminator loss ``discriminator``·BCE,
      discriminator timesteps in [20, 980). Unlike the original, the generator does receive the
      adversarial gradient.

    ``commitment`` weighs the whole VQ-VAE term (codebook + β·commitment), ``codebook`` its
    codebook part alone; ``discriminator`` scales the discriminator's loss.
    """

    preset: LossPreset = "ours"
    l1: float | None = None
    mse: float = 0.0  # vae stage: mean squared error on [-1, 1] images
    lowpass: float = 0.0  # vae stage: L1 between 8x8 block means (guards colour)
    perceptual: float | None = None
    perceptual_kind: PerceptualKind | None = None
    perceptual_fallback: PerceptualKind | None = None
    edge_perceptual: float | None = None
    kl: float = 1.0e-6
    cosine: float | None = None
    # hyper and joint stages: the space of the latent cosine. "uniform": the latent as the UNet
    # sees it (each channel of a per-channel-scaled autoencoder weighs the same); "energy": the
    # latent divided by its per-channel scale, so each channel weighs as much as it moves pixels
    latent_weighting: str = "uniform"
    commitment: float | None = None
    codebook: float | None = None
    adversarial: float | None = None
    adversarial_start: int = 0
    discriminator: float | None = None
    discriminator_timesteps: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.preset not in LOSS_PRESETS:
            raise ConfigError(f"loss preset must be one of {', '.join(LOSS_PRESETS)}")
        if self.latent_weighting not in LATENT_WEIGHTINGS:
            raise ConfigError(
                f"latent_weighting must be one of {', '.join(LATENT_WEIGHTINGS)}, "
                f"got {self.latent_weighting!r}"
            )
        for name, value in LOSS_PRESETS[self.preset].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        lo_hi = self.discriminator_timesteps
        if not (
            isinstance(lo_hi, (list, tuple))
            and len(lo_hi) == 2
            and all(isinstance(t, int) for t in lo_hi)
            and 0 <= lo_hi[0] < lo_hi[1] <= 1000
        ):
            raise ConfigError(
                f"discriminator_timesteps must be [low, high) with 0 <= low < high <= 1000, "
                f"got {lo_hi!r}"
            )
        object.__setattr__(self, "discriminator_timesteps", tuple(lo_hi))


def check_fingerprint_field(value: object, name: str) -> None:
    """A recipe's expected fingerprint: 8 to 64 lowercase hex digits, as a string."""
    if value is None:
        return
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{8,64}", value):
        raise ConfigError(
            f"{name} must be 8 to 64 lowercase hex digits, in quotes in YAML (the model "
            f"fingerprint `oscar info --model DIR` prints), got {value!r}"
        )


@dataclass(frozen=True)
class StageConfig:
    """One stage. Training stages (vae, diffusion, hyper, joint) use the optimisation fields."""

    kind: StageKind
    steps: int = 0
    batch_size: int = 8
    lr: float = 1.0e-4
    discriminator_lr: float = 1.0e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"
    grad_clip: float = 1.0
    grad_accumulation: int = 1
    ema_decay: float | None = None
    levels: tuple[int, ...] | Literal["all"] = "all"
    patch_size: int | None = None
    train_unet: Literal["full", "lora", "frozen"] = "full"
    loss: LossConfig = field(default_factory=LossConfig)
    dead_code_interval: int = 100
    # vae with a PatchAutoencoder only: start the linear path at the block PCA of training crops
    pca_init: bool = False
    # vae with a PatchAutoencoder only: "channel" gives every latent channel unit variance;
    # "global" one factor for all, so the channels keep their pixel energy (and the latent its
    # unit variance overall); pair it with the model's latent_rescale: "global"
    latent_scale: str = "channel"  # one of LATENT_SCALES
    # decoder only: share of steps that decode the encoder's latents (the rest: codec latents)
    clean_latent_fraction: float = 0.5
    # decoder only: a new decoder architecture (oscar.config.VaeDecoderConfig) trained from the
    # input model's decoder where tensor names and shapes agree
    vae_decoder: VaeDecoderConfig | None = None
    # decoder only: targets are a teacher decoder's outputs, not the crops
    # (oscar.training.stages.decoder): true for the input model's decoder, or a model directory
    # (same encoder)
    distill: bool | str = False
    # decoder with distill only: per-sample, per-channel jitter of the decoded latents
    # (oscar.training.stages.decoder): a shift of latent_shift · N(0, 1) · the channel's spatial
    # std, a scale of exp(latent_log_scale · N(0, 1))
    latent_shift: float = 0.0
    latent_log_scale: float = 0.0
    # decoder with a distill directory only: the fingerprint (hex, as `oscar info --model DIR`
    # prints it, or a prefix) the teacher must have; a recipe tied to particular weights
    # refuses others
    distill_fingerprint: str | None = None
    # add_level only
    grid_factor: int | None = None
    codebook_size: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in get_args(StageKind):
            raise ConfigError(f"unknown stage kind {self.kind!r}")
        if isinstance(self.levels, list):
            object.__setattr__(self, "levels", tuple(self.levels))
        if self.kind in TRAINING_KINDS:
            if self.steps < 1:
                raise ConfigError(f"stage {self.kind}: steps must be >= 1")
            if self.batch_size < 1 or self.grad_accumulation < 1:
                raise ConfigError(f"stage {self.kind}: batch_size and grad_accumulation >= 1")
            if self.lr <= 0:
                raise ConfigError(f"stage {self.kind}: lr must be > 0")
        if self.loss.preset != "ours" and self.kind not in ("hyper", "joint"):
            raise ConfigError(
                f"stage {self.kind}: loss preset {self.loss.preset!r} is for the hyper and joint "
                "stages only"
            )
        if self.kind == "add_level" and (self.grid_factor is None or self.codebook_size is None):
            raise ConfigError("stage add_level needs grid_factor and codebook_size")
        if isinstance(self.vae_decoder, dict):
            object.__setattr__(self, "vae_decoder", VaeDecoderConfig.from_dict(self.vae_decoder))
        if self.vae_decoder is not None and self.kind != "decoder":
            raise ConfigError(f"stage {self.kind}: vae_decoder is for the decoder stage only")
        if not isinstance(self.distill, (bool, str)) or self.distill == "":
            raise ConfigError("distill must be true, false or a model directory")
        if self.distill and self.kind != "decoder":
            raise ConfigError(f"stage {self.kind}: distill is for the decoder stage only")
        if self.pca_init and self.kind != "vae":
            raise ConfigError(f"stage {self.kind}: pca_init is for the vae stage only")
        if self.latent_scale not in LATENT_SCALES:
            raise ConfigError(
                f"latent_scale must be one of {', '.join(LATENT_SCALES)}, got {self.latent_scale!r}"
            )
        if self.latent_scale != "channel" and self.kind != "vae":
            raise ConfigError(f"stage {self.kind}: latent_scale is for the vae stage only")
        if self.latent_shift < 0 or self.latent_log_scale < 0:
            raise ConfigError("latent_shift and latent_log_scale must be >= 0")
        if (self.latent_shift or self.latent_log_scale) and not self.distill:
            raise ConfigError(
                "latent_shift and latent_log_scale need distill: a jittered latent has no crop to"
                " match, only a teacher's decoding"
            )
        check_fingerprint_field(self.distill_fingerprint, "distill_fingerprint")
        if self.distill_fingerprint is not None and not isinstance(self.distill, str):
            raise ConfigError("distill_fingerprint needs distill to name a model directory")
        if not 0.0 <= self.clean_latent_fraction <= 1.0:
            raise ConfigError("clean_latent_fraction must be in [0, 1]")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError("ema_decay must be in (0, 1)")

    @property
    def name(self) -> str:
        return self.kind


@dataclass(frozen=True)
class TrainConfig:
    """A whole recipe."""

    output_dir: str
    stages: tuple[StageConfig, ...]
    model: str | None = None
    init_from: str | None = None
    # the fingerprint (hex prefix) init_from must have; see StageConfig.distill_fingerprint
    init_fingerprint: str | None = None
    base_model: str | None = None
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    validate_every: int = 0
    log_every: int = 20
    weights_dir: str | None = None

    def __post_init__(self) -> None:
        if (self.model is None) == (self.init_from is None):
            raise ConfigError("give exactly one of `model` (architecture) or `init_from` (model)")
        if not self.stages:
            raise ConfigError("the recipe has no stages")
        check_fingerprint_field(self.init_fingerprint, "init_fingerprint")
        if self.init_fingerprint is not None and self.init_from is None:
            raise ConfigError("init_fingerprint needs init_from")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ConfigError("checkpoint_every and log_every must be >= 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        stages = data.pop("stages", None)
        if not isinstance(stages, list):
            raise ConfigError("`stages` must be a list")
        data["stages"] = tuple(_build(StageConfig, s, f"stages[{i}]") for i, s in enumerate(stages))
        if "data" in data:
            data["data"] = _build(DataConfig, data["data"], "data")
        return _build_top(data)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml  # lazy: the train extra, which may be absent (JSON needs none)

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # yaml.YAMLError or JSONDecodeError
            raise ConfigError(f"{path} is not valid YAML/JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping")
        config = cls.from_dict(data)
        return config.resolve_paths(path.parent)

    def resolve_paths(self, base: Path) -> TrainConfig:
        """Make relative paths relative to the recipe file's folder... unless they exist as given.

        Paths that exist relative to the working directory are kept, so recipes in configs/
        can say `configs/small.json` when run from the project root.
        """

        def fix(p: str | None) -> str | None:
            if p is None or Path(p).is_absolute() or Path(p).exists():
                return p
            candidate = base / p
            return str(candidate) if candidate.exists() else p

        data = replace(
            self.data,
            train=tuple(fix(p) for p in self.data.train),
            validation=tuple(fix(p) for p in self.data.validation),
        )
        return replace(
            self,
            model=fix(self.model),
            init_from=fix(self.init_from),
            base_model=fix(self.base_model),
            weights_dir=fix(self.weights_dir),
            data=data,
        )


_NESTED = {("StageConfig", "loss"): LossConfig, ("TrainConfig", "data"): DataConfig}


def _build_top(data: dict[str, Any]) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown field(s) in recipe: {', '.join(unknown)}")
    try:
        return TrainConfig(**data)
    except TypeError as exc:
        raise ConfigError(f"recipe: {exc}") from exc
