"""OSCAR: one-step diffusion image codec across multiple bit-rates.

The public API is imported lazily so that ``import oscar`` (and ``oscar --help``) stays fast::

    from oscar import OscarCodec
    codec = OscarCodec.from_pretrained()
    data = codec.compress("photo.png", level=7)
    image = codec.decompress(data)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["EncodedImage", "OscarCodec", "__version__", "sample_image_path"]


def sample_image_path():
    """Path of the sample image shipped in the package (768 × 512 PNG), for examples and
    ``oscar demo``; works from an installed package as from a checkout."""
    # lazy: importlib.resources costs ~15 ms that every `oscar` start-up would pay
    from importlib.resources import files
    from pathlib import Path

    return Path(str(files("oscar").joinpath("assets", "sample.png")))


def __getattr__(name: str):
    if name in ("OscarCodec", "EncodedImage"):
        from oscar.coding import codec  # lazy: torch and diffusers, only when asked for

        return getattr(codec, name)
    raise AttributeError(f"module 'oscar' has no attribute {name!r}")
