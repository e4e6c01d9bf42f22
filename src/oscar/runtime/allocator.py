"""CPU memory allocator tuning: reuse freed memory instead of page-faulting fresh memory.

glibc's malloc serves every allocation above a threshold (128 KiB to 32 MiB) with a fresh
``mmap`` and gives it back with ``munmap`` when freed. A network's activations are such
allocations, so every layer's output is new memory that the kernel must zero-fill page by page:
decoding a 768×512 image with the ``small`` model took ~150 000 page faults, and the kernel's
time was about a third of the VAE decoder's time (BENCHMARKS.md, "Profile findings").

:func:`tune_cpu_allocator` turns ``mmap`` off for allocations (``M_MMAP_MAX = 0``) and raises the
trim threshold to 1 GiB, so freed activations stay in the heap and the next layer (and the next
image) reuses them. The price is fragmentation: a heap cannot place a 1 GB tensor in two
separate 0.5 GB holes, and at 3840×2160 that raised the decoder's peak from 3.5 to 5.7 GB. So
the codec calls :func:`allocator_for_pixels` before running the networks: calls of up to
``REUSE_MAX_PIXELS`` padded pixels reuse memory, larger ones get ``mmap`` back (and the heap's
free memory is returned first with ``malloc_trim``).

Process-wide, so only the ``oscar`` command turns it on; a program using the library may call
:func:`tune_cpu_allocator` too. Set ``OSCAR_MALLOC_TUNING=0`` to keep glibc's defaults.
Without glibc (macOS, Windows, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import sys

REUSE_MAX_PIXELS = 2048 * 2048  # padded pixels per call (batch × height × width)

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_MAX = -4
_GLIBC_MMAP_MAX = 65536  # glibc's default M_MMAP_MAX
_TRIM_THRESHOLD = 1 << 30

_libc: ctypes.CDLL | None = None
_reusing: bool | None = None


def tune_cpu_allocator() -> bool:
    """Turn on memory reuse (see the module doc); returns whether it is on."""
    global _libc
    if _libc is not None:
        return True
    if os.environ.get("OSCAR_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        return False
    if not ok:
        return False
    _libc = libc
    _set_reuse(True)
    return True


def allocator_for_pixels(pixels: int) -> None:
    """Before a network call over ``pixels`` padded pixels: reuse memory only up to the limit."""
    if _libc is not None:
        _set_reuse(pixels <= REUSE_MAX_PIXELS)


def _set_reuse(reuse: bool) -> None:
    global _reusing
    if reuse == _reusing or _libc is None:
        return
    _libc.mallopt(_M_MMAP_MAX, 0 if reuse else _GLIBC_MMAP_MAX)
    if not reuse:
        _libc.malloc_trim(0)  # give the heap's free memory back before the large call
    _reusing = reuse
