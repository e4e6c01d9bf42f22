"""Images in and out: the colour-mode policy, pad/crop, and atomic file writes.

Input policy (what ``load_image`` / ``to_rgb`` do with each kind of image):

- RGB, 8-bit: used as is.
- Greyscale (L, 1-bit, 16-bit I;16, 32-bit I, float F): coded as RGB with R = G = B; the file's
  grey flag is set and decoding returns a greyscale image (the mean of the decoded channels).
- 16-bit (grey or RGB PNG/TIFF): reduced to 8 bits by rounding (v · 255 / 65535); the codec is
  8-bit, as every metric here is.
- Alpha (RGBA, LA, PA, palette with transparency): composited over white; alpha is not coded.
- Palette (P): expanded to RGB.
- CMYK, YCbCr, LAB, HSV: converted to RGB by Pillow (no ICC colour management).
- EXIF orientation: applied, so the image is coded upright as viewers show it.
- Animated images: the first frame.
- Float images (TIFF mode F, float arrays): NaN becomes 0.

Refused, each with one ImageError naming the file: files that are not images, empty, truncated
or zero-sized; images over the pixel limit (checked from the header, before any pixel is
decoded: decompression bombs cost nothing); formats outside ``READ_FORMATS`` whatever the file's
name (Pillow has readers that run other programs, such as EPS through Ghostscript). Sides over
65535 are refused by the codec (format v1 stores 16-bit sides).

Sizes: any size from 1×1 up to the pixel limit; images are padded (edge replication) to the
level's multiple, never resized, and the decoder crops back to the original size.

Inputs must be regular files (``open_regular_file``): FIFOs, devices and folders are refused
before anything is read, so nothing blocks.

Outputs are written atomically (``atomic_output``): a temporary file ``.NAME.oscar-tmp-XXXXXXXX``
beside the target, created with O_EXCL and written through that descriptor only, synced, then
renamed; any failure (an exception, SIGINT, SIGTERM or SIGHUP, a full disk, a folder that cannot
be written) leaves the target as it was and no temporary file, and OSErrors become one
OutputError. Only SIGKILL can leave a temporary file, recognisable by its name.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from oscar.errors import ImageError, OscarError, OutputError, OutputExistsError
from oscar.filetypes import OUTPUT_FORMATS, open_regular_file
from oscar.limits import DEFAULT_MAX_PIXELS
from oscar.rates import padded_size


@dataclass(frozen=True)
class SourceImage:
    """An input image after the policy: RGB uint8 (H, W, 3) and whether it was greyscale."""

    rgb: np.ndarray
    grey: bool = False

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def _to_uint8(array: np.ndarray, maximum: float) -> np.ndarray:
    values = np.nan_to_num(array.astype(np.float64), nan=0.0)  # NaN (float TIFFs) → black
    return np.clip(np.rint(values * (255.0 / maximum)), 0, 255).astype(np.uint8)


def _white_composite(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(image: Image.Image | np.ndarray) -> SourceImage:
    """Apply the input policy to a Pillow image or an array (H, W), (H, W, 3) or (H, W, 4)."""
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if not isinstance(image, Image.Image):
        raise ImageError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    mode = image.mode
    if mode in ("1", "L"):
        grey = np.asarray(image.convert("L"), dtype=np.uint8)
        return SourceImage(np.repeat(grey[:, :, None], 3, axis=2), grey=True)
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        largest = values[np.isfinite(values)].max(initial=0)
        maximum = 65535.0 if (mode.startswith("I;16") or largest > 255) else 255.0
        grey = _to_uint8(values, maximum)
        return SourceImage(np.repeat(grey[:, :, None], 3, axis=2), grey=True)
    if mode in ("LA", "La"):
        return SourceImage(np.asarray(_white_composite(image)), grey=True)
    has_alpha = mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        return SourceImage(np.asarray(_white_composite(image)))
    if mode == "RGB":
        return SourceImage(np.asarray(image, dtype=np.uint8))
    try:
        return SourceImage(np.asarray(image.convert("RGB"), dtype=np.uint8))
    except ValueError as exc:  # a mode Pillow cannot convert (e.g. LAB in some builds)
        raise ImageError(f"cannot convert image mode {mode} to RGB: {exc}") from None


def _array_to_rgb(array: np.ndarray) -> SourceImage:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"image array is empty: {array.shape}")
    if array.dtype == np.uint8:
        data = array
    elif array.dtype == np.uint16:
        data = _to_uint8(array, 65535.0)
    elif np.issubdtype(array.dtype, np.floating):
        data = _to_uint8(np.clip(array, 0.0, 1.0), 1.0)  # floats are taken as [0, 1]
    else:
        raise ImageError(f"unsupported image array dtype {array.dtype}")
    channels = data.shape[2]
    if channels == 1:
        return SourceImage(np.repeat(data, 3, axis=2), grey=True)
    if channels == 4:
        alpha = data[:, :, 3:4].astype(np.float64) / 255.0
        rgb = data[:, :, :3].astype(np.float64) * alpha + 255.0 * (1.0 - alpha)
        return SourceImage(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    return SourceImage(np.ascontiguousarray(data))


def _exact_16bit_rgb(image: Image.Image, file: BinaryIO) -> np.ndarray | None:
    """Pillow keeps only the high byte of 16-bit RGB PNGs; read them exactly with imagecodecs.

    Returns None (and Pillow's reading is used) for other images or without imagecodecs.
    """
    if image.format != "PNG" or image.mode not in ("RGB", "RGBA") or _png_bit_depth(file) != 16:
        return None
    try:
        import imagecodecs  # lazy: the eval extra, optional here (Pillow reads otherwise)

        file.seek(0)
        array = imagecodecs.png_decode(file.read())
    except Exception:
        return None
    if array.dtype != np.uint16:
        return None
    return _orient(array, image.getexif().get(0x0112, 1))


def _png_bit_depth(file: BinaryIO) -> int:
    """Bit depth from the IHDR chunk (byte 24 of a PNG file)."""
    position = file.tell()
    file.seek(0)
    head = file.read(25)
    file.seek(position)
    return head[24] if len(head) == 25 else 8


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W, C) array, as ImageOps.exif_transpose does."""
    t = np.swapaxes
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: t(a, 0, 1),
        6: lambda a: t(a, 0, 1)[:, ::-1],
        7: lambda a: t(a, 0, 1)[::-1, ::-1],
        8: lambda a: t(a, 0, 1)[::-1],
    }
    return np.ascontiguousarray(ops.get(orientation, lambda a: a)(array))


# Formats we read: those the suffixes in oscar.filetypes name. A file is identified by its
# content, not its name, so the list is enforced when opening: Pillow knows some forty more,
# some of which run other programs (EPS calls Ghostscript) or see little fuzzing.
READ_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "DIB", "TIFF", "PPM", "GIF", "AVIF", "JXL")
_PILLOW_LIMIT_LOCK = threading.Lock()


def _open_limited(path: Path | BinaryIO, max_pixels: int) -> Image.Image:
    """Image.open restricted to READ_FORMATS, with Pillow's own bomb check at our limit.

    Pillow refuses images over 2 · Image.MAX_IMAGE_PIXELS (179 M pixels by default) while it
    parses the header, and before the few allocations some formats make while opening (a GIF
    frame's disposal area). Left alone, that would override ``max_pixels`` both ways; so while
    the header is read the setting is ``max_pixels / 2`` (Pillow refuses above ``max_pixels``)
    and then restored: a scoped change, under a lock.
    """
    Image.init()
    formats = [f for f in READ_FORMATS if f in Image.OPEN]
    with _PILLOW_LIMIT_LOCK, warnings.catch_warnings():
        # Pillow warns above MAX_IMAGE_PIXELS, half our limit: not a problem of ours.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels / 2  # type: ignore[assignment]
        try:
            return Image.open(path, formats=formats)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def load_image(
    path: str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    check_size: Callable[[int, int], None] | None = None,
) -> SourceImage:
    """Read an image file and apply the input policy; refuses images over ``max_pixels``.

    The size is checked from the header, before any pixel is decoded, and so is
    ``check_size(height, width)`` if given (the codec's memory budget). Every failure of the file
    (missing, not a regular file, unreadable, truncated, unsupported, too large) is one
    :class:`ImageError` naming the file.
    """
    path = Path(path)
    refused = f"the limit of {max_pixels} (refused before decoding; raise it with --max-pixels)"
    try:
        with open_regular_file(path) as file, _open_limited(file, max_pixels) as image:
            width, height = image.size
            if width < 1 or height < 1:
                raise ImageError(f"{path}: image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise ImageError(f"{path}: {width}x{height} pixels exceed {refused}")
            if check_size is not None:
                check_size(height, width)
            exact = _exact_16bit_rgb(image, file)
            if exact is not None:
                return _array_to_rgb(exact)
            image = ImageOps.exif_transpose(image)
            image.load()
            return to_rgb(image)
    except OscarError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except Image.DecompressionBombError as exc:
        count = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{count.group(1)} pixels" if count else "image pixels"
        raise ImageError(f"{path}: {pixels} exceed {refused}") from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{path}: not an image file in a format oscar reads ({', '.join(READ_FORMATS)})"
        ) from None
    except MemoryError:
        raise ImageError(f"{path}: out of memory while decoding the image") from None
    except Exception as exc:
        # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error, EOFError,
        # IndexError, ... on hostile files; each is one clear error here, not a traceback.
        raise ImageError(f"{path}: cannot decode image: {type(exc).__name__}: {exc}") from None


def grey_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Decoded RGB (H, W, 3) uint8 → greyscale (H, W) uint8, the mean of the channels."""
    return np.clip(np.rint(rgb.astype(np.float64).mean(axis=2)), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- tensors
def image_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → x (1, 3, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1).unsqueeze(0)
    return x.to(torch.float32) / 127.5 - 1.0


def tensor_to_image(x: torch.Tensor, *, truncate: bool = False) -> np.ndarray:
    """x (1, 3, H, W) in [-1, 1] → (H, W, 3) uint8, rounded (what a user saves). ``truncate``
    rounds down instead, as the original release's test script did (``oscar eval --protocol
    paper``, docs/method.md §6.1)."""
    x = (x[0].detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5
    x = x.floor() if truncate else x.round()
    return x.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, H, W) bottom and right by edge replication to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, w, multiple)
    if (ph, pw) == (h, w):
        return x
    return F.pad(x, (0, pw - w, 0, ph - h), mode="replicate")


def crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pad`."""
    return x[..., :height, :width]


# ----------------------------------------------------------------------------- writing
def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


TEMP_MARK = ".oscar-tmp-"  # temporary outputs are named .NAME.oscar-tmp-XXXXXXXX


def temp_name(path: Path) -> Path:
    """A fresh temporary name beside ``path``: ``.NAME.oscar-tmp-`` and 8 hex digits."""
    return path.with_name(f".{path.name}{TEMP_MARK}{secrets.token_hex(4)}")


def _create_temp(path: Path) -> tuple[Path, BinaryIO]:
    """A new file beside ``path`` (O_EXCL: never an existing file or link) and a binary file
    object on the descriptor that created it: everything is written through that descriptor,
    never by reopening the name. Created with the usual permissions (0666 & ~umask;
    tempfile.mkstemp would make it 0600, and the rename would keep that)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        tmp = temp_name(path)
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        return tmp, os.fdopen(fd, "wb")
    raise FileExistsError(f"no free temporary name beside {path}")


# Temporary files being written, removed by a termination signal's handler (SIGTERM, SIGHUP):
# their default action would end the process without running any ``finally``. SIGINT raises
# KeyboardInterrupt, which the ``finally`` of atomic_output handles.
_LIVE_TEMPS: set[Path] = set()
_SAVED_HANDLERS: dict[int, object] = {}
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _remove_temps_and_die(signum: int, frame) -> None:
    for tmp in list(_LIVE_TEMPS):
        with suppress(OSError):
            os.unlink(tmp)
    _LIVE_TEMPS.clear()
    previous = _SAVED_HANDLERS.get(signum, signal.SIG_DFL)
    _restore_handlers()
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # die of the signal, as without us (exit status 128 + N)


def _install_handlers() -> None:
    if _SAVED_HANDLERS or threading.current_thread() is not threading.main_thread():
        return  # signal handlers can be set from the main thread only
    for signum in _SIGNALS:
        if signal.getsignal(signum) in (signal.SIG_IGN, None):
            continue  # ignored (nohup), or set outside Python: left alone
        with suppress(OSError, ValueError):
            _SAVED_HANDLERS[signum] = signal.signal(signum, _remove_temps_and_die)


def _restore_handlers() -> None:
    for signum, handler in list(_SAVED_HANDLERS.items()):
        with suppress(OSError, ValueError, TypeError):
            signal.signal(signum, handler)  # type: ignore[arg-type]
    _SAVED_HANDLERS.clear()


def _check_still_ours(tmp: Path, file: BinaryIO, path: Path) -> None:
    """Refuse to rename a temporary name that no longer holds the file we wrote (replaced by a
    link or another file in a folder others can write to)."""
    ours = os.fstat(file.fileno())
    now = os.lstat(tmp)
    if (now.st_dev, now.st_ino) != (ours.st_dev, ours.st_ino):
        raise OutputError(f"{path}: the temporary file {tmp.name} was replaced while writing")


def give_usual_permissions(path: str | Path) -> None:
    """Set a file written by a library that creates it private (safetensors' save_file makes
    0600 files) to 0666 & ~umask, as any other file we write, so shared model folders stay
    readable."""
    mask = os.umask(0o022)  # reading the umask means setting it; restored at once
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _fsync(file: BinaryIO) -> None:
    """Flush a file (and best effort, its folder) to disk, so the rename never exposes an empty
    file after a crash."""
    file.flush()
    os.fsync(file.fileno())


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every file system can sync a folder; the data itself is synced
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: str | Path, force: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file object on a new temporary file beside ``path``; on success sync it
    and rename it into place.

    Nothing appears at ``path`` unless the block finishes; an existing file is kept unless
    ``force``. The temporary file (``.NAME.oscar-tmp-XXXXXXXX``) is written only through the
    descriptor that created it and removed on any failure, an interruption (SIGINT) or a
    termination signal (SIGTERM, SIGHUP) included; only SIGKILL can leave one behind. An
    OSError while creating, writing or renaming (folder not writable, disk full, ...) becomes
    one :class:`OutputError` naming ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path} is a directory")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass --force to overwrite")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, file = _create_temp(path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {_reason(exc)}") from None
    _LIVE_TEMPS.add(tmp)
    _install_handlers()
    try:
        with file:
            yield file
            if path.exists() and not force:  # appeared while we worked
                raise OutputExistsError(f"{path} exists; pass --force to overwrite")
            _fsync(file)
            _check_still_ours(tmp, file, path)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {_reason(exc)}") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        finally:
            _LIVE_TEMPS.discard(tmp)
            if not _LIVE_TEMPS:
                _restore_handlers()


def write_bytes_atomic(path: str | Path, data: bytes, force: bool = False) -> None:
    with atomic_output(path, force) as out:
        out.write(data)


def save_image(image: np.ndarray, path: str | Path, force: bool = False) -> None:
    """Write (H, W, 3) or (H, W) uint8 atomically in the format its suffix names."""
    path = Path(path)

    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unsupported output format {path.suffix!r} (use .png)")
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    if fmt == "WEBP":
        options = {"lossless": True}
    with atomic_output(path, force) as out:
        Image.fromarray(image).save(out, format=fmt, **options)
