"""Per-level index priors as integer frequency tables (docs/method.md §6.8).

A prior is an int32 table of K frequencies, each at least 1, summing to at most 2**16. The
entropy coder turns it into probabilities by exact division, so encoder and decoder agree bit
for bit on every machine. Tables are fitted from index counts with a Krichevsky–Trofimov
(add-½) estimate and then rounded so that no symbol, even one never seen, gets frequency 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save, save_file

from oscar.errors import ModelError
from oscar.filetypes import read_bounded
from oscar.io import give_usual_permissions
from oscar.limits import MAX_PRIORS_BYTES
from oscar.rates import RateLevel

TABLE_TOTAL = 2**16


def quantize_frequencies(counts: np.ndarray, total: int = TABLE_TOTAL) -> np.ndarray:
    """Counts (K,) ≥ 0 → int32 frequencies ≥ 1 summing to at most ``total`` (K ≤ total)."""
    counts = np.asarray(counts, dtype=np.float64)
    k = counts.size
    if k > total:
        raise ValueError(f"cannot give {k} symbols a frequency of at least 1 out of {total}")
    p = (counts + 0.5) / (counts.sum() + 0.5 * k)
    # Reserve one unit per symbol for the floor, share the rest in proportion.
    freq = 1 + np.floor(p * (total - k)).astype(np.int64)
    return freq.astype(np.int32)


@dataclass(frozen=True)
class IndexPriors:
    """Frequency tables keyed by level number."""

    tables: Mapping[int, np.ndarray]

    def table(self, level: int) -> np.ndarray:
        try:
            return self.tables[level]
        except KeyError:
            raise ModelError(f"the model's priors have no table for level {level}") from None

    def probabilities(self, level: int) -> np.ndarray:
        """float64 probabilities by exact division of integers (identical on every machine)."""
        t = self.table(level).astype(np.float64)
        return t / t.sum()

    def entropy_bits(self, level: int) -> float:
        """Entropy of the level's prior in bits per index: what an index costs on average when
        the indices follow the prior (at most log2 K)."""
        p = self.probabilities(level)
        return float(-(p * np.log2(p)).sum())

    def cross_entropy_bits(self, level: int, counts: np.ndarray) -> float:
        """Ideal cost in bits of symbols with these counts under this prior (an estimate)."""
        return float(-(np.asarray(counts) * np.log2(self.probabilities(level))).sum())

    @classmethod
    def from_counts(cls, counts: Mapping[int, np.ndarray]) -> IndexPriors:
        return cls({level: quantize_frequencies(c) for level, c in counts.items()})

    @classmethod
    def uniform(cls, levels: tuple[RateLevel, ...]) -> IndexPriors:
        return cls({lv.level: np.ones(lv.codebook_size, np.int32) for lv in levels})

    def as_tensors(self) -> dict[str, torch.Tensor]:
        return {
            f"level.{level}": torch.from_numpy(np.ascontiguousarray(t, dtype=np.int32))
            for level, t in sorted(self.tables.items())
        }

    def save(self, path: str | Path | BinaryIO) -> None:
        """Write the tables as safetensors to a path or to a binary file object."""
        if not isinstance(path, (str, Path)):
            path.write(save(self.as_tensors()))
            return
        save_file(self.as_tensors(), str(path))
        give_usual_permissions(path)

    @classmethod
    def load(cls, path: str | Path, levels: tuple[RateLevel, ...]) -> IndexPriors:
        """Read and validate tables against the rate table (size K, values ≥ 1, bounded sum)."""
        path = Path(path)
        data = read_bounded(path, "priors", MAX_PRIORS_BYTES)  # bounded, regular file only
        try:
            raw = load(data)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"priors at {path} are not readable safetensors: {exc}") from exc
        by_level = {lv.level: lv for lv in levels}
        tables: dict[int, np.ndarray] = {}
        for key, tensor in sorted(raw.items()):  # a fixed order: the same first error
            name, _, number = key.partition(".")
            if name != "level" or not number.isdigit() or int(number) not in by_level:
                raise ModelError(f"{path}: unexpected prior table {key!r}")
            rate = by_level[int(number)]
            if tensor.dtype != torch.int32 or tensor.shape != (rate.codebook_size,):
                raise ModelError(
                    f"{path}: table {key} must be int32 of shape ({rate.codebook_size},), "
                    f"got {tensor.dtype} {tuple(tensor.shape)}"
                )
            table = tensor.numpy().copy()
            if table.min() < 1 or int(table.astype(np.int64).sum()) > TABLE_TOTAL:
                raise ModelError(f"{path}: table {key} needs entries >= 1 summing to <= 2**16")
            tables[rate.level] = table
        return cls(tables)
