"""Typed evaluation records, their aggregation per (codec, level), and JSON / CSV files.

An :class:`ImageRecord` is one image coded once by one codec at one setting. ``kind`` says why:

- ``oscar``: our codec at ``level``;
- ``matched``: a baseline at the setting whose bpp is closest to ours on that image at ``level``
  (``target_bpp`` is our bpp; ``status`` is ``floor`` when the baseline cannot go that low);
- ``sweep``: a baseline at one setting of its own range (``level`` is None), for full curves.

:func:`aggregate` groups records by (codec, kind, level, setting-for-sweeps) into
:class:`Aggregate` rows: means over images of bpp and each metric, plus the pooled rate
(all bytes over all pixels). Data-set metrics (FID, KID) are attached by the runner.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

RecordKind = Literal["oscar", "matched", "sweep"]


@dataclass(frozen=True)
class ImageRecord:
    """One image, one codec, one setting.

    Attributes:
        image: name of the image relative to the data folder.
        codec: ``oscar``, a baseline name, or ``NAME-down2`` / ``NAME-down4`` (coded at ½ or ¼
            size, then upscaled to the original size).
        kind: ``oscar``, ``matched`` or ``sweep`` (module docstring).
        level: our rate level (``oscar`` and ``matched``), None for sweeps.
        setting: human-readable setting (``level 3``, ``quality 37``, ``target PSNR (dB) 31``).
        quality: the baseline's numeric setting (None for ours).
        height, width: original image size.
        bytes: size of the coded file (everything a decoder needs).
        bpp: bytes × 8 / (height × width), over the ORIGINAL pixel count.
        overhead_bytes: ours only: header, side info, length field and checksum.
        target_bpp: matched records: our bpp on this image at this level.
        status: ``ok``, ``floor`` (cannot go as low as the target), ``ceiling``.
        notes: anything a reader must know (the floor, MS-SSIM scales used, …).
        metrics: metric name → value (None where not defined for this image).
        encode_s, decode_s: wall-clock seconds for the chosen setting.
    """

    image: str
    codec: str
    kind: RecordKind
    level: int | None
    setting: str
    quality: float | None
    height: int
    width: int
    bytes: int
    bpp: float
    overhead_bytes: int | None
    target_bpp: float | None
    status: str
    notes: tuple[str, ...]
    metrics: Mapping[str, float | None]
    encode_s: float
    decode_s: float

    @property
    def group(self) -> tuple[str, str, int | None, float | None]:
        """Aggregation key: (codec, kind, level, quality for sweeps)."""
        return (self.codec, self.kind, self.level, self.quality if self.kind == "sweep" else None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["notes"] = list(self.notes)
        data["metrics"] = {k: _finite(v) for k, v in self.metrics.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageRecord:
        values = dict(data)
        values["notes"] = tuple(values.get("notes", ()))
        values["metrics"] = {
            k: (None if v is None else float(v)) for k, v in values["metrics"].items()
        }
        return cls(**values)


@dataclass(frozen=True)
class Aggregate:
    """Means over the images of one (codec, kind, level / sweep setting).

    ``bpp`` is the mean of per-image bpp (the usual convention; Kodak images share one size),
    ``bpp_pooled`` all bytes × 8 over all pixels. ``metrics`` are per-image means over the images
    where the metric is defined (``counts`` says how many); ``dataset_metrics`` are FID / KID of
    the group. ``statuses`` counts images per status (e.g. ``{"floor": 3}`` when the codec could
    not go as low as ours on 3 images).
    """

    codec: str
    kind: RecordKind
    level: int | None
    quality: float | None
    setting: str
    images: int
    bpp: float
    bpp_pooled: float
    bytes_mean: float
    overhead_bytes_mean: float | None
    target_bpp: float | None
    metrics: Mapping[str, float | None]
    counts: Mapping[str, int]
    dataset_metrics: Mapping[str, float | None] = field(default_factory=dict)
    statuses: Mapping[str, int] = field(default_factory=dict)
    encode_s: float = 0.0
    decode_s: float = 0.0
    notes: tuple[str, ...] = ()

    @property
    def all_metrics(self) -> dict[str, float | None]:
        return {**self.metrics, **self.dataset_metrics}

    @property
    def fully_matched(self) -> bool:
        return set(self.statuses) <= {"ok"}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["metrics"] = {k: _finite(v) for k, v in self.metrics.items()}
        data["dataset_metrics"] = {k: _finite(v) for k, v in self.dataset_metrics.items()}
        data["notes"] = list(self.notes)
        return data


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def aggregate(records: Sequence[ImageRecord]) -> list[Aggregate]:
    """Group records and average them (see :class:`Aggregate`); order: codec, kind, level/q."""
    groups: dict[tuple, list[ImageRecord]] = {}
    for record in records:
        groups.setdefault(record.group, []).append(record)
    out = []
    for (codec, kind, level, quality), rows in groups.items():
        names = list(dict.fromkeys(k for r in rows for k in r.metrics))
        metrics: dict[str, float | None] = {}
        counts: dict[str, int] = {}
        for name in names:
            vals = [r.metrics.get(name) for r in rows]
            vals = [v for v in vals if v is not None]
            counts[name] = len(vals)
            # PSNR of a lossless image is +inf; a mean with it would be too: keep it explicit
            metrics[name] = _mean(vals)
        statuses: dict[str, int] = {}
        for r in rows:
            statuses[r.status] = statuses.get(r.status, 0) + 1
        overheads = [r.overhead_bytes for r in rows if r.overhead_bytes is not None]
        targets = [r.target_bpp for r in rows if r.target_bpp is not None]
        pixels = sum(r.height * r.width for r in rows)
        notes = [n for r in rows for n in r.notes if not n.startswith("cannot go")]
        out.append(
            Aggregate(
                codec=codec,
                kind=kind,
                level=level,
                quality=quality,
                setting=rows[0].setting if kind == "sweep" else f"level {level}",
                images=len(rows),
                bpp=float(_mean(r.bpp for r in rows) or 0.0),
                bpp_pooled=sum(r.bytes for r in rows) * 8 / pixels,
                bytes_mean=float(_mean(r.bytes for r in rows) or 0.0),
                overhead_bytes_mean=_mean(overheads),
                target_bpp=_mean(targets),
                metrics=metrics,
                counts=counts,
                statuses=statuses,
                encode_s=float(_mean(r.encode_s for r in rows) or 0.0),
                decode_s=float(_mean(r.decode_s for r in rows) or 0.0),
                notes=tuple(dict.fromkeys(notes)),
            )
        )
    kind_order = {"oscar": 0, "matched": 1, "sweep": 2}
    out.sort(
        key=lambda a: (
            kind_order[a.kind],
            a.codec != "oscar",
            a.codec,
            -1 if a.level is None else a.level,
            a.quality or 0.0,
        )
    )
    return out


# ----------------------------------------------------------------------------- files
def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")


def write_records(path_stem: Path, records: Sequence[ImageRecord]) -> list[Path]:
    """``STEM.json`` (list of records) and ``STEM.csv`` (one row per record, metrics as columns)."""
    json_path = path_stem.with_suffix(".json")
    write_json(json_path, [r.to_dict() for r in records])
    metric_names = list(dict.fromkeys(k for r in records for k in r.metrics))
    csv_path = path_stem.with_suffix(".csv")
    base = [
        "image",
        "codec",
        "kind",
        "level",
        "setting",
        "quality",
        "height",
        "width",
        "bytes",
        "bpp",
        "overhead_bytes",
        "target_bpp",
        "status",
        "encode_s",
        "decode_s",
    ]
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*base, *metric_names, "notes"])
        for r in records:
            d = r.to_dict()
            writer.writerow(
                [_cell(d[k]) for k in base]
                + [_cell(d["metrics"].get(m)) for m in metric_names]
                + ["; ".join(r.notes)]
            )
    return [json_path, csv_path]


def write_aggregates(path_stem: Path, rows: Sequence[Aggregate]) -> list[Path]:
    json_path = path_stem.with_suffix(".json")
    write_json(json_path, [a.to_dict() for a in rows])
    names = list(dict.fromkeys(k for a in rows for k in a.all_metrics))
    csv_path = path_stem.with_suffix(".csv")
    base = [
        "codec",
        "kind",
        "level",
        "setting",
        "images",
        "bpp",
        "bpp_pooled",
        "bytes_mean",
        "overhead_bytes_mean",
        "target_bpp",
        "encode_s",
        "decode_s",
    ]
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*base, *names, "statuses", "notes"])
        for a in rows:
            d = a.to_dict()
            merged = a.all_metrics
            writer.writerow(
                [_cell(d[k]) for k in base]
                + [_cell(_finite(merged.get(m))) for m in names]
                + [
                    " ".join(f"{k}={v}" for k, v in a.statuses.items()),
                    "; ".join(a.notes),
                ]
            )
    return [json_path, csv_path]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
