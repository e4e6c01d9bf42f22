"""Named stages of the codec pipeline, and an optional recorder that times them.

``OscarCodec`` wraps each step of its pipeline in ``with stage("…"):``. Without a recorder (the
normal case) that is a no-op costing one context-variable lookup. ``oscar bench`` installs a
recorder with :func:`recording`, so the timings it reports come from the very code paths that
``compress`` and ``decompress`` run, not from a copy of the pipeline; the ``oscar`` command's
progress bar (``oscar.runtime.progress``) is another recorder, which loops inside a stage feed
through :func:`progress`.

Stages, in pipeline order (what each one covers):

=================  ===========================================================================
pad                uint8 image → float tensor in [-1, 1] on the device, padded to the multiple
vae_encode         VAE encoder (posterior mean, scaled) and the per-channel RMS side info
hyper_analysis     g_a of the level: latent y → features u
quantize           cosine VQ: features u → indices (nearest unit-norm codeword)
index_search       effort > 0 (default 4): search for better indices (oscar.coding.index_search);
                   then the indices go to the host
entropy_code       index coder(s), header, checksum → file bytes
parse              file bytes → header checks, index decoding (the typed record)
hyper_synthesis    indices → codebook → g_s → y_tilde, rescaled to the sent RMS → z_t
unet               the UNet pass(es) and x0 estimate: one step, or N DDIM steps
vae_decode         VAE decoder → x_hat in [-1, 1]
crop               crop to the original size, round to uint8, to the host
=================  ===========================================================================
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

ENCODE_STAGES = ("pad", "vae_encode", "hyper_analysis", "quantize", "index_search", "entropy_code")
DECODE_STAGES = ("parse", "hyper_synthesis", "unet", "vae_decode", "crop")
STAGES = ENCODE_STAGES + DECODE_STAGES


class StageRecorder(Protocol):
    """Something that measures a stage: a context manager factory taking the stage name."""

    def measure(self, name: str): ...


_recorder: ContextVar[StageRecorder | None] = ContextVar("oscar_stage_recorder", default=None)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Mark a pipeline stage; measured only while a recorder is installed."""
    recorder = _recorder.get()
    if recorder is None:
        yield
        return
    with recorder.measure(name):
        yield


def progress(what: str, current: int, total: int) -> None:
    """Report that ``what`` number ``current`` of ``total`` (a DDIM step, a tile) starts.

    For progress displays (``oscar.runtime.progress``); a no-op unless the installed recorder has an
    ``inner_progress`` method.
    """
    report = getattr(_recorder.get(), "inner_progress", None)
    if report is not None:
        report(what, current, total)


@contextmanager
def recording(recorder: StageRecorder) -> Iterator[StageRecorder]:
    """Install ``recorder`` for the stages run inside the block (this thread/context only)."""
    token = _recorder.set(recorder)
    try:
        yield recorder
    finally:
        _recorder.reset(token)
