"""Classical codecs through ``imagecodecs``, behind one small class, and rate matching.

Each :class:`Baseline` encodes an RGB uint8 image at a *quality* setting (higher quality, more
bytes) and decodes the bytes it wrote. Its rate is always ``len(bytes) * 8 / pixels`` of the
original image, container included (the file a user would store):

==========  ==========================  =====================================================
name        library (imagecodecs)       setting searched, and fixed options
==========  ==========================  =====================================================
jpeg        libjpeg-turbo               quality 1–100; 4:2:0, optimised Huffman tables
webp        libwebp                     quality 0–100, lossy; method 4 (library default)
avif        libavif (AOM)               quality 0–100; speed 6, 4:4:4 (imagecodecs default)
jxl         libjxl                      quality 0–99 (libjxl's quality→distance map); effort 7
jpeg2000    OpenJPEG                    target PSNR 10–70 dB in 0.25 dB steps, one quality
                                        layer; raw J2K codestream (no JP2 boxes)
==========  ==========================  =====================================================

:func:`match_rate` finds, for one image, the setting whose measured bpp is closest to a target
(bisection over the setting grid, encodings cached per image). When even the lowest setting is
above the target the result says so (status ``floor``); the runner then also tries the image
downscaled 2× and 4× (Lanczos), decoded and upscaled back (bicubic) to the original size — the
usual way to reach ultra-low rates with classical codecs — labelled ``NAME-down2`` / ``-down4``.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image

from oscar.errors import ConfigError

MatchStatus = Literal["ok", "floor", "ceiling"]


class Baseline(ABC):
    """A classical codec: name, settings grid, encode at a quality, decode."""

    name: str = ""
    label: str = ""
    parameter: str = "quality"
    qualities: tuple[float, ...] = ()  # candidate settings, increasing rate
    sweep: tuple[float, ...] = ()  # default settings of the full curve
    options: str = ""  # fixed options, for the report

    @abstractmethod
    def encode(self, rgb: np.ndarray, quality: float) -> bytes:
        """(H, W, 3) uint8 → bytes at ``quality`` (one of :attr:`qualities`)."""

    @abstractmethod
    def decode(self, data: bytes) -> np.ndarray:
        """bytes → (H, W, 3) uint8."""

    def setting(self, quality: float) -> str:
        return f"{self.parameter} {quality:g}"


def _imagecodecs():
    import imagecodecs  # lazy: the eval extra, which may be absent (oscar.extras names it)

    return imagecodecs


def _rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3].astype(np.uint8, copy=False))


class JPEG(Baseline):
    name, label = "jpeg", "JPEG"
    qualities = tuple(float(q) for q in range(1, 101))
    sweep = (1.0, 5.0, 10.0, 20.0, 35.0, 50.0, 75.0, 90.0)
    options = "libjpeg-turbo, 4:2:0, optimised Huffman"

    def encode(self, rgb: np.ndarray, quality: float) -> bytes:
        return bytes(
            _imagecodecs().jpeg8_encode(rgb, level=int(quality), subsampling="420", optimize=True)
        )

    def decode(self, data: bytes) -> np.ndarray:
        return _rgb(_imagecodecs().jpeg8_decode(data))


class WebP(Baseline):
    name, label = "webp", "WebP"
    qualities = tuple(float(q) for q in range(0, 101))
    sweep = (0.0, 5.0, 10.0, 20.0, 35.0, 50.0, 75.0, 90.0)
    options = "libwebp lossy, method 4"

    def encode(self, rgb: np.ndarray, quality: float) -> bytes:
        return bytes(_imagecodecs().webp_encode(rgb, level=int(quality), lossless=False, method=4))

    def decode(self, data: bytes) -> np.ndarray:
        return _rgb(_imagecodecs().webp_decode(data))


class AVIF(Baseline):
    name, label = "avif", "AVIF"
    qualities = tuple(float(q) for q in range(0, 101))
    sweep = (0.0, 5.0, 10.0, 20.0, 35.0, 50.0, 75.0, 90.0)
    options = "libavif (AOM), speed 6, 4:4:4"

    def encode(self, rgb: np.ndarray, quality: float) -> bytes:
        return bytes(_imagecodecs().avif_encode(rgb, level=int(quality), speed=6))

    def decode(self, data: bytes) -> np.ndarray:
        return _rgb(_imagecodecs().avif_decode(data))


class JPEGXL(Baseline):
    name, label = "jxl", "JPEG XL"
    qualities = tuple(float(q) for q in range(0, 100))
    sweep = (0.0, 5.0, 10.0, 20.0, 35.0, 50.0, 75.0, 90.0)
    options = "libjxl, effort 7"

    def encode(self, rgb: np.ndarray, quality: float) -> bytes:
        return bytes(_imagecodecs().jpegxl_encode(rgb, level=int(quality), effort=7))

    def decode(self, data: bytes) -> np.ndarray:
        return _rgb(_imagecodecs().jpegxl_decode(data))


class JPEG2000(Baseline):
    name, label = "jpeg2000", "JPEG 2000"
    parameter = "target PSNR (dB)"
    qualities = tuple(10.0 + 0.25 * i for i in range(241))  # 10 … 70 dB
    sweep = (20.0, 24.0, 27.0, 30.0, 33.0, 36.0, 40.0, 45.0)
    options = "OpenJPEG, one quality layer, J2K codestream"

    def encode(self, rgb: np.ndarray, quality: float) -> bytes:
        return bytes(_imagecodecs().jpeg2k_encode(rgb, level=float(quality), codecformat="J2K"))

    def decode(self, data: bytes) -> np.ndarray:
        return _rgb(_imagecodecs().jpeg2k_decode(data))


BASELINES: dict[str, type[Baseline]] = {
    cls.name: cls for cls in (JPEG, WebP, AVIF, JPEGXL, JPEG2000)
}
ALIASES = {"jpegxl": "jxl", "jpeg-xl": "jxl", "j2k": "jpeg2000", "jp2": "jpeg2000"}


def get_baselines(names: str | list[str]) -> list[Baseline]:
    """Baselines from a comma-separated list (``none`` or empty for none)."""
    if isinstance(names, str):
        names = [n.strip().lower() for n in names.split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    out = []
    for name in names:
        key = ALIASES.get(name, name)
        if key not in BASELINES:
            raise ConfigError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
        out.append(BASELINES[key]())
    return out


# ----------------------------------------------------------------------------- resizing
def downscale(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Lanczos downscale by ``factor`` (sizes rounded, at least 1 px)."""
    h, w = rgb.shape[:2]
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


def upscale(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize back to (height, width)."""
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BICUBIC))


# ----------------------------------------------------------------------------- rate matching
@dataclass(frozen=True)
class Encoding:
    """One encoding of one image: the setting, its bytes and the time it took."""

    quality: float
    data: bytes
    encode_s: float


@dataclass
class EncodingCache:
    """Encodings of one (image, baseline, scale), by quality: each setting is encoded once."""

    baseline: Baseline
    rgb: np.ndarray
    pixels: int  # pixels of the ORIGINAL image: the rate's denominator
    done: dict[float, Encoding] = field(default_factory=dict)

    def get(self, quality: float) -> Encoding:
        if quality not in self.done:
            start = time.perf_counter()
            data = self.baseline.encode(self.rgb, quality)
            self.done[quality] = Encoding(quality, data, time.perf_counter() - start)
        return self.done[quality]

    def bpp(self, quality: float) -> float:
        return len(self.get(quality).data) * 8 / self.pixels


@dataclass(frozen=True)
class Match:
    """The setting chosen for a target rate, and whether the target was within reach."""

    encoding: Encoding
    bpp: float
    target_bpp: float
    status: MatchStatus

    @property
    def note(self) -> str:
        if self.status == "floor":
            return (
                f"cannot go as low as {self.target_bpp:.4f} bpp: "
                f"lowest setting gives {self.bpp:.4f} bpp"
            )
        if self.status == "ceiling":
            return (
                f"cannot go as high as {self.target_bpp:.4f} bpp: "
                f"highest setting gives {self.bpp:.4f} bpp"
            )
        return ""


def match_rate(cache: EncodingCache, target_bpp: float) -> Match:
    """The setting whose measured bpp is closest to ``target_bpp``.

    Bisection over the (rate-increasing) settings grid for the two adjacent settings that bracket
    the target, then the closer of the two. Rates that are not monotone in the setting still give
    a bracketing pair. Floors and ceilings are reported in :attr:`Match.status`.
    """
    grid = cache.baseline.qualities
    lo, hi = 0, len(grid) - 1
    if cache.bpp(grid[lo]) >= target_bpp:
        status: MatchStatus = "ok" if math.isclose(cache.bpp(grid[lo]), target_bpp) else "floor"
        return Match(cache.get(grid[lo]), cache.bpp(grid[lo]), target_bpp, status)
    if cache.bpp(grid[hi]) <= target_bpp:
        status = "ok" if math.isclose(cache.bpp(grid[hi]), target_bpp) else "ceiling"
        return Match(cache.get(grid[hi]), cache.bpp(grid[hi]), target_bpp, status)
    while hi - lo > 1:  # invariant: bpp(lo) < target < bpp(hi)
        mid = (lo + hi) // 2
        if cache.bpp(grid[mid]) <= target_bpp:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda i: (abs(cache.bpp(grid[i]) - target_bpp), i))
    return Match(cache.get(grid[best]), cache.bpp(grid[best]), target_bpp, "ok")


def baseline_versions() -> dict[str, str]:
    """The baselines' library versions, for an evaluation's record (none without imagecodecs)."""
    try:
        import imagecodecs  # lazy: the eval extra, which may be absent
    except ImportError:
        return {}
    parts = [part.split("-", 1) for part in imagecodecs.version().split(", ") if "-" in part]
    libs = dict(parts)
    keep = ("libjpeg_turbo", "libwebp", "libavif", "libjxl", "openjpeg")
    return {"baseline libraries": ", ".join(f"{k} {libs[k]}" for k in keep if k in libs)}
