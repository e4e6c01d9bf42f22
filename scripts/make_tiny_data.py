"""Make the images configs/train_tiny.yaml trains on, from the package's sample image alone.

    python scripts/make_tiny_data.py                 # writes data/tiny/train and data/tiny/heldout
    python scripts/make_tiny_data.py --out DIR

Twelve training crops and two held-out crops (160 × 160 pixels, flipped, rotated and with their
colour channels permuted so that the tiny recipe sees some variety). Deterministic; nothing is
downloaded. ``data/`` and ``runs/`` are ignored by git; ``rm -rf data/tiny runs/tiny`` removes
everything the tiny recipe made.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import oscar

SIZE = 160


def crops(rgb: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = rgb.shape[:2]
    out = []
    for _ in range(count):
        top, left = int(rng.integers(0, h - SIZE)), int(rng.integers(0, w - SIZE))
        crop = rgb[top : top + SIZE, left : left + SIZE]
        crop = np.rot90(crop, int(rng.integers(0, 4)))
        if rng.integers(0, 2):
            crop = crop[:, ::-1]
        out.append(np.ascontiguousarray(crop[:, :, rng.permutation(3)]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/tiny", help="folder to write (default: data/tiny)")
    args = parser.parse_args(argv)
    rgb = np.asarray(Image.open(oscar.sample_image_path()).convert("RGB"))
    out = Path(args.out)
    for split, count, seed in (("train", 12, 0), ("heldout", 2, 1)):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        for i, crop in enumerate(crops(rgb, count, seed)):
            Image.fromarray(crop).save(folder / f"{split}-{i:02d}.png")
    print(f"wrote 12 training and 2 held-out images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
