"""Training crops from image folders, deterministic in (seed, sample number).

Sample number n is drawn from its own generator seeded with (seed, n): which image, where to
crop, horizontal flip, a rotation by a multiple of 90° and, with ``colour_augment``, a permutation
of the colour channels and a saturation change. Nothing depends on iteration order,
so a resumed run draws exactly the samples the uninterrupted run would have, whatever the number
of worker processes. Step s of a run with global batch B and P processes uses sample numbers
s·B … s·B + B − 1, split in P equal contiguous parts (process p takes the p-th).

Images smaller than the patch are padded by edge replication (as the codec pads) rather than
upscaled, so the model never sees interpolated texture.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from oscar.errors import ConfigError
from oscar.filetypes import find_files
from oscar.io import load_image

log = logging.getLogger(__name__)


def list_images(folders: Sequence[str | Path]) -> list[Path]:
    """Image files under ``folders`` (recursive, sorted; files may be given directly)."""
    images = [path for path, _ in find_files(folders)]
    missing = [str(f) for f in folders if not Path(f).exists()]
    if missing:
        raise ConfigError(f"data folder(s) not found: {', '.join(missing)}")
    return images


class CropDataset(Dataset):
    """Random crops; item ``n`` is a (3, P, P) float tensor in [-1, 1], same for every call."""

    def __init__(
        self,
        images: Sequence[Path],
        patch_size: int,
        seed: int,
        cache: bool = True,
        colour_augment: bool = False,
    ) -> None:
        if not images:
            raise ConfigError("no training images found")
        self.images = list(images)
        self.patch_size = patch_size
        self.seed = seed
        self.colour_augment = colour_augment
        self._cache: list[np.ndarray] | None = None
        if cache:
            self._cache = [load_image(p).rgb for p in self.images]
            mb = sum(a.nbytes for a in self._cache) / 2**20
            log.info("cached %d training images (%.0f MB)", len(self.images), mb)

    def __len__(self) -> int:  # sample numbers are unbounded; the sampler decides
        return 2**62

    def _image(self, i: int) -> np.ndarray:
        return self._cache[i] if self._cache is not None else load_image(self.images[i]).rgb

    def __getitem__(self, n: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, n])
        image = self._image(int(rng.integers(len(self.images))))
        p = self.patch_size
        h, w = image.shape[:2]
        top = int(rng.integers(max(h - p, 0) + 1))
        left = int(rng.integers(max(w - p, 0) + 1))
        crop = image[top : top + p, left : left + p]
        if crop.shape[0] < p or crop.shape[1] < p:
            crop = np.pad(
                crop, ((0, p - crop.shape[0]), (0, p - crop.shape[1]), (0, 0)), mode="edge"
            )
        if rng.integers(2):
            crop = crop[:, ::-1]
        crop = np.rot90(crop, k=int(rng.integers(4)))
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float() / 127.5 - 1.0
        if self.colour_augment:  # drawn last: the crops above stay those of a run without it
            x = recolour(x, rng.permutation(3), float(rng.uniform(0.5, 1.75)))
        return x


_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)  # BT.601


def recolour(x: torch.Tensor, order: np.ndarray, saturation: float) -> torch.Tensor:
    """``x`` (3, H, W in [-1, 1]) with its channels in ``order`` and its saturation scaled about
    the luma (clipped to the range). A small training set has few saturated or unusual colours;
    a decoder trained on it alone shifts them (docs/model-card-small.md)."""
    x = x[torch.as_tensor(order)]
    luma = (x * _LUMA).sum(0, keepdim=True)
    return (luma + saturation * (x - luma)).clamp(-1.0, 1.0)


class StepSampler(Sampler[list[int]]):
    """Yields this process's sample numbers for steps ``start_step``, ``start_step + 1``, …"""

    def __init__(
        self,
        batch_size: int,
        start_step: int,
        process_index: int = 0,
        num_processes: int = 1,
        stream: int = 0,
    ) -> None:
        self.batch_size = batch_size  # per process
        self.start_step = start_step
        self.process_index = process_index
        self.num_processes = num_processes
        # Different stages draw from different streams of sample numbers.
        self.offset = stream << 40

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        global_batch = self.batch_size * self.num_processes
        while True:
            first = self.offset + step * global_batch + self.process_index * self.batch_size
            yield list(range(first, first + self.batch_size))
            step += 1

    def __len__(self) -> int:
        return 2**62


def crop_loader(
    dataset: CropDataset,
    batch_size: int,
    start_step: int,
    process_index: int,
    num_processes: int,
    num_workers: int,
    stream: int,
) -> DataLoader:
    sampler = StepSampler(batch_size, start_step, process_index, num_processes, stream)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=False,
    )
