"""Encoder decisions that do not depend on the thread count.

The bytes ``compress`` writes are a function of the indices the encoder chooses, and those are
argmax/argmin decisions on floats: a last-bit difference in a latent can flip a near-tie. On CPU,
the thread count changes some results in the last bits, because a few kernels split their sums
differently across threads: measured on the embedded model (PyTorch 2.13, oneDNN 3.12, AMD EPYC
with AVX2), the VAE encoder's 1×1 convolutions (oneDNN) made 21 204 of the packaged sample's
24 576 latent values differ between 1 and 2 threads (by up to 2e-6), while its 3×3
convolutions, group norms and elementwise operations gave the same bits at any thread count.

:func:`thread_independent` removes that dependence where encoding decides indices:

- in the VAE (its encoder and the 1×1 ``quant_conv`` after it), the layers whose kernels may
  split a reduction across threads (1×1 convolutions, linear layers, attention's matrix
  products) run with one thread; the 3×3 convolutions, which dominate its cost, keep all
  threads;
- the hyper-analysis, the quantiser and the index search (``oscar.coding.index_search``), small
  next to the VAE, run with one thread throughout, gradients included.

The one-thread layers and the untouched operations compute every output value with a fixed order
of operations, so the indices (and the bytes) are the same at any thread count: tested at 1 and
2 threads on the embedded model and the packaged sample (``tests/test_determinism.py``). Across
machines the same holds where the same PyTorch build picks the same kernels (the same
instruction-set family); another CPU family or library version may round differently and, rarely,
choose another index for a near-tie. Decoding is not covered: decoded pixels may differ by a
level or so between thread counts and machines (docs/format.md, "Determinism").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

# Layer types whose CPU kernels may split a reduction across threads (measured: 1x1 convs).
_SPLIT_REDUCTIONS = (nn.Linear,)


def _splits_reductions(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.kernel_size == (1, 1)
    if isinstance(module, _SPLIT_REDUCTIONS):
        return True
    # diffusers' Attention: its matrix products (softmax(QK^T)V) are GEMMs.
    return type(module).__name__ == "Attention"


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block with one intra-op thread (restored afterwards)."""
    saved = torch.get_num_threads()
    if saved == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@contextmanager
def thread_independent(network: nn.Module) -> Iterator[None]:
    """While the block runs, ``network``'s layers that may split reductions run with one thread.

    A no-op on one thread and on accelerators (``network`` on a non-CPU device).
    """
    saved = torch.get_num_threads()
    device = next(network.parameters(), torch.empty(0)).device
    if saved == 1 or device.type != "cpu":
        yield
        return

    depth = [0]  # nested layers (an attention block's linear layers): restore at the outermost

    def before(module, args):
        depth[0] += 1
        torch.set_num_threads(1)

    def after(module, args, output):
        depth[0] -= 1
        if depth[0] == 0:
            torch.set_num_threads(saved)

    handles = []
    for module in network.modules():
        if _splits_reductions(module):
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        torch.set_num_threads(saved)


# ----------------------------------------------------------------------------- the check
def _worker(threads: int, efforts: list[int], out: str, image: str | None) -> None:
    """In a fresh process: compress ``image`` (default: the packaged sample) with the embedded
    model at ``threads`` threads and each effort; save the files and the decoded pixels."""
    import hashlib
    import json
    import time
    from pathlib import Path

    import numpy as np

    torch.set_num_threads(threads)
    from oscar import sample_image_path
    from oscar.coding.codec import OscarCodec

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
        y, _ = codec.encode_latent(source)
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
    import json
    import os
    import subprocess
    import sys
    import tempfile

    import numpy as np

    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for n in threads:
            out = os.path.join(folder, f"t{n}")
            env = {**os.environ, "OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)}
            code = "import sys; from oscar.runtime.determinism import _worker; "
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
    """``python -m oscar.runtime.determinism``: bytes and decoded pixels at several thread
    counts."""
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m oscar.runtime.determinism",
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
