"""Load a model directory whose JSON configs hold hostile values; only ModelError may come out.

Every scalar in ``oscar.json``, ``vae/config.json``, ``unet/config.json`` and the scheduler config
(first element of each list) is replaced in turn by each value of HOSTILE, and the directory is
loaded with ``oscar.store.pretrained.load_model``. Anything but success or a ModelError is reported,
and so is a load slower than --slow seconds. The address space is capped (--memory-gib) so that
a config that allocates without bound fails fast instead of swapping the machine.

    nice -n 15 python scripts/fuzz_model_configs.py --model /tmp/fuzz-model

Results are recorded in docs/robustness.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

HOSTILE = [0, -1, 2**31, 2**63, 10**100, 1e308, float("nan"), "x", None, [], {}, True, 2.5]
FILES = (
    "oscar.json",
    "vae/config.json",
    "unet/config.json",
    "scheduler/scheduler_config.json",
)
SKIP_KEYS = {"_class_name", "_diffusers_version", "format", "name"}


def leaves(obj, path=()):
    """Paths to every scalar; of each list only the first element (the rest are alike)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from leaves(value, (*path, key))
    elif isinstance(obj, list):
        if obj:
            yield from leaves(obj[0], (*path, 0))
        yield path  # the list itself
    else:
        yield path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a valid model directory to start from")
    parser.add_argument("--memory-gib", type=float, default=4.0)
    parser.add_argument("--slow", type=float, default=20.0)
    args = parser.parse_args()
    limit = int(args.memory_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    from oscar.errors import ModelError
    from oscar.store.pretrained import load_model

    work = Path(tempfile.mkdtemp()) / "model"
    tried, escapes, slow, refused, loaded = 0, [], [], 0, 0
    started = time.monotonic()
    for name in FILES:
        original = json.loads((Path(args.model) / name).read_text())
        for path in list(leaves(original)):
            if path and path[-1] in SKIP_KEYS:
                continue
            for value in HOSTILE:
                data = copy.deepcopy(original)
                target = data
                for key in path[:-1]:
                    target = target[key]
                target[path[-1]] = value
                shutil.rmtree(work, ignore_errors=True)
                shutil.copytree(args.model, work)
                (work / name).write_text(json.dumps(data))
                tried += 1
                t0 = time.monotonic()
                try:
                    load_model(work)
                    loaded += 1
                except ModelError:
                    refused += 1
                except BaseException as exc:  # what the run is looking for
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    escapes.append((name, path, repr(value), f"{type(exc).__name__}: {exc}"))
                    print("ESCAPE", escapes[-1], flush=True)
                elapsed = time.monotonic() - t0
                if elapsed > args.slow:
                    slow.append((name, path, repr(value), round(elapsed, 1)))
                    print("SLOW", slow[-1], flush=True)
    summary = {
        "tried": tried,
        "loaded": loaded,
        "refused_with_model_error": refused,
        "escapes": len(escapes),
        "slow": len(slow),
        "minutes": round((time.monotonic() - started) / 60, 1),
    }
    print(json.dumps(summary, indent=2))
    return 1 if escapes or slow else 0


if __name__ == "__main__":
    sys.exit(main())
