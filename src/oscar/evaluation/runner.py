"""The evaluation loop: our codec and the baselines on a folder of images, metrics, FID features.

Two entry points:

``evaluate_oscar(codec, image_paths, levels, metrics=("psnr", "ms_ssim"), save_dir=None,
weights_dir=None, device=None, progress=False) -> list[ImageRecord]``
    Our codec only, per-image metrics only (``psnr``, ``ms_ssim``, ``lpips_alex``, ``lpips_vgg``,
    ``dists``). What training validation calls. Every rate is measured from the bytes
    ``codec.compress`` returns, and every reconstruction is ``codec.decompress`` of those bytes.
    With ``save_dir``, writes ``save_dir/L{level}/{name}.oscar`` and ``.png``.

``aggregate(records) -> list[Aggregate]``
    Means per (codec, kind, level) (re-exported from :mod:`oscar.evaluation.records`).

``evaluate_images(...)`` + ``finalize(...)``
    The whole protocol behind ``oscar eval``: ours at each level, each baseline matched to our
    rate on each image (with 2×/4× down-scaled variants below its floor), each baseline's own
    sweep, crops for the report, and Inception features for FID/KID. ``evaluate_images`` works on
    one shard of the images (for ``accelerate launch``: one shard per process); ``finalize``
    merges shards, computes FID/KID and aggregates.

Two image protocols (``EvalOptions.protocol``; ``oscar eval --protocol``):

- ``ours`` (default): every codec codes the untouched image and is scored against it; our codec
  pads, crops back, rounds to 8 bits and encodes with the codec's effort.
- ``paper``: the original release's test script (docs/method.md §6.1): each image is first
  resized with Lanczos to width and height rounded down to multiples of 128, and that resized
  image is what every codec codes and what every metric compares with; our codec encodes with
  effort 0 (nearest codewords; ``codec.effort`` is set to 0) and converts its output to 8 bits
  by truncation. Rates are measured from the files, over the resized image's pixels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from oscar.coding import bitstream
from oscar.errors import ConfigError, ImageError
from oscar.evaluation.baselines import (
    Baseline,
    EncodingCache,
    downscale,
    match_rate,
    upscale,
)
from oscar.evaluation.metrics import PER_IMAGE_METRICS, FeatureSet, MetricSuite
from oscar.evaluation.records import Aggregate, ImageRecord, aggregate
from oscar.filetypes import find_files
from oscar.io import SourceImage, save_image, write_bytes_atomic

__all__ = [
    "EvalOptions",
    "EvalResult",
    "Shard",
    "aggregate",
    "evaluate_images",
    "evaluate_oscar",
    "finalize",
]

log = logging.getLogger(__name__)

REAL = "original"
PROTOCOLS = ("ours", "paper")
DOWNSCALED = ("floor", "always")
PAPER_MULTIPLE = 128  # the original's test images: sides rounded down to multiples of 128


@dataclass(frozen=True)
class EvalOptions:
    """What ``evaluate_images`` does besides our codec.

    Attributes:
        levels: our levels to evaluate (None: all).
        sweep: also run each baseline's own settings (full curves).
        downscale_factors: down-scaled variants of each baseline.
        downscaled: when to try them: ``floor`` (only when the baseline's lowest setting is
            above our rate) or ``always`` (at every level, so that the comparison covers the
            usual way to reach low rates with a classical codec even where it could do without).
        crops: number of images (the first ones) whose crops go into the report.
        crop_size: side of the square crop, in pixels (smaller images: their shorter side).
        max_images: evaluate only the first N images (sorted by name).
        warmup: code the first image once, untimed, before timing anything.
        steps: decoding steps of our codec (1: the one-step decoder; N: N DDIM steps).
        protocol: ``ours`` or ``paper`` (the module docstring).
    """

    levels: tuple[int, ...] | None = None
    sweep: bool = True
    downscale_factors: tuple[int, ...] = (2, 4)
    downscaled: str = "floor"
    crops: int = 3
    crop_size: int = 192
    max_images: int | None = None
    warmup: bool = True
    steps: int = 1
    protocol: str = "ours"

    def __post_init__(self) -> None:
        if self.downscaled not in DOWNSCALED:
            raise ConfigError(f"downscaled must be one of {DOWNSCALED}, not {self.downscaled!r}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}; use one of {PROTOCOLS}")


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1


@dataclass
class CropSet:
    """Crops of one image at one level: the same region for the original and every codec."""

    image: str
    level: int
    box: tuple[int, int, int, int]  # top, left, height, width
    crops: dict[str, np.ndarray] = field(default_factory=dict)  # codec label -> (h, w, 3)
    bpp: dict[str, float] = field(default_factory=dict)


@dataclass
class PartialResult:
    """What one shard produced: records, Inception features per group, crops."""

    records: list[ImageRecord] = field(default_factory=list)
    features: dict[str, FeatureSet] = field(default_factory=dict)
    crops: list[CropSet] = field(default_factory=list)


@dataclass
class EvalResult:
    records: list[ImageRecord]
    aggregates: list[Aggregate]
    crops: list[CropSet]
    skipped: dict[str, str]


def group_id(record: ImageRecord) -> str:
    codec, kind, level, quality = record.group
    return f"{codec}|{kind}|{level}|{quality}"


def list_images(data: str | Path | Sequence[str | Path], max_images: int | None = None) -> list:
    """(path, name) of the images in a folder (recursive, sorted) or a list of files."""
    inputs = [data] if isinstance(data, (str, Path)) else list(data)
    found = [(path, rel.as_posix()) for path, rel in find_files(inputs)]
    return found[:max_images] if max_images else found


# ----------------------------------------------------------------------------- protocols
def paper_resize(rgb: np.ndarray, multiple: int = PAPER_MULTIPLE) -> np.ndarray:
    """(H, W, 3) uint8 → Lanczos-resized to (H − H mod m, W − W mod m), as the original's test
    script prepares its images; unchanged when already a multiple."""

    h, w = rgb.shape[:2]
    nh, nw = h - h % multiple, w - w % multiple
    if min(nh, nw) == 0:
        raise ImageError(
            f"--protocol paper needs images of at least {multiple}x{multiple} pixels, got {h}x{w}"
        )
    if (nh, nw) == (h, w):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.LANCZOS), dtype=np.uint8)


def prepare_source(codec, path, protocol: str = "ours"):
    """The image every codec codes and every metric compares with, under ``protocol``."""
    source = codec.prepare_image(path)
    if protocol != "paper":
        return source

    return codec.prepare_image(SourceImage(paper_resize(source.rgb), grey=source.grey))


# ----------------------------------------------------------------------------- our codec
def _code_oscar(
    codec, source, level: int, steps: int = 1, truncate: bool = False
) -> tuple[bytes, np.ndarray, float, float]:
    start = time.perf_counter()
    data = codec.compress(source, level)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    rec = codec.decompress(data, steps=steps, truncate=truncate)
    decode_s = time.perf_counter() - start
    if rec.ndim == 2:
        rec = np.repeat(rec[:, :, None], 3, axis=2)
    return data, rec, encode_s, decode_s


def _oscar_record(name, rgb, level, data, metrics, notes, encode_s, decode_s) -> ImageRecord:
    h, w = rgb.shape[:2]
    container = bitstream.read(data)
    return ImageRecord(
        image=name,
        codec="oscar",
        kind="oscar",
        level=level,
        setting=f"level {level}",
        quality=None,
        height=h,
        width=w,
        bytes=len(data),
        bpp=len(data) * 8 / (h * w),
        overhead_bytes=container.overhead_bytes,
        target_bpp=None,
        status="ok",
        notes=tuple(notes),
        metrics=metrics,
        encode_s=encode_s,
        decode_s=decode_s,
    )


def evaluate_oscar(
    codec,
    image_paths: Sequence[str | Path],
    levels: Sequence[int],
    metrics: Sequence[str] = ("psnr", "ms_ssim"),
    save_dir: str | Path | None = None,
    weights_dir: str | Path | None = None,
    device=None,
    progress: bool = False,
) -> list[ImageRecord]:
    """Our codec on ``image_paths`` at ``levels``: one :class:`ImageRecord` per (image, level).

    ``metrics`` must be per-image metrics; a perceptual metric whose weights are missing is left
    out with one warning line in the log. Image names are the file names.
    """
    bad = [m for m in metrics if m not in PER_IMAGE_METRICS]
    if bad:
        raise ConfigError(f"evaluate_oscar computes per-image metrics only, not {bad}")
    suite = MetricSuite(tuple(metrics), weights_dir, device or codec.device)
    for line in suite.skip_lines():
        log.warning("%s", line)
    out_dir = Path(save_dir) if save_dir is not None else None
    records = []
    for path in tqdm(list(image_paths), desc="evaluating", unit="img", disable=not progress):
        path = Path(path)
        source = codec.prepare_image(path)
        for level in levels:
            data, rec, enc_s, dec_s = _code_oscar(codec, source, level)
            values, notes = suite.image_metrics(source.rgb, rec)
            records.append(
                _oscar_record(path.name, source.rgb, level, data, values, notes, enc_s, dec_s)
            )
            if out_dir is not None:
                write_bytes_atomic(out_dir / f"L{level}" / f"{path.stem}.oscar", data, force=True)
                save_image(rec, out_dir / f"L{level}" / f"{path.stem}.png", force=True)
    return records


# ----------------------------------------------------------------------------- baselines
@dataclass
class _Decoded:
    encoding_bytes: int
    rec: np.ndarray
    encode_s: float
    decode_s: float
    metrics: dict[str, float | None]
    notes: list[str]


class _BaselineImage:
    """One baseline on one image: encodings cached per scale, each setting scored once."""

    def __init__(self, baseline: Baseline, rgb: np.ndarray, suite: MetricSuite) -> None:
        self.baseline = baseline
        self.rgb = rgb
        self.suite = suite
        self.pixels = rgb.shape[0] * rgb.shape[1]
        self.caches: dict[int, EncodingCache] = {}
        self.scored: dict[tuple[int, float], _Decoded] = {}
        self.features: dict[tuple[int, float], FeatureSet] = {}

    def cache(self, scale: int) -> EncodingCache:
        if scale not in self.caches:
            rgb = self.rgb if scale == 1 else downscale(self.rgb, scale)
            self.caches[scale] = EncodingCache(self.baseline, rgb, self.pixels)
        return self.caches[scale]

    def score(self, scale: int, quality: float) -> _Decoded:
        key = (scale, quality)
        if key not in self.scored:
            encoding = self.cache(scale).get(quality)
            start = time.perf_counter()
            rec = self.baseline.decode(encoding.data)
            if scale != 1:
                rec = upscale(rec, self.rgb.shape[0], self.rgb.shape[1])
            decode_s = time.perf_counter() - start
            values, notes = self.suite.image_metrics(self.rgb, rec)
            self.scored[key] = _Decoded(
                len(encoding.data), rec, encoding.encode_s, decode_s, values, notes
            )
        return self.scored[key]

    def feature_set(self, scale: int, quality: float) -> FeatureSet:
        key = (scale, quality)
        if key not in self.features:
            self.features[key] = self.suite.features(self.score(scale, quality).rec)
        return self.features[key]


def _codec_name(baseline: Baseline, scale: int) -> str:
    return baseline.name if scale == 1 else f"{baseline.name}-down{scale}"


def _baseline_record(name, bi, scale, quality, kind, level, target, status, extra_notes):
    scored = bi.score(scale, quality)
    h, w = bi.rgb.shape[:2]
    setting = bi.baseline.setting(quality)
    notes = list(extra_notes)
    if scale != 1:
        setting += f" at 1/{scale} size, upscaled"
        notes.append(f"coded at 1/{scale} size (Lanczos), upscaled back (bicubic)")
    return ImageRecord(
        image=name,
        codec=_codec_name(bi.baseline, scale),
        kind=kind,
        level=level,
        setting=setting,
        quality=quality,
        height=h,
        width=w,
        bytes=scored.encoding_bytes,
        bpp=scored.encoding_bytes * 8 / (h * w),
        overhead_bytes=None,
        target_bpp=target,
        status=status,
        notes=tuple(notes + scored.notes),
        metrics=scored.metrics,
        encode_s=scored.encode_s,
        decode_s=scored.decode_s,
    )


# ----------------------------------------------------------------------------- crops
def crop_box(rgb: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """The most detailed square region (largest gradient energy), on a coarse grid."""
    h, w = rgb.shape[:2]
    ch, cw = min(size, h), min(size, w)
    grey = rgb.astype(np.float64).mean(axis=2)
    energy = np.zeros_like(grey)
    energy[:, 1:] += np.abs(np.diff(grey, axis=1))
    energy[1:, :] += np.abs(np.diff(grey, axis=0))
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    step = max(1, min(ch, cw) // 4)
    best, best_box = -1.0, (0, 0, ch, cw)
    for top in range(0, h - ch + 1, step):
        for left in range(0, w - cw + 1, step):
            s = (
                integral[top + ch, left + cw]
                - integral[top, left + cw]
                - integral[top + ch, left]
                + integral[top, left]
            )
            if s > best:
                best, best_box = s, (top, left, ch, cw)
    return best_box


def _cut(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    top, left, h, w = box
    return np.ascontiguousarray(rgb[top : top + h, left : left + w])


# ----------------------------------------------------------------------------- main loop
def evaluate_images(
    codec,
    images: Sequence[tuple[Path, str]],
    baselines: Sequence[Baseline],
    suite: MetricSuite,
    options: EvalOptions = EvalOptions(),
    shard: Shard = Shard(),
    progress: bool = True,
) -> PartialResult:
    """Run the protocol on this shard's images (every ``shard.count``-th, from ``shard.index``)."""
    levels = list(options.levels or codec.model.config.level_numbers)
    paper = options.protocol == "paper"
    if paper:
        codec.effort = 0  # the original's encoder: nearest codewords
    result = PartialResult()
    result.features[REAL] = FeatureSet()
    mine = list(enumerate(images))[shard.index :: shard.count]

    def add_features(record: ImageRecord, feats: FeatureSet) -> None:
        target = result.features.setdefault(group_id(record), FeatureSet())
        target.patches += feats.patches
        target.whole += feats.whole

    # warm-up (lazy initialisation, kernel selection) so that the timings are steady ones
    if mine and options.warmup:
        first = prepare_source(codec, mine[0][1][0], options.protocol)
        _code_oscar(codec, first, levels[0], options.steps, paper)
    bar = tqdm(mine, desc="evaluating", unit="img", disable=not progress or None)
    for index, (path, name) in bar:
        bar.set_postfix_str(name[-30:])
        source = prepare_source(codec, path, options.protocol)
        rgb = source.rgb
        with_crops = index < options.crops
        box = crop_box(rgb, options.crop_size) if with_crops else (0, 0, 0, 0)
        real = suite.features(rgb)
        result.features[REAL].patches += real.patches
        result.features[REAL].whole += real.whole
        ours: dict[int, float] = {}
        crop_sets: dict[int, CropSet] = {}
        for level in levels:
            data, rec, enc_s, dec_s = _code_oscar(codec, source, level, options.steps, paper)
            values, notes = suite.image_metrics(rgb, rec)
            record = _oscar_record(name, rgb, level, data, values, notes, enc_s, dec_s)
            result.records.append(record)
            add_features(record, suite.features(rec))
            ours[level] = record.bpp
            if with_crops:
                cs = CropSet(name, level, box)
                cs.crops["original"] = _cut(rgb, box)
                cs.crops["oscar"] = _cut(rec, box)
                cs.bpp["oscar"] = record.bpp
                crop_sets[level] = cs
        for baseline in baselines:
            bi = _BaselineImage(baseline, rgb, suite)
            for level in levels:
                target = ours[level]
                match = match_rate(bi.cache(1), target)
                tries = [(1, match)]
                if match.status == "floor" or options.downscaled == "always":
                    factors = options.downscale_factors
                    tries += [(f, match_rate(bi.cache(f), target)) for f in factors]
                for scale, m in tries:
                    note = [m.note] if m.note else []
                    quality = m.encoding.quality
                    record = _baseline_record(
                        name, bi, scale, quality, "matched", level, target, m.status, note
                    )
                    result.records.append(record)
                    add_features(record, bi.feature_set(scale, m.encoding.quality))
                    if with_crops:
                        rec = bi.score(scale, m.encoding.quality).rec
                        crop_sets[level].crops[record.codec] = _cut(rec, box)
                        crop_sets[level].bpp[record.codec] = record.bpp
            if options.sweep:
                for quality in baseline.sweep:
                    record = _baseline_record(name, bi, 1, quality, "sweep", None, None, "ok", [])
                    result.records.append(record)
                    add_features(record, bi.feature_set(1, quality))
        result.crops += [crop_sets[lv] for lv in levels if lv in crop_sets]
    return result


def finalize(parts: Sequence[PartialResult], suite: MetricSuite) -> EvalResult:
    """Merge shards, compute the data-set metrics (FID, KID) per group, and aggregate."""
    records = sorted(
        (r for p in parts for r in p.records),
        key=lambda r: (r.image, r.kind, r.codec, r.level if r.level is not None else -1),
    )
    merged: dict[str, FeatureSet] = {}
    for part in parts:
        for key, feats in part.features.items():
            target = merged.setdefault(key, FeatureSet())
            target.patches += feats.patches
            target.whole += feats.whole
    aggregates = aggregate(records)
    if suite.dataset and REAL in merged:
        real = merged[REAL].arrays()
        ids = {}
        for r in records:
            ids.setdefault(r.group, group_id(r))
        final = []
        for a in tqdm(aggregates, desc="FID/KID", unit="group", disable=None):
            key = ids[(a.codec, a.kind, a.level, a.quality)]
            fake = merged.get(key, FeatureSet()).arrays()
            values, notes = suite.dataset_metrics(real, fake)
            final.append(_with_dataset(a, values, notes))
        aggregates = final
    crops = sorted((c for p in parts for c in p.crops), key=lambda c: (c.image, c.level))
    return EvalResult(records, aggregates, crops, dict(suite.skipped))


def _with_dataset(a: Aggregate, values, notes) -> Aggregate:
    return replace(a, dataset_metrics=values, notes=tuple(dict.fromkeys([*a.notes, *notes])))
