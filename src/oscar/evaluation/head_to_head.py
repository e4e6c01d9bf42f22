"""Per image, per level: does our file beat each baseline's file of about the same size?

Means hide how often a codec wins. For every image and level, our record is compared with each
baseline's ``matched`` record (its setting closest to our bytes on that image; down-scaled
variants count as baselines of their own). The outcome uses both axes, so that a baseline
cannot lose just by spending fewer bits, nor we win by spending more:

- ``win``: our metric is at least as good and our file is not larger;
- ``loss``: the baseline's metric is at least as good and its file is not larger;
- ``mixed``: each is better on one axis (or the metric is missing).

Rows are (level, baseline, metric) with the counts over images.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from oscar.evaluation.metrics import higher_is_better
from oscar.evaluation.records import ImageRecord


@dataclass(frozen=True)
class HeadToHead:
    level: int
    codec: str
    metric: str
    wins: int
    losses: int
    mixed: int

    @property
    def images(self) -> int:
        return self.wins + self.losses + self.mixed


def outcome(ours: ImageRecord, theirs: ImageRecord, metric: str) -> str:
    """``win``, ``loss`` or ``mixed`` for one image (module docstring)."""
    a, b = ours.metrics.get(metric), theirs.metrics.get(metric)
    if a is None or b is None:
        return "mixed"
    if not higher_is_better(metric):
        a, b = -a, -b
    if a >= b and ours.bytes <= theirs.bytes:
        return "win"
    if b >= a and theirs.bytes <= ours.bytes:
        return "loss"
    return "mixed"


def head_to_head(records: Sequence[ImageRecord], metrics: Iterable[str]) -> list[HeadToHead]:
    """Counts per (level, baseline, metric), sorted by level, then baseline, then metric."""
    ours = {(r.image, r.level): r for r in records if r.kind == "oscar"}
    counts: dict[tuple[int, str, str], dict[str, int]] = {}
    for r in records:
        mine = ours.get((r.image, r.level))
        if r.kind != "matched" or mine is None or r.level is None:
            continue
        for metric in metrics:
            tally = counts.setdefault((r.level, r.codec, metric), {"win": 0, "loss": 0, "mixed": 0})
            tally[outcome(mine, r, metric)] += 1
    return [
        HeadToHead(level, codec, metric, t["win"], t["loss"], t["mixed"])
        for (level, codec, metric), t in sorted(counts.items())
    ]


def write_head_to_head(path: Path, rows: Sequence[HeadToHead]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["level", "codec", "metric", "wins", "losses", "mixed", "images"])
        for r in rows:
            writer.writerow([r.level, r.codec, r.metric, r.wins, r.losses, r.mixed, r.images])
