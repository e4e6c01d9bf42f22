"""File-name suffixes and file discovery shared by the CLI and dataset code (no heavy imports)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from oscar.errors import ImageError, OscarError

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


def open_regular_file(path: Path, error: type[OscarError] = ImageError) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file (symbolic links followed); anything
    else is one ``error`` naming it: a FIFO would block, a device would stream for ever, a
    folder cannot be read. Opened without blocking and checked on the descriptor (no race
    between a check and the open), then switched back to blocking reads."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory") from None
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise error(f"{path}: is a directory")
        if not stat.S_ISREG(mode):
            raise error(f"{path}: not a regular file ({_file_kind(mode)})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"))
    kinds += ((stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")
