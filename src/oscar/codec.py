"""OscarCodec: images to bytes and back. The only module that knows the whole pipeline.

::

    compress:   image ─policy─► x ─pad─► x_pad ─VAE─► y ─g_a, VQ─► indices ─coder─► payload
                                                    └─► RMS codes (side info) ─┐
                header(level, coder, fingerprint, size, side info) + payload + CRC ─► bytes
    decompress: bytes ─parse, check─► indices ─g_s─► y_tilde ─rescale─► z_t ─UNet─► y_hat
                ─VAE─► x_hat ─crop─► image

Every image is padded to the model's ``pad_multiple`` (the least common multiple of all grid
factors and the UNet's downsampling, 64 for the default ladder) so that the latent is computed
once for all levels (``compress_to_budget``) and the decoder derives the token grid from the
original size alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from oscar import bitstream
from oscar.bitstream import Container, Header, Limits
from oscar.device import resolve_device, resolve_dtype
from oscar.entropy import (
    FIXED_CODER_ID,
    PRIOR_CODER_ID,
    FixedLengthCoder,
    IndexCoder,
    PriorCoder,
)
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
    padded_size,
    tensor_to_image,
    to_rgb,
)
from oscar.pretrained import LoadedModel, load_model, resolve_model_dir
from oscar.rates import RateLevel
from oscar.tiling import Tiling, plan_tiling

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


class NoLevelFitsError(OscarError):
    """Even the lowest level's file is larger than the byte budget."""


class OscarCodec:
    """Compress and decompress images with one OSCAR model.

    Example::

        codec = OscarCodec.from_pretrained()          # the embedded model
        data = codec.compress("photo.png", level=3)
        image = codec.decompress(data)                 # (H, W, 3) uint8
    """

    def __init__(
        self,
        loaded: LoadedModel,
        device: torch.device | None = None,
        limits: Limits | None = None,
        tile_size: int | None = None,
        max_memory: int | None = None,
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.device = device or next(self.model.parameters()).device
        self.model.to(self.device)
        self.limits = limits or Limits()
        self.pad_multiple = self.model.config.pad_multiple
        # One coder of each kind, so the prior coder's per-level models are built once.
        self._fixed = FixedLengthCoder()
        self._prior = PriorCoder(loaded.priors) if loaded.priors is not None else None
        # Large images (oscar.tiling): tile side cap in pixels and/or a working-memory budget in
        # bytes. Neither changes the file format; both only change how the networks are run.
        self.tile_size = tile_size
        self.max_memory = max_memory
        self.tiling("encode", self.pad_multiple, self.pad_multiple)  # early check of the options

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
    ) -> OscarCodec:
        """Load a model directory (default: the embedded model) onto a device.

        ``dtype`` ("auto" = float32, "float32", "float16", "bfloat16" or a torch dtype) is the
        inference dtype of the UNet and VAE; files are interchangeable between dtypes and devices.
        """
        dev = resolve_device(device)
        dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, dev)
        loaded = load_model(
            resolve_model_dir(model_dir), base_model=base_model, device=dev, dtype=dt
        )
        return cls(loaded, device=dev, limits=limits, tile_size=tile_size, max_memory=max_memory)

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

    # ------------------------------------------------------------------------ properties
    @property
    def levels(self) -> tuple[RateLevel, ...]:
        return self.model.levels

    @property
    def fingerprint(self) -> bytes:
        return self.loaded.short_fingerprint

    def rate(self, level: int) -> RateLevel:
        return self.model.rate(level)

    def token_grid(self, height: int, width: int, level: int) -> tuple[int, int]:
        return self.model.config.token_grid(height, width, level)

    # ------------------------------------------------------------------------ encoding
    def prepare_image(self, image: ImageLike) -> SourceImage:
        """Apply the input policy (files are read with the pixel limit)."""
        if isinstance(image, SourceImage):
            source = image
        elif isinstance(image, (str, Path)):
            source = load_image(image, max_pixels=self.limits.max_pixels)
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
    def encode_latent(self, source: SourceImage) -> tuple[torch.Tensor, np.ndarray]:
        """Padded scaled latent y (1, 4, H/8, W/8) and its RMS codes (4,)."""
        x = pad(image_to_tensor(source.rgb).to(self.device), self.pad_multiple)
        y = self.model.encode_latent(x, self.tiling("encode", *x.shape[-2:]))
        del x
        codes = self.model.side_info(y)[0].cpu().numpy()
        return y, codes

    @torch.inference_mode()
    def hyper_encode(self, y: torch.Tensor, level: int) -> np.ndarray:
        return self.model.hyper_coder(level).encode(y)[0].cpu().numpy().astype(np.int64)

    def encode(self, image: ImageLike, level: int) -> EncodedImage:
        """Image → typed record (indices and side info), no bytes."""
        self.rate(level)
        source = self.prepare_image(image)
        y, codes = self.encode_latent(source)
        return EncodedImage(
            level, source.height, source.width, self.hyper_encode(y, level), codes, source.grey
        )

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

    def compress_to_budget(
        self, image: ImageLike, max_bytes: int, coder: CoderChoice = "auto"
    ) -> BudgetResult:
        """The highest-rate level whose file fits in ``max_bytes`` (latent encoded once)."""
        source = self.prepare_image(image)
        y, codes = self.encode_latent(source)
        tried = []
        for rate in sorted(self.levels, key=lambda lv: lv.nominal_bpp, reverse=True):
            encoded = EncodedImage(
                rate.level,
                source.height,
                source.width,
                self.hyper_encode(y, rate.level),
                codes,
                source.grey,
            )
            data = self.pack(encoded, coder)
            tried.append((rate.level, len(data)))
            if len(data) <= max_bytes:
                return BudgetResult(data, rate.level, tuple(tried))
        smallest = min(size for _, size in tried)
        raise NoLevelFitsError(
            f"no level fits in {max_bytes} bytes; the smallest file would be {smallest} bytes"
        )

    # ------------------------------------------------------------------------ decoding
    def parse(self, data: bytes) -> Container:
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
        container = self.parse(data)
        header = container.header
        rate = self.rate(header.level)
        h, w = self.token_grid(header.height, header.width, header.level)
        coder = self._coder_for_id(header.coder_id, header.level)
        if len(container.payload) > coder.max_payload_bytes(h * w, rate):
            raise MalformedError(
                f"payload of {len(container.payload)} bytes is longer than {h * w} tokens allow"
            )
        indices = coder.decode(container.payload, h * w, rate).reshape(h, w)
        codes = np.frombuffer(header.side_info, dtype=np.uint8).copy()
        return EncodedImage(header.level, header.height, header.width, indices, codes, header.grey)

    @torch.inference_mode()
    def decode(self, encoded: EncodedImage) -> np.ndarray:
        """Typed record → image: (H, W, 3) uint8, or (H, W) when the source was greyscale."""
        indices = torch.from_numpy(encoded.indices).to(self.device).unsqueeze(0)
        codes = torch.from_numpy(np.asarray(encoded.rms_codes, np.uint8)).unsqueeze(0)
        padded = padded_size(encoded.height, encoded.width, self.pad_multiple)
        tiles = self.tiling("decode", *padded)
        x_hat = self.model.decode_indices(indices, codes.to(self.device), encoded.level, tiles)
        rgb = tensor_to_image(crop(x_hat, encoded.height, encoded.width))
        return grey_from_rgb(rgb) if encoded.grey else rgb

    def decompress(self, data: bytes) -> np.ndarray:
        """File bytes → image: (H, W, 3) uint8, or (H, W) for greyscale sources."""
        return self.decode(self.unpack(data))

    def reconstruct(self, image: ImageLike, level: int) -> np.ndarray:
        """What decompress(compress(image)) returns, computed without bytes."""
        return self.decode(self.encode(image, level))
