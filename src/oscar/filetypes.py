"""File-name suffixes, file discovery and bounded reads, shared by the CLI, model folders and
dataset code (no heavy imports)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from oscar.errors import ImageError, ModelError, OscarError
from oscar.limits import MAX_METADATA_BYTES

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


def read_bounded(path: Path, what: str, limit: int = MAX_METADATA_BYTES) -> bytes:
    """A model folder's file, whole, if it is a regular file of at most ``limit`` bytes; else
    one ModelError naming it. The size is checked on the open descriptor before reading, and
    at most ``limit + 1`` bytes are read (should the file grow meanwhile)."""
    if not path.exists():
        raise ModelError(f"{what} is missing: {path}")
    try:
        with open_regular_file(path, ModelError) as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(min(size, limit) + 1)
    except OSError as exc:
        raise ModelError(f"{what} at {path} is not readable: {exc.strerror or exc}") from None
    except ModelError as exc:
        raise ModelError(f"{what}: {exc}") from None
    if len(data) > limit:
        raise ModelError(
            f"{what} at {path} is larger than {limit} bytes ({max(size, len(data))}): "
            "refused without reading it"
        )
    return data
