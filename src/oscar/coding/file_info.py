"""What a file holds, read from its header alone: the library behind ``oscar info FILE``.

Light on purpose (no torch, no numpy): ``oscar info`` on files reads the model's configuration
only, never its weights.
"""

from __future__ import annotations

from oscar.coding import bitstream


def describe_file(data: bytes, config, limits) -> dict:
    """Header fields and rates of one file, as a JSON-ready dict (``config``: the model's
    ``ModelConfig``, or None when no rate table is at hand)."""
    container = bitstream.read(data, limits)
    h = container.header
    pixels = h.height * h.width
    info = {
        "format_version": bitstream.VERSION,
        "level": h.level,
        "coder": h.coder_name,
        "fingerprint": h.fingerprint.hex(),
        "height": h.height,
        "width": h.width,
        "grey": h.grey,
        "file_bytes": container.total_bytes,
        "payload_bytes": len(container.payload),
        "overhead_bytes": container.overhead_bytes,
        "measured_bpp": container.total_bytes * 8 / pixels,
        "payload_bpp": len(container.payload) * 8 / pixels,
    }
    if config is not None and h.level in config.level_numbers:
        rate = config.level(h.level)
        gh, gw = config.token_grid(h.height, h.width, h.level)
        info.update(
            {
                "grid_factor": rate.grid_factor,
                "codebook_size": rate.codebook_size,
                "timestep": rate.timestep,
                "tokens": [gh, gw],
                "nominal_bpp": rate.nominal_bpp,
                "fixed_payload_bytes": rate.fixed_payload_bytes(gh * gw),
            }
        )
    return info
