"""The encoder-effort option: its range, its default and its check (torch-free, for the CLI).

Effort N is N rounds of index search after the nearest-codeword choice (oscar.coding.index_search).
"""

from __future__ import annotations

from oscar.errors import ConfigError

MAX_EFFORT = 64
# Four rounds visit each of the search's four interleaved sub-grids once: every token may move
# once. Chosen on training images; the model card measures it on the held-out images.
DEFAULT_EFFORT = 4


def check_effort(effort: object) -> int:
    """Effort as an int in 0..MAX_EFFORT, or a ConfigError."""
    if isinstance(effort, bool) or not isinstance(effort, int) or not 0 <= effort <= MAX_EFFORT:
        raise ConfigError(f"effort must be an integer from 0 to {MAX_EFFORT}, got {effort!r}")
    return effort
