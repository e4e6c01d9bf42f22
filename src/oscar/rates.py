"""The rate table: which (token grid, codebook size, pseudo-timestep) each level uses.

A level codes the scaled VAE latent as a grid of vector-quantised indices, one token per
``grid_factor`` × ``grid_factor`` image pixels, each an index into a codebook of
``codebook_size`` entries. Fixed-length coding therefore costs ``log2(K) / f²`` bits per pixel
(the *nominal* rate, docs/method.md §2); the entropy coder usually does better, and the file's real
rate is always measured from its bytes.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace

from oscar.errors import ConfigError

# The VAE of every configuration downsamples the image by 8 (docs/method.md §1).
VAE_FACTOR = 8
ALLOWED_GRID_FACTORS = (8, 16, 32, 64)


@dataclass(frozen=True)
class RateLevel:
    """One rate level.

    Attributes:
        level: index of the level, written in every file.
        grid_factor: image pixels per token side (8, 16, 32 or 64).
        codebook_size: number of codewords K (2 or more).
        timestep: pseudo-timestep t at which the decoded latent is denoised in one step.
        cosine: measured mean cosine between decoded and true latents (docs/method.md §4),
            ``None`` until calibrated.
    """

    level: int
    grid_factor: int
    codebook_size: int
    timestep: int
    cosine: float | None = None

    def __post_init__(self) -> None:
        for name in ("level", "grid_factor", "codebook_size", "timestep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ConfigError(f"level {self.level!r}: {name} must be an integer, got {value!r}")
        if self.cosine is not None and (
            isinstance(self.cosine, bool)
            or not isinstance(self.cosine, numbers.Real)
            or not math.isfinite(self.cosine)
        ):
            raise ConfigError(f"level {self.level}: cosine must be a finite number or null")
        if not 0 <= self.level <= 255:
            raise ConfigError(f"level must be in 0..255, got {self.level}")
        if self.grid_factor not in ALLOWED_GRID_FACTORS:
            raise ConfigError(
                f"level {self.level}: grid_factor must be one of {ALLOWED_GRID_FACTORS}, "
                f"got {self.grid_factor}"
            )
        if not 2 <= self.codebook_size <= 65536:
            raise ConfigError(
                f"level {self.level}: codebook_size must be in 2..65536, got {self.codebook_size}"
            )
        if self.timestep < 0:
            raise ConfigError(f"level {self.level}: timestep must be >= 0, got {self.timestep}")

    @property
    def latent_downsample(self) -> int:
        """How much the hyper-analysis shrinks the latent: f / 8 (1, 2, 4 or 8)."""
        return self.grid_factor // VAE_FACTOR

    @property
    def num_stride2_stages(self) -> int:
        """Number of stride-2 stages in the hyper-analysis (0 to 3)."""
        return int(math.log2(self.latent_downsample))

    @property
    def bits_per_index(self) -> int:
        """Bits per token with fixed-length packing: ceil(log2 K)."""
        return max(1, math.ceil(math.log2(self.codebook_size)))

    @property
    def nominal_bpp(self) -> float:
        """Nominal rate log2(K) / f² in bits per pixel (payload only, no header)."""
        return math.log2(self.codebook_size) / self.grid_factor**2

    def fixed_payload_bytes(self, tokens: int) -> int:
        """Bytes of a fixed-length payload of ``tokens`` indices (the last byte zero-padded)."""
        return math.ceil(tokens * self.bits_per_index / 8)

    def token_grid(self, padded_height: int, padded_width: int) -> tuple[int, int]:
        """Token grid (h, w) for a padded image size; both sides must divide by ``grid_factor``."""
        if padded_height % self.grid_factor or padded_width % self.grid_factor:
            raise ValueError(
                f"padded size {padded_height}x{padded_width} is not a multiple of "
                f"{self.grid_factor}"
            )
        return padded_height // self.grid_factor, padded_width // self.grid_factor

    def with_calibration(self, cosine: float, timestep: int) -> RateLevel:
        return replace(self, cosine=float(cosine), timestep=int(timestep))


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """An image size rounded up to a multiple of ``multiple`` (images are padded bottom and right
    to the model's ``pad_multiple`` before encoding)."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


# The eight levels of docs/method.md §2, with the original release's hand-set timesteps as the
# starting point; `oscar calibrate` replaces them with measured values.
DEFAULT_LADDER: tuple[RateLevel, ...] = (
    RateLevel(0, 64, 256, 500),
    RateLevel(1, 32, 1024, 400),
    RateLevel(2, 16, 256, 310),
    RateLevel(3, 16, 2048, 280),
    RateLevel(4, 8, 16, 210),
    RateLevel(5, 8, 32, 190),
    RateLevel(6, 8, 64, 170),
    RateLevel(7, 8, 256, 150),
)


def validate_ladder(levels: tuple[RateLevel, ...]) -> None:
    """Check that level numbers are unique; order in the table is free."""
    seen = [lv.level for lv in levels]
    if not seen:
        raise ConfigError("the rate table is empty")
    if len(set(seen)) != len(seen):
        raise ConfigError(f"duplicate level numbers in the rate table: {seen}")


def nearest_level_by_bpp(levels: tuple[RateLevel, ...], bpp: float) -> RateLevel:
    """The level whose nominal rate is nearest to ``bpp`` (ties go to the lower rate)."""
    if not bpp > 0:
        raise ConfigError(f"--bpp must be positive, got {bpp}")
    lo = min(lv.nominal_bpp for lv in levels)
    hi = max(lv.nominal_bpp for lv in levels)
    if not lo / BPP_TOLERANCE <= bpp <= hi * BPP_TOLERANCE:
        raise ConfigError(
            f"--bpp {bpp:g} is outside this model's range, {lo:.4g} to {hi:.4g} bpp (nominal; "
            f"10 % either side is accepted): use --level, or --max-bytes for a size limit"
        )
    return min(levels, key=lambda lv: (abs(lv.nominal_bpp - bpp), lv.nominal_bpp))


# How far outside the nominal range a --bpp may lie and still pick the nearest level.
BPP_TOLERANCE = 1.1
