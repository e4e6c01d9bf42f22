"""File-name suffixes and file discovery shared by the CLI and dataset code (no heavy imports)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".bmp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".gif",
    ".jxl",
    ".avif",
)
OSCAR_SUFFIX = ".oscar"

# What `oscar decompress` and oscar.io.save_image can write: suffix -> Pillow format name.
OUTPUT_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".ppm": "PPM",
    ".pgm": "PPM",
}


def find_files(
    inputs: Iterable[str | Path], suffixes: Iterable[str] = IMAGE_SUFFIXES
) -> list[tuple[Path, Path]]:
    """(file, name relative to its input) for each file given and each file with a matching
    suffix found (recursively, sorted) in each folder given."""
    suffixes = tuple(s.lower() for s in suffixes)
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in suffixes
            )
            found += [(f, f.relative_to(path)) for f in files]
        else:
            found.append((path, Path(path.name)))
    return found
