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
``python -m oscar.bench.determinism`` measures all this on the embedded model.
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
