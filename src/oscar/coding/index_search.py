"""Encoder effort: search for indices that the hyper-synthesis turns into a better latent.

The default encoder's first step gives every token the codeword nearest its analysis features
(``CosineVectorQuantizer.quantize``): a choice made token by token, in feature space. The decoder,
though, turns a whole neighbourhood of tokens into the coarse latent through the hyper-synthesis
g_s, and that coarse latent is what the UNet denoises. With ``effort`` N > 0 the encoder then runs
N rounds of a greedy search on that coarse latent, in the spirit of the rate-distortion-optimised
quantisation of classical encoders. The decoder, the file format and the rate table are
unchanged: any file decodes with the same model whatever effort wrote it, and effort 0 writes
the nearest-codeword indices.

One round, on the token grid of one level::

    e = codebook[indices]       (each token's codeword, with gradient)
    z_t = rescale(g_s(e))       the coarse latent exactly as decoding makes it (before the UNet)
    err = Σ_channels (z_t − y)²                per latent position; y the image's true latent
    for each token, among its ``candidates`` nearest codewords (by the analysis features the
    encoder already computed, for the whole image), the
    one that the first-order change ⟨∂err/∂e, c − e⟩ predicts best; proposed on one of the
    ``stride``² interleaved sub-grids (round r takes sub-grid r mod stride², so near tokens,
    which share decoder context, do not move together), evaluated exactly, and kept only where
    the error summed over a ``window`` of tokens around it went down.

Four rounds give every token of the grid one chance to move (DEFAULT_EFFORT). The search never
ends worse than it began: if the total error over an image rose (moves kept locally can
interact), it returns that image's nearest-codeword indices. (Latents searched by windows, see
below, are checked window by window, each with WINDOW_MARGIN latent positions of context.)

Why the coarse latent and not the decoded one: the search of commit ac1fcd8 and before put the
UNet in the loop and minimised the error of the one-step decoder's latent, at about three UNet
passes per round. On the embedded model's held-out images, four rounds of either search give
the same mean PSNR within 0.1 dB at every level (model card), and this one costs a small
fraction of the time (BENCHMARKS.md). Why it is written here rather than taken from a library:
it needs the codec's own hyper-synthesis in the loop. Large latents are searched in overlapping
windows so that memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

# Latent positions searched at once (192 × 192: a 1536 × 1536 image); larger latents go by
# windows of this size that overlap by WINDOW_MARGIN positions of context on each side.
MAX_WINDOW_POSITIONS = 192 * 192
WINDOW_MARGIN = 16


@contextmanager
def _no_parameter_grads(module: torch.nn.Module) -> Iterator[None]:
    """Gradients flow to the codewords only; the model's own flags are restored afterwards."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class IndexSearch:
    """The search for one level of one model; ``run`` takes nearest-codeword indices."""

    def __init__(
        self, model, level: int, candidates: int = 2, stride: int = 2, window: int = 3
    ) -> None:
        self.model = model
        self.hyper = model.hyper_coder(level)
        self.block = model.rate(level).latent_downsample  # latent positions per token side
        self.candidates = min(candidates, self.hyper.codebook_size)
        self.stride = stride
        self.window = window

    # ------------------------------------------------------------------------ the maths
    def error(self, indices: torch.Tensor, y: torch.Tensor, rms: torch.Tensor, grad: bool):
        """Per-token coarse-latent error (B, h, w) and, with ``grad``, its gradient w.r.t.
        codewords."""
        quantizer = self.hyper.quantizer
        e = quantizer.codewords(indices)
        with torch.set_grad_enabled(grad):
            if grad:
                e.requires_grad_(True)
            y_tilde = self.hyper.g_s(quantizer.features(e))  # as HyperCoder.decode does
            z_t = self.model.to_noisy_latent(y_tilde, rms)
            err = (z_t - y).square().sum(1)
            gradient = None
            if grad:
                # backward() rather than autograd.grad(): FLOP counting (oscar bench) hooks the
                # graph in a way autograd.grad() does not support for leaf inputs.
                err.sum().backward(inputs=[e])
                gradient = e.grad
        err = err.detach()
        if self.block > 1:  # latent positions → tokens
            err = F.avg_pool2d(err.unsqueeze(1), self.block).squeeze(1) * self.block**2
        return err, gradient, e.detach()

    def _local(self, err: torch.Tensor) -> torch.Tensor:
        """Error summed (as a mean) over a window of tokens around each token."""
        w = self.window
        return F.avg_pool2d(err.unsqueeze(1), w, 1, w // 2, count_include_pad=False).squeeze(1)

    def propose(self, gradient, e, options, candidates):
        """Per token, the candidate whose first-order change of the error ⟨g, c − e⟩ is lowest,
        and that change (B, h, w); ``options`` (B, h, w, C, d) are the candidates' codewords."""
        change = torch.einsum("bhwd,bhwcd->bhwc", gradient, options)
        change = change - (gradient * e).sum(-1, keepdim=True)
        pick = change.argmin(-1, keepdim=True)
        return candidates.gather(-1, pick).squeeze(-1), change.gather(-1, pick).squeeze(-1)

    def run(
        self,
        indices: torch.Tensor,
        features: torch.Tensor,
        y: torch.Tensor,
        rms: torch.Tensor,
        rounds: int,
    ) -> torch.Tensor:
        """Search ``rounds`` rounds from ``indices`` (B, h, w), the nearest codewords of the
        analysis ``features`` (B, M, h, w) of latent ``y``; returns new indices."""
        with torch.no_grad():
            candidates = self.hyper.quantizer.ranked(features, self.candidates)
            options = self.hyper.quantizer.codewords(candidates)  # (B, h, w, C, d)
        h, w = indices.shape[-2:]
        rows = torch.arange(h, device=indices.device).view(-1, 1) % self.stride
        cols = torch.arange(w, device=indices.device).view(1, -1) % self.stride
        start = current = indices
        first_total = None
        with _no_parameter_grads(self.hyper):  # the only parameters the search runs through
            for r in range(rounds):
                err, gradient, e = self.error(current, y, rms, grad=True)
                if first_total is None:
                    first_total = err.sum((-2, -1))  # per image of the batch
                proposed, gain = self.propose(gradient, e, options, candidates)
                a, b = divmod(r % self.stride**2, self.stride)
                moving = (rows == a) & (cols == b) & (gain < 0) & (proposed != current)
                if not bool(moving.any()):
                    continue
                trial = torch.where(moving, proposed, current)
                trial_err, _, _ = self.error(trial, y, rms, grad=False)
                keep = moving & (self._local(trial_err) < self._local(err))
                current = torch.where(keep, proposed, current)
            if first_total is None or torch.equal(current, start):
                return start
            final, _, _ = self.error(current, y, rms, grad=False)
        worse = final.sum((-2, -1)) > first_total
        return torch.where(worse.view(-1, 1, 1), start, current)


def search_indices(
    model,
    y: torch.Tensor,
    features: torch.Tensor,
    level: int,
    indices: torch.Tensor,
    effort: int,
) -> torch.Tensor:
    """Nearest-codeword ``indices`` (B, h, w) of analysis ``features`` (B, M, h, w) of latent
    ``y`` (B, 4, H', W') → searched indices.

    Runs outside inference mode (it needs gradients) on copies of its inputs; ``effort`` rounds.
    Latents larger than MAX_WINDOW_POSITIONS are searched window by window.
    """
    if effort == 0:
        return indices
    with torch.inference_mode(False):
        y = y.detach().clone().float()
        features = features.detach().clone()
        rms = model.side_info(y).clone()
        out = indices.detach().clone()
        search = IndexSearch(model, level)
        block = search.block
        for (t0, t1, s0, s1), (i0, i1, j0, j1) in _windows(model, level, y.shape[-2:]):
            part = search.run(
                out[:, t0:t1, s0:s1].clone(),
                features[..., t0:t1, s0:s1],
                y[..., t0 * block : t1 * block, s0 * block : s1 * block],
                rms,
                effort,
            )
            # Keep the window's interior; its margins are context only.
            out[:, i0:i1, j0:j1] = part[:, i0 - t0 : i1 - t0, j0 - s0 : j1 - s0]
    return out


def _windows(model, level: int, latent_size: tuple[int, int]):
    """Token windows ((top, bottom, left, right) searched, (…) kept) that tile the grid.

    Window sides are multiples of the padding unit (so the UNet sees valid sizes); each keeps its
    interior and lends WINDOW_MARGIN latent positions of context to its neighbours.
    """
    block = model.rate(level).latent_downsample
    unit = model.config.pad_multiple // 8 // block  # tokens per padding unit
    height, width = (side // block for side in latent_size)
    side = max(unit, (int(MAX_WINDOW_POSITIONS**0.5) // block) // unit * unit)
    if height * width * block * block <= MAX_WINDOW_POSITIONS:
        yield (0, height, 0, width), (0, height, 0, width)
        return
    margin = -(-WINDOW_MARGIN // (block * unit)) * unit  # whole padding units, rounded up
    inner = max(unit, side - 2 * margin)
    for i0 in range(0, height, inner):
        for j0 in range(0, width, inner):
            i1, j1 = min(height, i0 + inner), min(width, j0 + inner)
            t0, s0 = max(0, i0 - margin), max(0, j0 - margin)
            t1, s1 = min(height, i1 + margin), min(width, j1 + margin)
            yield (t0, t1, s0, s1), (i0, i1, j0, j1)
