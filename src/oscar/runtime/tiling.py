"""Large images by tiles: VAE encoder, UNet and VAE decoder over overlapping tiles, blended.

::

    latent grid (h × w) ─split─► overlapping tiles T × T (starts aligned) ─network─► tile outputs
        ─× weights (a partition of unity: linear ramps across each overlap, 1 elsewhere)─► sum

Tiles are laid out on the latent grid; the encoder reads 8T × 8T image pixels per tile and the
decoder writes them. Every output pixel is a weighted average of the tiles covering it, with
weights that fall linearly to zero towards a tile's inner edges, so a tile's border (where its
convolutions saw zero padding instead of the neighbouring content) barely counts and no seam is
left. Tile starts are multiples of the network's downsampling (the UNet's 8 for Stable
Diffusion), so every tile sees the same sampling phase as the whole image.

Tiling is a decoder-side and encoder-side choice, not part of the file: the decoder needs only
indices and side information, so a file made with or without tiles decodes either way. Tiling
changes the networks' outputs (each tile normalises its own GroupNorm statistics and attends only
within itself), so a tiled encoder may pick some other indices; the files stay valid and
interchangeable. Larger tiles stay closer to the untiled result. ``benchmarks/tiling.md`` records
the differences; global GroupNorm statistics would remove most of the VAE's share but need one
pass over all tiles per normalisation layer, which we do not pay.

Why not ``AutoencoderKL.enable_tiling()``: its tile size is the config's ``sample_size`` (768 px
for SD 2.1) rather than a memory budget, it blends each tile only into its upper and left
neighbours (the result depends on scan order), it has no counterpart for the UNet, and at equal
tile sizes it lands further from the untiled output than the blending here (benchmarks/tiling.md).

Memory: :func:`plan_tiling` picks, for a budget in bytes, the largest tiles whose *estimated*
working memory fits (largest: closest to untiled), from per-stage estimates (channels × pixels of
the widest stage times a factor measured on CPU, see ``ACTIVATION_FACTOR``) plus the untiled work
(image buffers, hyper-coder). The budget counts memory used on top of the loaded weights. Tile
sizes never depend on the machine, only on the options, so encoding stays deterministic.
``--tile-size`` caps tiles for speed: self-attention costs grow with the square of the tile area.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from oscar.errors import ConfigError
from oscar.limits import parse_memory  # noqa: F401  (re-exported: callers import it from here)
from oscar.rates import VAE_FACTOR
from oscar.runtime import stages


@dataclass(frozen=True)
class StageTiles:
    """Tiles of one network, in latent positions: side ``size``, at least ``overlap`` shared."""

    size: int
    overlap: int

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.overlap < self.size:
            raise ConfigError(f"invalid tiles: size {self.size}, overlap {self.overlap}")


@dataclass(frozen=True)
class Tiling:
    """Which networks run by tiles (``None``: whole)."""

    encoder: StageTiles | None = None
    unet: StageTiles | None = None
    decoder: StageTiles | None = None

    @property
    def active(self) -> bool:
        return any(t is not None for t in (self.encoder, self.unet, self.decoder))


# ----------------------------------------------------------------------------- layout
def tile_starts(length: int, size: int, overlap: int, align: int = 1) -> list[int]:
    """Starts of tiles of ``size`` covering [0, length), overlapping by >= ``overlap``.

    ``length`` and ``size`` must be multiples of ``align``; starts are multiples of it, spread
    evenly, first at 0 and last at ``length - size``.
    """
    if size >= length:
        return [0]
    if length % align or size % align:
        raise ValueError(f"length {length} and size {size} must be multiples of {align}")
    n_len, n_size, n_overlap = length // align, size // align, -(-overlap // align)
    stride = max(1, n_size - n_overlap)
    count = -(-(n_len - n_size) // stride) + 1
    span = n_len - n_size
    return [align * round(i * span / (count - 1)) for i in range(count)]


def axis_weights(starts: list[int], size: int, length: int, scale: int) -> list[torch.Tensor]:
    """Per-tile 1-D blending weights at output resolution (``scale`` pixels per position).

    Linear ramps across each overlap with the neighbouring tile, 1 elsewhere, then normalised so
    that the weights of all tiles sum to 1 at every pixel.
    """
    size = min(size, length)
    ends = [s + size for s in starts]
    raw = []
    for i, (a, b) in enumerate(zip(starts, ends, strict=True)):
        p = torch.arange(a * scale, b * scale, dtype=torch.float64) + 0.5
        w = torch.ones_like(p)
        if i > 0:
            w = torch.minimum(w, (p - a * scale) / ((ends[i - 1] - a) * scale))
        if i < len(starts) - 1:
            w = torch.minimum(w, (b * scale - p) / ((b - starts[i + 1]) * scale))
        raw.append(w)
    total = torch.zeros(length * scale, dtype=torch.float64)
    for a, w in zip(starts, raw, strict=True):
        total[a * scale : a * scale + w.numel()] += w
    return [
        (w / total[a * scale : a * scale + w.numel()]).to(torch.float32)
        for a, w in zip(starts, raw, strict=True)
    ]


def tiled_map(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tiles: StageTiles | None,
    in_scale: int = 1,
    out_scale: int = 1,
    align: int = 1,
) -> torch.Tensor:
    """Apply ``fn`` to overlapping tiles of ``x`` and blend; returns float32.

    ``x`` has ``in_scale`` pixels per latent position and ``fn``'s output ``out_scale``
    (encoder 8 → 1, UNet 1 → 1, decoder 1 → 8). With ``tiles`` None, or tiles covering the whole
    input, this is ``fn(x)`` exactly.
    """
    h, w = x.shape[-2] // in_scale, x.shape[-1] // in_scale
    if tiles is None or (tiles.size >= h and tiles.size >= w):
        return fn(x).float()
    ys, xs = (tile_starts(n, tiles.size, tiles.overlap, align) for n in (h, w))
    th, tw = min(tiles.size, h), min(tiles.size, w)
    wy = [v.to(x.device) for v in axis_weights(ys, tiles.size, h, out_scale)]
    wx = [v.to(x.device) for v in axis_weights(xs, tiles.size, w, out_scale)]
    out: torch.Tensor | None = None
    for i, y0 in enumerate(ys):
        for j, x0 in enumerate(xs):
            iy, ix = y0 * in_scale, x0 * in_scale
            tile = x[..., iy : iy + th * in_scale, ix : ix + tw * in_scale]
            stages.progress("tile", i * len(xs) + j + 1, len(ys) * len(xs))
            result = fn(tile).float()
            if out is None:
                shape = (*result.shape[:-2], h * out_scale, w * out_scale)
                out = torch.zeros(shape, dtype=torch.float32, device=result.device)
            weight = wy[i][:, None] * wx[j][None, :]
            region = out[
                ..., y0 * out_scale : (y0 + th) * out_scale, x0 * out_scale : (x0 + tw) * out_scale
            ]
            region.add_(result * weight if torch.is_grad_enabled() else result.mul_(weight))
            del result
    assert out is not None
    return out


# ----------------------------------------------------------------------------- memory estimates
# Working memory of one pass ≈ (ACTIVATION_FACTOR × elements of the widest activation + one copy
# of the largest convolution weight) × bytes per element. Checked on CPU (peak RSS above the
# loaded model, float32) for the small and Stable Diffusion 2.1 VAE and UNet configs at several
# tile sizes, with a margin (benchmarks/tiling.md).
ACTIVATION_FACTOR = {"encoder": 6.0, "decoder": 6.0, "unet": 8.0, "hyper": 6.0}
# Per pass, whatever the size: kernel scratch space, thread buffers (measured: 15-50 MiB on CPU).
RUNTIME_OVERHEAD = 64 * 2**20
# Full-size buffers of one image, in float32 copies of the 3-channel image: encoding holds the
# padded input and a temporary of its conversion; decoding the blending accumulator and two
# temporaries of the conversion to 8 bits (measured, 4K on CPU: benchmarks/tiling.md).
IMAGE_COPIES = {"encode": 3.0, "decode": 3.0}


def _widest(stages: list[tuple[int, int]]) -> int:
    """max over (channels, positions) of channels × positions."""
    return max(c * p for c, p in stages)


def _is_patch_autoencoder(vae: dict[str, Any]) -> bool:
    return vae.get("_class_name") == "PatchAutoencoder"


def _patch_widest(vae: dict[str, Any], part: str) -> int:
    """Widest activation of a PatchAutoencoder part, in channels per latent position: the
    192 values of a block, a branch's width at 1/8, or the decoder's pixel branch at 1/2 (16
    positions per latent position)."""
    block_values = 3 * VAE_FACTOR * VAE_FACTOR
    if part == "encoder":
        return max(block_values, int(vae.get("encoder_width", 64)))
    pixel = 16 * int(vae.get("decoder_pixel_width", 32)) * (vae.get("decoder_pixel_blocks", 1) > 0)
    return max(block_values, int(vae.get("decoder_width", 96)), pixel)


def encoder_elements(vae: dict[str, Any], th: int, tw: int) -> int:
    """Widest activation of the VAE encoder for a tile of th × tw latent positions."""
    if _is_patch_autoencoder(vae):
        return _patch_widest(vae, "encoder") * th * tw
    channels = list(vae.get("block_out_channels", (64,)))
    stages = []
    for i, c in enumerate(channels):
        scale = VAE_FACTOR // 2**i if 2**i <= VAE_FACTOR else 1
        prev = channels[i - 1] if i else c
        stages.append((max(c, prev), th * scale * tw * scale))
    return _widest(stages)


def decoder_elements(vae: dict[str, Any], th: int, tw: int) -> int:
    """Widest activation of the VAE decoder (its upsamplers run the previous width at 2×)."""
    if _is_patch_autoencoder(vae):
        return _patch_widest(vae, "decoder") * th * tw
    channels = list(reversed(vae.get("block_out_channels", (64,))))
    stages = []
    for i, c in enumerate(channels):
        scale = min(2**i, VAE_FACTOR)
        prev = channels[i - 1] if i else c
        stages.append((max(c, prev), th * scale * tw * scale))
    return _widest(stages)


def unet_elements(unet: dict[str, Any], th: int, tw: int) -> int:
    """Widest activation of the UNet plus the skip connections it keeps for the up path."""
    channels = list(unet.get("block_out_channels", (320, 640, 1280, 1280)))
    layers = int(unet.get("layers_per_block", 2))
    types = list(unet.get("down_block_types", ["CrossAttnDownBlock2D"] * len(channels)))
    stages, skips = [], th * tw * channels[0]
    for i, c in enumerate(channels):
        positions = max(1, th // 2**i) * max(1, tw // 2**i)
        # GEGLU feed-forward: C → 8C in attention blocks; resnets hold ~2C.
        width = 8 * c if "CrossAttn" in types[i] else 2 * c
        stages.append((width, positions))
        skips += (layers + 1) * c * positions
    return _widest(stages) + skips


def hyper_elements(hyper: dict[str, Any], latent_positions: int) -> int:
    """Widest activation of a hyper-coder over the whole latent (M channels at full latent size)."""
    return max(hyper["hidden_channels"], hyper["feature_channels"]) * latent_positions


def weight_scratch_elements(stage: str, config) -> int:
    """Elements of the largest 3×3 convolution weight of a stage's network.

    CPU convolution kernels may copy a weight into their own layout on each call, so one such
    copy is working memory whatever the tile size: for the Stable Diffusion 2.1 UNet (up-block
    resnets read 2560 channels, write 1280: 118 MB in float32) a 128 px tile measured 153 MiB
    against 100 MiB estimated without this term (benchmarks/tiling.md).
    """
    if stage == "unet":
        widest = max(config.unet.get("block_out_channels", (320, 640, 1280, 1280)))
        return 2 * widest * widest * 9  # skip concatenation doubles the input channels
    if _is_patch_autoencoder(config.vae):
        vae = config.vae
        widest = max(vae.get("encoder_width", 64), vae.get("decoder_width", 96))
        return 3 * VAE_FACTOR * VAE_FACTOR * widest * 9  # the encoder branch's first conv
    widest = max(config.vae.get("block_out_channels", (64,)))
    return widest * widest * 9


def stage_bytes(stage: str, config, th: int, tw: int, element_bytes: int = 4) -> int:
    """Estimated working memory of one tile of th × tw latent positions."""
    elements = {
        "encoder": lambda: encoder_elements(config.vae, th, tw),
        "decoder": lambda: decoder_elements(config.vae, th, tw),
        "unet": lambda: unet_elements(config.unet, th, tw),
    }[stage]()
    scratch = weight_scratch_elements(stage, config)
    return int((ACTIVATION_FACTOR[stage] * elements + scratch) * element_bytes) + RUNTIME_OVERHEAD


def fixed_bytes(config, height: int, width: int, direction: str) -> int:
    """Untiled work of one padded image: full-size image buffers and the hyper-coder."""
    image = 3 * height * width * 4 * IMAGE_COPIES[direction]
    latent = (height // VAE_FACTOR) * (width // VAE_FACTOR)
    hyper = ACTIVATION_FACTOR["hyper"] * hyper_elements(vars(config.hyper), latent) * 4
    return int(image + hyper + 16 * latent * 4)


# ----------------------------------------------------------------------------- planning
def _overlap(size: int, align: int) -> int:
    return max(align, -(-size // 4 // align) * align) if size > align else 0


def plan_tiling(
    config,
    height: int,
    width: int,
    direction: str,
    tile_size: int | None = None,
    max_memory: int | None = None,
    element_bytes: dict[str, int] | None = None,
) -> Tiling:
    """Tiles for one padded image (``height`` × ``width`` pixels) and one direction.

    ``direction`` is "encode" (VAE encoder) or "decode" (UNet and VAE decoder). ``tile_size``
    caps the tile side in pixels; ``max_memory`` (bytes on top of the loaded weights) picks the
    largest tiles whose estimate fits. With neither, nothing is tiled. ``element_bytes`` maps
    "vae"/"unet" to the bytes per element of their dtype (default 4). Deterministic: the same
    arguments always give the same tiles (encoding stays reproducible).
    """
    if direction not in ("encode", "decode"):
        raise ValueError(f"direction must be 'encode' or 'decode', got {direction!r}")
    if tile_size is None and max_memory is None:
        return Tiling()
    sizes = element_bytes or {}
    lh, lw = height // VAE_FACTOR, width // VAE_FACTOR
    unet_align = config.unet_downsample
    limit = max(lh, lw)
    if tile_size is not None:
        align_px = VAE_FACTOR * unet_align
        if tile_size < align_px:
            raise ConfigError(f"--tile-size must be at least {align_px} pixels for this model")
        limit = min(limit, tile_size // VAE_FACTOR)
    fixed = fixed_bytes(config, height, width, direction)
    budget = None if max_memory is None else max_memory - fixed
    chosen: dict[str, StageTiles | None] = {}
    for stage in STAGES[direction]:
        align = unet_align if stage == "unet" else 1
        bytes_per = sizes.get("unet" if stage == "unet" else "vae", 4)

        def cost(size: int, stage: str = stage, bytes_per: int = bytes_per) -> int:
            return stage_bytes(stage, config, min(size, lh), min(size, lw), bytes_per)

        size = max(align, limit // align * align)
        if budget is not None:
            while size > align and cost(size) > budget:
                size -= align
            if cost(size) > budget:
                need = fixed + cost(align)
                raise ConfigError(
                    f"--max-memory {max_memory / 2**20:.0f} MiB is too small for a "
                    f"{width}x{height} image with this model: it needs at least "
                    f"{need / 2**20:.0f} MiB (estimated)"
                )
        covers = size >= lh and size >= lw
        chosen[stage] = None if covers else StageTiles(size, _overlap(size, align))
    return Tiling(**chosen)


STAGES = {"encode": ("encoder",), "decode": ("unet", "decoder")}


def estimated_peak(config, height: int, width: int, direction: str, tiling: Tiling) -> int:
    """Estimated working memory of coding one padded image with ``tiling`` (float32)."""
    lh, lw = height // VAE_FACTOR, width // VAE_FACTOR
    peak = 0
    for stage in STAGES[direction]:
        tiles = getattr(tiling, stage)
        th, tw = (min(tiles.size, lh), min(tiles.size, lw)) if tiles else (lh, lw)
        peak = max(peak, stage_bytes(stage, config, th, tw))
    return fixed_bytes(config, height, width, direction) + peak
