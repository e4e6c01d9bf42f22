"""Fit the per-level index priors from the indices a model produces on a set of images."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from oscar.coding.codec import OscarCodec
from oscar.coding.priors import IndexPriors
from oscar.filetypes import find_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PriorFitReport:
    """Per level: tokens counted, empirical entropy and cost under the fitted table (bits/token)."""

    level: int
    images: int
    tokens: int
    used_entries: int
    codebook_size: int
    entropy_bits: float
    coded_bits: float
    fixed_bits: int


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Image files among ``paths``: files as given, folders searched recursively, sorted."""
    return [path for path, _ in find_files(paths)]


def count_indices(
    codec: OscarCodec, images: Sequence[Path], levels: Sequence[int], progress: bool = True
) -> dict[int, np.ndarray]:
    """Histogram of the indices of every level over ``images`` (latent encoded once each)."""
    counts = {lv: np.zeros(codec.rate(lv).codebook_size, np.int64) for lv in levels}
    for path in tqdm(images, desc="counting indices", disable=not progress, unit="img"):
        source = codec.prepare_image(path)
        y, _ = codec.encode_latents([source])
        for lv in levels:
            idx = codec.encode_indices(y, lv)[0]
            counts[lv] += np.bincount(idx.reshape(-1), minlength=counts[lv].size)
    return counts


def fit_priors(
    codec: OscarCodec,
    images: Sequence[Path],
    levels: Sequence[int] | None = None,
    progress: bool = True,
) -> tuple[IndexPriors, list[PriorFitReport]]:
    """Fit integer tables for ``levels`` (default all); returns them and a report per level."""
    levels = list(levels or codec.model.config.level_numbers)
    counts = count_indices(codec, images, levels, progress)
    priors = IndexPriors.from_counts(counts)
    reports = []
    for lv in levels:
        c = counts[lv]
        total = int(c.sum())
        p = c[c > 0] / max(total, 1)
        entropy = abs(float(-(p * np.log2(p)).sum())) if total else 0.0
        coded = priors.cross_entropy_bits(lv, c) / max(total, 1)
        reports.append(
            PriorFitReport(
                lv,
                len(images),
                total,
                int((c > 0).sum()),
                c.size,
                entropy,
                coded,
                codec.rate(lv).bits_per_index,
            )
        )
    return priors, reports
