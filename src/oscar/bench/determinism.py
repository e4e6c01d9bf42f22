"""Whether the bytes depend on the thread count: ``python -m oscar.bench.determinism``.

Compresses the packaged sample (or an image) with the embedded model at several thread counts,
each in a fresh process, and reports whether the files are identical and how far the decoded
pixels differ. What makes the bytes thread-independent is ``oscar.runtime.determinism``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from oscar import sample_image_path
from oscar.coding.codec import OscarCodec


def _worker(threads: int, efforts: list[int], out: str, image: str | None) -> None:
    """In a fresh process: compress ``image`` (default: the packaged sample) with the embedded
    model at ``threads`` threads and each effort; save the files and the decoded pixels."""

    torch.set_num_threads(threads)

    sample = sample_image_path()
    results: dict[str, object] = {"threads": threads}
    arrays = {}
    for effort in efforts:
        codec = OscarCodec.from_pretrained(device="cpu", effort=effort)
        source = codec.prepare_image(image or sample)
        level = max(codec.levels, key=lambda lv: lv.nominal_bpp).level
        t0 = time.perf_counter()
        data = codec.compress(source, level)
        seconds = time.perf_counter() - t0
        y, _ = codec.encode_latents([source])
        results[f"effort{effort}"] = {
            "level": level,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "latent_sha256": hashlib.sha256(y.numpy().tobytes()).hexdigest(),
            "encode_seconds": round(seconds, 3),
        }
        arrays[f"effort{effort}"] = codec.decompress(data)
    np.savez(out + ".npz", **arrays)
    Path(out + ".json").write_text(json.dumps(results))


def compare(threads: list[int], efforts: list[int], image: str | None = None) -> dict[str, object]:
    """Run :func:`_worker` at each thread count in subprocesses; whether the bytes are equal,
    and how the decoded pixels differ from those of the first thread count."""

    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for n in threads:
            out = os.path.join(folder, f"t{n}")
            env = {**os.environ, "OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)}
            code = "import sys; from oscar.bench.determinism import _worker; "
            code += f"_worker({n}, {efforts!r}, {out!r}, {image!r})"
            subprocess.run([sys.executable, "-c", code], check=True, env=env)
            with open(out + ".json") as f:
                runs.append((json.load(f), dict(np.load(out + ".npz"))))
    report: dict[str, object] = {"threads": threads, "runs": [r for r, _ in runs]}
    first, first_pixels = runs[0]
    for effort in efforts:
        key = f"effort{effort}"
        same = all(r[key]["sha256"] == first[key]["sha256"] for r, _ in runs)
        diffs = []
        for _, pixels in runs[1:]:
            d = np.abs(pixels[key].astype(np.int16) - first_pixels[key].astype(np.int16))
            diffs.append(
                {
                    "max": int(d.max()),
                    "pixels": int((d.reshape(d.shape[0], d.shape[1], -1).max(-1) > 0).sum()),
                }
            )
        report[key] = {"identical_bytes": same, "decoded_vs_first": diffs}
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m oscar.bench.determinism``: bytes and decoded pixels at several thread
    counts."""

    parser = argparse.ArgumentParser(
        prog="python -m oscar.bench.determinism",
        description="Compress the packaged sample (or IMAGE) with the embedded model at several "
        "thread counts, each in its own process; report whether the bytes are identical and "
        "how far the decoded pixels differ.",
    )
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    parser.add_argument("--efforts", default="4,0", help="encoder efforts, comma-separated")
    parser.add_argument("--image", default=None, help="image file (default: the sample)")
    args = parser.parse_args(argv)
    threads = [int(n) for n in args.threads.split(",")]
    efforts = [int(n) for n in args.efforts.split(",")]
    report = compare(threads, efforts, args.image)
    print(json.dumps(report, indent=2))
    return 0 if all(report[f"effort{e}"]["identical_bytes"] for e in efforts) else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
