"""Optional extras: a command that needs one says which, in one line, before doing any work."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable

from oscar.errors import ConfigError

# The import name of each module an extra installs, with its distribution name where they differ.
EXTRAS = {
    "eval": {
        "imagecodecs": "imagecodecs",
        "matplotlib": "matplotlib",
        "bjontegaard": "bjontegaard",
    },
    "train": {
        "accelerate": "accelerate",
        "peft": "peft",
        "yaml": "pyyaml",
        "tensorboard": "tensorboard",
    },
}


def _installed(module: str) -> bool:
    if module in sys.modules:  # None there means "known missing" (as tests simulate it)
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_modules(modules: Iterable[str]) -> list[str]:
    """The modules of ``modules`` that cannot be imported (found without importing them)."""
    return [m for m in modules if not _installed(m)]


def require_extra(extra: str, command: str, modules: Iterable[str] | None = None) -> None:
    """A ConfigError naming the extra when any of its modules (or the subset ``modules``) is
    missing, e.g. ``oscar eval needs imagecodecs: pip install "oscar-codec[eval]"``."""
    wanted = EXTRAS[extra] if modules is None else {m: EXTRAS[extra][m] for m in modules}
    missing = missing_modules(wanted)
    if missing:
        names = ", ".join(wanted[m] for m in missing)
        raise ConfigError(
            f'{command} needs {names} (not installed): pip install "oscar-codec[{extra}]"'
        )
