"""OscarCodec: images to bytes and back. The only module that knows the whole pipeline.

::

    compress:   image ─policy─► x ─pad─► x_pad ─VAE─► y ─g_a, VQ─► indices ─coder─► payload
                                                    └─► RMS codes (side info) ─┐
                header(level, coder, fingerprint, size, side info) + payload + CRC ─► bytes
    decompress: bytes ─parse, check─► indices ─g_s─► y_tilde ─rescale─► z_t ─UNet─► y_hat
                ─VAE─► x_hat ─crop─► image

Each step runs inside ``with stage(name)`` (``oscar.runtime.stages``): a no-op unless ``oscar
bench`` is recording, so the benchmark times exactly this code. ``decompress(data, steps=N)``
replaces the one UNet pass by N deterministic DDIM steps (same file; ``steps=1`` is the default
decoder).

Every image is padded to the model's ``pad_multiple`` (the least common multiple of all grid
factors and the UNet's downsampling, 64 for the default ladder) so that the latent is computed
once for all levels (``compress_to_budget``) and the decoder derives the token grid from the
original size alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from oscar.coding import bitstream
from oscar.coding.bitstream import Container, Header, Limits
from oscar.coding.effort import DEFAULT_EFFORT, check_effort
from oscar.coding.entropy import (
    FIXED_CODER_ID,
    PRIOR_CODER_ID,
    FixedLengthCoder,
    IndexCoder,
    PriorCoder,
)
from oscar.coding.index_search import search_indices
from oscar.errors import (
    ConfigError,
    FingerprintMismatchError,
    ImageError,
    MalformedError,
    OscarError,
)
from oscar.io import (
    SourceImage,
    crop,
    grey_from_rgb,
    image_to_tensor,
    load_image,
    pad,
    tensor_to_image,
    to_rgb,
)
from oscar.models.inference import prepare_vae_decoding, use_subpixel_upsampling
from oscar.rates import RateLevel, padded_size
from oscar.runtime.allocator import allocator_for_pixels
from oscar.runtime.determinism import single_thread, thread_independent
from oscar.runtime.device import inference_memory_format, resolve_device, resolve_dtype
from oscar.runtime.stages import stage
from oscar.runtime.tiling import Tiling, plan_tiling
from oscar.store.pretrained import LoadedModel, load_model, resolve_model_dir

CoderChoice = Literal["auto", "entropy", "fixed"]
ImageLike = Image.Image | np.ndarray | SourceImage | str | Path


@dataclass(frozen=True)
class EncodedImage:
    """What a file carries, as a typed record (the ``encode``/``decode`` API).

    Attributes:
        level: rate level.
        height, width: original image size.
        indices: (h, w) int64 token indices for the padded image.
        rms_codes: (4,) uint8 quantised channel RMS of the latent (side info).
        grey: the source was greyscale; decoding returns one channel.
    """

    level: int
    height: int
    width: int
    indices: np.ndarray
    rms_codes: np.ndarray
    grey: bool = False


@dataclass(frozen=True)
class BudgetResult:
    """Outcome of :meth:`OscarCodec.compress_to_budget`."""

    data: bytes
    level: int
    tried: tuple[tuple[int, int], ...]  # (level, bytes) for each level tried, highest rate first
    height: int  # the image size, as the file records it
    width: int


class NoLevelFitsError(OscarError):
    """Even the lowest level's file is larger than the byte budget."""


class OscarCodec:
    """Compress and decompress images with one OSCAR model.

    Example::

        codec = OscarCodec.from_pretrained()          # the embedded model
        data = codec.compress("photo.png", level=3)
        image = codec.decompress(data)                 # (H, W, 3) uint8

    The contract: ``compress`` / ``compress_batch`` / ``compress_to_budget`` and ``decompress`` /
    ``decompress_batch``; the same through typed records, ``encode`` / ``encode_batch`` →
    :class:`EncodedImage` → ``pack`` → bytes → ``unpack`` → ``decode`` / ``decode_batch``; and
    ``reconstruct`` (what decompress(compress(...)) returns, without bytes).

    The lower-level steps, for code that needs the latent or the indices themselves (prior
    fitting, calibration, the fuzzer, benchmarks): ``prepare_image`` (the input policy),
    ``encode_latents`` (images → latents and side information) and ``encode_indices``
    (latents → indices at a level); ``token_grid``, ``tiling`` and ``check_steps`` answer what
    the codec would do for a size, a level or a number of steps.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        device: torch.device | str | None = None,
        limits: Limits | None = None,
        tile_size: int | None = None,
        max_memory: int | None = None,
        optimize: bool = True,
        effort: int = DEFAULT_EFFORT,
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.device = torch.device(device) if device else next(self.model.parameters()).device
        self.model.to(self.device)
        # The networks' inference dtype (UNet; the VAE's too, unless float16 keeps it float32:
        # oscar.store.pretrained); hyper-coders, latents and side info stay float32.
        self.dtype = self.model.unet.dtype
        self.limits = limits or Limits()
        self.pad_multiple = self.model.config.pad_multiple
        # Inference optimisations (BENCHMARKS.md); ``optimize=False`` runs the networks as
        # diffusers builds them, for comparisons. In-place VAE activations change no value. The
        # channels-last VAE decoder (CPU) and the sub-pixel upsampling layers of the VAE decoder
        # and UNet may change pixels by float rounding; the encoder's networks keep their layout
        # and layers so that the bytes written stay exactly as before. All change the model
        # passed in, in place (training under autograd is unaffected: oscar.models.inference).
        self.memory_format = inference_memory_format(self.device, None if optimize else False)
        prepare_vae_decoding(self.model.vae, self.memory_format, optimize)
        if optimize:
            use_subpixel_upsampling(self.model.unet)
        # One coder of each kind, so the prior coder's per-level models are built once.
        self._fixed = FixedLengthCoder()
        self._prior = PriorCoder(loaded.priors) if loaded.priors is not None else None
        # Large images (oscar.runtime.tiling): tile side cap in pixels and/or a working-memory
        # budget in bytes. Neither changes the file format; both only change how the networks are
        # run.
        self.tile_size = tile_size
        self.max_memory = max_memory
        self.tiling("encode", self.pad_multiple, self.pad_multiple)  # early check of the options
        # Encoder effort (oscar.coding.index_search): rounds of index search after the
        # nearest-codeword choice (0: nearest codewords only). The decoder and the format do not
        # depend on it.
        self.effort = check_effort(effort)

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path | None = None,
        device: str = "auto",
        base_model: str | Path | None = None,
        limits: Limits | None = None,
        dtype: str | torch.dtype = "auto",
        tile_size: int | None = None,
        max_memory: int | None = None,
        optimize: bool = True,
        effort: int = DEFAULT_EFFORT,
    ) -> OscarCodec:
        """Load a model directory (default: the embedded model) onto a device.

        ``dtype`` ("auto" = float32, "float32", "float16", "bfloat16" or a torch dtype) is the
        inference dtype of the UNet and VAE; files are interchangeable between dtypes and devices
        (``bfloat16`` is faster on CPUs with AVX-512 BF16 and changes the pixels slightly, see
        BENCHMARKS.md). ``optimize=False`` runs the networks exactly as diffusers builds them.
        ``effort`` is the number of rounds of the encoder's index search
        (``oscar.coding.index_search``; default DEFAULT_EFFORT, 0 = nearest codewords only: faster,
        lower quality); the decoder is the same whatever the effort.
        """
        dev = resolve_device(device)
        dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, dev)
        loaded = load_model(
            resolve_model_dir(model_dir), base_model=base_model, device=dev, dtype=dt
        )
        return cls(
            loaded,
            device=dev,
            limits=limits,
            tile_size=tile_size,
            max_memory=max_memory,
            optimize=optimize,
            effort=effort,
        )

    def tiling(self, direction: str, height: int, width: int) -> Tiling:
        """Tiles for a padded image size (none unless tile_size or max_memory is set)."""
        element_bytes = {
            "vae": self.model.vae.dtype.itemsize,
            "unet": self.model.unet.dtype.itemsize,
        }
        return plan_tiling(
            self.model.config,
            height,
            width,
            direction,
            tile_size=self.tile_size,
            max_memory=self.max_memory,
            element_bytes=element_bytes,
        )

    def _fits(self, height: int, width: int, direction: str = "encode") -> None:
        """Refuse (one ConfigError naming the size and --max-memory) an image whose estimated
        working memory exceeds the budget even by tiles; before any pixel is decoded."""
        self.tiling(direction, *padded_size(height, width, self.pad_multiple))

    # ------------------------------------------------------------------------ properties
    @property
    def levels(self) -> tuple[RateLevel, ...]:
        return self.model.levels

    @property
    def fingerprint(self) -> bytes:
        return self.loaded.short_fingerprint

    def rate(self, level: int) -> RateLevel:
        """The level's rate row; an unknown level is a ConfigError naming the rate table. The
        public entry points look the level up once, before any work; the steps inside trust it."""
        return self.model.rate(level)

    def token_grid(self, height: int, width: int, level: int) -> tuple[int, int]:
        return self.model.config.token_grid(height, width, level)

    # ------------------------------------------------------------------------ encoding
    def prepare_image(self, image: ImageLike) -> SourceImage:
        """Apply the input policy (files are read with the pixel limit)."""
        if isinstance(image, SourceImage):
            source = image
        elif isinstance(image, (str, Path)):
            source = load_image(image, max_pixels=self.limits.max_pixels, check_size=self._fits)
        else:
            source = to_rgb(image)
        if source.height * source.width > self.limits.max_pixels:
            raise ImageError(
                f"image of {source.height}x{source.width} exceeds {self.limits.max_pixels} pixels"
            )
        if max(source.height, source.width) > bitstream.MAX_SIDE:
            raise ImageError(f"image sides must be at most {bitstream.MAX_SIDE} pixels")
        return source

    @torch.inference_mode()
    def encode_latents(self, sources: Sequence[SourceImage]) -> tuple[torch.Tensor, np.ndarray]:
        """Same-size images → padded scaled latents y (B, 4, H/8, W/8) and RMS codes (B, 4)."""
        ph, pw = padded_size(sources[0].height, sources[0].width, self.pad_multiple)
        tiles = self.tiling("encode", ph, pw)  # refuses what cannot fit, before allocating
        with stage("pad"):
            x = torch.cat([image_to_tensor(s.rgb) for s in sources]).to(self.device)
            x = pad(x, self.pad_multiple)
        allocator_for_pixels(x.shape[0] * x.shape[2] * x.shape[3])
        with stage("vae_encode"), thread_independent(self.model.vae):
            # Thread-count-independent bits (oscar.runtime.determinism): the bytes must not depend
            # on it.
            y = self.model.encode_latent(x, tiles)
            del x  # a 4K image is 100 MB per float32 copy
            codes = self.model.side_info(y).cpu().numpy()
        return y, codes

    @torch.inference_mode()
    def encode_indices(self, y: torch.Tensor, level: int) -> np.ndarray:
        """Latents y (B, 4, H/8, W/8) → indices (B, h, w) int64 (g_a, then the quantiser)."""
        hyper = self.model.hyper_coder(level)
        # One thread: the decisions must not depend on the thread count (oscar.runtime.determinism).
        with stage("hyper_analysis"), single_thread():
            u = hyper.g_a(y)
        with stage("quantize"), single_thread():
            indices = hyper.quantizer.quantize(u)
        with stage("index_search"), single_thread():
            indices = search_indices(self.model, y, u, level, indices, self.effort)
        return indices.cpu().numpy().astype(np.int64)

    def encode(self, image: ImageLike, level: int) -> EncodedImage:
        """Image → typed record (indices and side info), no bytes."""
        return self.encode_batch([image], level)[0]

    def encode_batch(self, images: Sequence[ImageLike], level: int) -> list[EncodedImage]:
        """Images of one size → typed records, run through the networks as one batch."""
        self.rate(level)  # the level's one check, before any image is read
        sources = [self.prepare_image(image) for image in images]
        if not sources:
            raise ImageError("a batch needs at least one image")
        if len({(s.height, s.width) for s in sources}) > 1:
            raise ImageError("a batch must hold images of one size")
        y, codes = self.encode_latents(sources)
        indices = self.encode_indices(y, level)
        return [
            EncodedImage(level, s.height, s.width, indices[i], codes[i], s.grey)
            for i, s in enumerate(sources)
        ]

    def _coders(self, coder: CoderChoice, level: int) -> list[IndexCoder]:
        """The coders to try for a choice at ``level``; the smallest output wins."""
        has_table = self._prior is not None and level in self._prior.priors.tables
        if coder == "fixed":
            return [self._fixed]
        if coder == "entropy":
            if not has_table:
                raise ConfigError(
                    f"this model has no entropy prior for level {level}; run `oscar fit-priors` "
                    "or use --coder fixed"
                )
            return [self._prior]
        if coder == "auto":
            return [self._fixed] + ([self._prior] if has_table else [])
        raise ConfigError(f"unknown coder {coder!r}: use auto, entropy or fixed")

    def _coder_for_id(self, coder_id: int, level: int) -> IndexCoder:
        """The coder a file names. A model's own files cannot name a prior it lacks (its
        fingerprint covers its priors), so such a file is at fault: a BitstreamError like every
        other defect of a file."""
        if coder_id == FIXED_CODER_ID:
            return self._fixed
        if coder_id == PRIOR_CODER_ID:
            if self._prior is None:
                raise MalformedError(
                    "this file is entropy-coded but the model has no priors (priors.safetensors)"
                )
            if level not in self._prior.priors.tables:
                raise MalformedError(
                    f"this file is entropy-coded but the model has no prior for level {level}"
                )
            return self._prior
        raise MalformedError(f"unknown index-coder id {coder_id}")

    def pack(self, encoded: EncodedImage, coder: CoderChoice = "auto") -> bytes:
        """Typed record → file bytes. ``auto`` writes whichever coder gives fewer bytes."""
        with stage("entropy_code"):
            return self._pack(encoded, coder)

    def _pack(self, encoded: EncodedImage, coder: CoderChoice) -> bytes:
        rate = self.rate(encoded.level)
        best: tuple[int, bytes] | None = None
        for candidate in self._coders(coder, encoded.level):
            payload = candidate.encode(encoded.indices, rate)
            if best is None or len(payload) < len(best[1]):
                best = (candidate.coder_id, payload)
        assert best is not None
        header = Header(
            level=encoded.level,
            coder_id=best[0],
            fingerprint=self.fingerprint,
            height=encoded.height,
            width=encoded.width,
            side_info=bytes(np.asarray(encoded.rms_codes, dtype=np.uint8).tolist()),
            grey=encoded.grey,
        )
        return bitstream.write(header, best[1])

    def compress(self, image: ImageLike, level: int, coder: CoderChoice = "auto") -> bytes:
        """Image → file bytes at ``level``. Deterministic: same image, same bytes."""
        return self.pack(self.encode(image, level), coder)

    def compress_batch(
        self, images: Sequence[ImageLike], level: int, coder: CoderChoice = "auto"
    ) -> list[bytes]:
        """Images of one size → file bytes, run through the networks as one batch (each file
        is the one ``compress`` writes for its image)."""
        return [self.pack(encoded, coder) for encoded in self.encode_batch(images, level)]

    def compress_to_budget(
        self, image: ImageLike, max_bytes: int, coder: CoderChoice = "auto"
    ) -> BudgetResult:
        """The highest-rate level whose file fits in ``max_bytes`` (latent encoded once)."""
        source = self.prepare_image(image)
        y, codes = self.encode_latents([source])
        tried = []
        for rate in sorted(self.levels, key=lambda lv: lv.nominal_bpp, reverse=True):
            encoded = EncodedImage(
                rate.level,
                source.height,
                source.width,
                self.encode_indices(y, rate.level)[0],
                codes[0],
                source.grey,
            )
            data = self.pack(encoded, coder)
            tried.append((rate.level, len(data)))
            if len(data) <= max_bytes:
                return BudgetResult(data, rate.level, tuple(tried), source.height, source.width)
        smallest = min(size for _, size in tried)
        raise NoLevelFitsError(
            f"no level fits in {max_bytes} bytes; the smallest file would be {smallest} bytes"
        )

    # ------------------------------------------------------------------------ decoding
    def _parse(self, data: bytes) -> Container:
        """Parse and check a file against this model (limits, fingerprint, level)."""
        container = bitstream.read(data, self.limits)
        header = container.header
        if header.fingerprint != self.fingerprint:
            raise FingerprintMismatchError(
                f"file was made with model {header.fingerprint.hex()}, "
                f"this model is {self.fingerprint.hex()}"
            )
        if header.level not in self.model.config.level_numbers:
            raise MalformedError(f"level {header.level} is not in this model's rate table")
        return container

    def unpack(self, data: bytes) -> EncodedImage:
        """File bytes → typed record, with every check done before any tensor is made."""
        with stage("parse"):
            return self._unpack(data)

    def _unpack(self, data: bytes) -> EncodedImage:
        container = self._parse(data)
        header = container.header
        rate = self.rate(header.level)
        h, w = self.token_grid(header.height, header.width, header.level)
        coder = self._coder_for_id(header.coder_id, header.level)
        if len(container.payload) > coder.max_payload_bytes(h * w, rate):
            raise MalformedError(
                f"payload of {len(container.payload)} bytes is longer than {h * w} tokens allow"
            )
        channels = self.model.vae.config.latent_channels
        if len(header.side_info) != channels:
            raise MalformedError(
                f"side info holds {len(header.side_info)} channel norms, the model's latent has "
                f"{channels} channels"
            )
        indices = coder.decode(container.payload, h * w, rate).reshape(h, w)
        codes = np.frombuffer(header.side_info, dtype=np.uint8).copy()
        return EncodedImage(header.level, header.height, header.width, indices, codes, header.grey)

    def check_steps(self, steps: int, level: int) -> None:
        """Refuse a number of decoding steps the level's timestep cannot hold."""
        _check_steps(steps, self.rate(level))

    def decode(
        self, encoded: EncodedImage, steps: int = 1, *, truncate: bool = False
    ) -> np.ndarray:
        """Typed record → image: (H, W, 3) uint8, or (H, W) when the source was greyscale.

        ``steps`` > 1 decodes with that many deterministic DDIM steps instead of one.
        ``truncate`` converts to 8 bits by rounding down, as the original's test script did
        (oscar.io.tensor_to_image); the default rounds.
        """
        return self.decode_batch([encoded], steps, truncate=truncate)[0]

    @torch.inference_mode()
    def decode_batch(
        self, records: Sequence[EncodedImage], steps: int = 1, *, truncate: bool = False
    ) -> list[np.ndarray]:
        """Records of one level and size → images, run through the networks as one batch."""
        if not records:
            raise ConfigError("a batch needs at least one record")
        first = records[0]
        if any(
            (r.level, r.height, r.width) != (first.level, first.height, first.width)
            for r in records
        ):
            raise ConfigError("a batch must hold records of one level and size")
        rate = self.rate(first.level)  # the level's one check
        _check_steps(steps, rate)
        ph, pw = padded_size(first.height, first.width, self.pad_multiple)
        allocator_for_pixels(len(records) * ph * pw)
        tiles = self.tiling("decode", ph, pw)
        model = self.model
        with stage("hyper_synthesis"):
            indices = torch.from_numpy(np.stack([r.indices for r in records])).to(self.device)
            codes = np.stack([np.asarray(r.rms_codes, np.uint8) for r in records])
            y_tilde = model.hyper_coder(first.level).decode(indices)
            z_t = model.to_noisy_latent(y_tilde, torch.from_numpy(codes).to(self.device))
        with stage("unet"):
            y_hat = model.denoise(z_t, rate.timestep, tiles, steps=steps)
        with stage("vae_decode"):
            y_hat = y_hat.contiguous(memory_format=self.memory_format)
            x_hat = model.decode_latent(y_hat, tiles)
        with stage("crop"):
            images = []
            for i, r in enumerate(records):
                rgb = tensor_to_image(crop(x_hat[i : i + 1], r.height, r.width), truncate=truncate)
                images.append(grey_from_rgb(rgb) if r.grey else rgb)
        return images

    def decompress(self, data: bytes, steps: int = 1, *, truncate: bool = False) -> np.ndarray:
        """File bytes → image: (H, W, 3) uint8, or (H, W) for greyscale sources.

        ``steps`` > 1 runs that many deterministic DDIM steps (a slower, quality/speed dial);
        ``steps=1`` is OSCAR's one-step decoder. ``truncate``: see :meth:`decode`.
        """
        return self.decode(self.unpack(data), steps, truncate=truncate)

    def decompress_batch(
        self, files: Sequence[bytes], steps: int = 1, *, truncate: bool = False
    ) -> list[np.ndarray]:
        """Files of one level and image size → images, run through the networks as one batch."""
        return self.decode_batch([self.unpack(data) for data in files], steps, truncate=truncate)

    def reconstruct(self, image: ImageLike, level: int, steps: int = 1) -> np.ndarray:
        """What decompress(compress(image), steps) returns, computed without bytes."""
        return self.decode(self.encode(image, level), steps)


def _check_steps(steps: int, rate: RateLevel) -> None:
    most = max(rate.timestep, 1)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= most:
        raise ConfigError(
            f"steps must be an integer from 1 to {most} for level {rate.level} "
            f"(timestep {rate.timestep}), got {steps!r}"
        )
