"""Fuzzing the decoder: mutated files through ``decompress`` and ``info``.

The contract (design.md invariant 5): whatever the bytes, ``OscarCodec.decompress`` returns an
image or raises a :class:`~oscar.errors.BitstreamError`, and so does the parser behind
``oscar info``; nothing else escapes, no input runs past a time bound, and no allocation is
decided by an unchecked header field. On top of that, every file the decoder accepts must be
*canonical*: packing what it decoded gives back the same bytes, so a file has one reading.

Inputs are valid files made by the codec under test, then mutated: bit flips, extreme bytes,
truncation, appended bytes, splices of two files, header fields set to extremes, payload-length
lies, coder-id swaps, payloads replaced, resized or cut at a word. Most mutations get their
CRC-32 recomputed, or the checksum would reject nearly all of them before the deeper checks (the
model-level checks and both index coders) ever ran.

Long runs (the commands and their measured results are in docs/robustness.md)::

    oscar init configs/tiny.json -o /tmp/fuzz-model --force
    oscar fit-priors /tmp/fuzz-model src/oscar/assets/sample.png
    nice -n 15 python -m oscar.fuzz --model /tmp/fuzz-model --minutes 15 --seed 1 --crashes crashes
    nice -n 15 python -m oscar.fuzz --model /tmp/fuzz-model --minutes 10 --seed 2 --atheris

A third form, ``--expensive`` (``oscar.fuzz.expensive``), writes valid files announcing large
images at every level and reports the worst decode time and peak memory per input byte.

The second form needs ``pip install atheris``: libFuzzer's coverage-guided search over the
instrumented ``oscar`` modules, with the same check and a mutator that repairs the CRC.
"""

from __future__ import annotations

from oscar.fuzz.harness import (
    ContractViolation,
    FuzzReport,
    check_input,
    fuzz,
    make_seeds,
    unpack_memory_bound,
)
from oscar.fuzz.mutations import Mutator, assemble, with_crc

__all__ = [
    "ContractViolation",
    "FuzzReport",
    "Mutator",
    "assemble",
    "check_input",
    "fuzz",
    "make_seeds",
    "unpack_memory_bound",
    "with_crc",
]
