"""Default resource limits, in one place (no heavy imports: the CLI's ``--help`` shows them).

- Pixels: ``DEFAULT_MAX_PIXELS`` is where Pillow refuses an image as a decompression bomb
  (2 × ``PIL.Image.MAX_IMAGE_PIXELS`` = 178 956 970 pixels, e.g. 13 377 × 13 377 or 16 384 ×
  10 922); both directions refuse larger images (and files announcing them) before any
  allocation, and ``--max-pixels`` raises the limit.
- Memory: :func:`default_max_memory` is the working-memory budget per image when
  ``--max-memory`` is not given: half of the memory this process may use (the machine's RAM, or
  a lower cgroup or address-space limit), rounded down to a power of two so that machines of
  similar size pick the same tiles (``oscar.runtime.tiling``; tiles change the bytes an encoder
  writes).
- Model folders: every metadata file is read with a bound (``MAX_METADATA_BYTES``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from oscar.errors import ConfigError

PILLOW_MAX_IMAGE_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS: Pillow warns above it
DEFAULT_MAX_PIXELS = 2 * PILLOW_MAX_IMAGE_PIXELS  # Pillow refuses above it
MAX_METADATA_BYTES = 16 * 2**20  # oscar.json, config.json, scheduler config, shard indexes
MAX_PRIORS_BYTES = 64 * 2**20  # priors.safetensors: int32 tables of at most 2**16 entries
MEMORY_FRACTION = 0.5


def _meminfo_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None


def _address_space_limit() -> int | None:
    try:
        import resource  # lazy: Unix only, and only this check needs it

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def usable_memory() -> int | None:
    """The memory this process may use: RAM, or a lower cgroup or address-space limit."""
    found = [m for m in (_meminfo_total(), _cgroup_limit(), _address_space_limit()) if m]
    return min(found) if found else None


def default_max_memory() -> int | None:
    """The default ``--max-memory``: MEMORY_FRACTION of :func:`usable_memory`, rounded down to a
    power of two (at least 256 MiB); None when the machine's memory cannot be read."""
    usable = usable_memory()
    if usable is None:
        return None
    budget = max(int(usable * MEMORY_FRACTION), 256 * 2**20)
    return 1 << (budget.bit_length() - 1)


def parse_memory(text: str) -> int:
    """'4G', '512M', '1.5GiB', '2000000000' → bytes (binary units)."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = s[-1:] if s[-1:] in units and s[-1:] else ""
    number = s[: -len(unit)] if unit else s
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise ConfigError(f"cannot read a memory size from {text!r} (e.g. 4G, 512M)") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"memory size must be positive, got {text!r}")
    return int(value)
