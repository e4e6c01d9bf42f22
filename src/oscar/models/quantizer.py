"""Cosine-similarity vector quantiser with an explicit ``indices → features`` path.

::

    u (B, M, h, w) ─project_in─► p (B, h, w, d) ─l2-normalise─► argmax ⟨p̂, e_k⟩ ─► indices (B, h, w)
    indices ─codebook lookup─► e (B, h, w, d) ─project_out─► û (B, M, h, w)

The codebook rows are kept at unit L2 norm by normalising them on use, so the stored parameter
may drift in length during training without changing the maths. Training uses the
straight-through estimator with a codebook term and a commitment term (VQ-VAE, van den Oord et al.
2017) on the normalised vectors; dead entries are re-seeded by the training loop
(``oscar.training``), which sees the whole batch across processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class QuantizerOutput:
    """Result of a training-mode pass.

    Attributes:
        features: û (B, M, h, w), straight-through: forward value of the codewords, gradient of p̂.
        indices: (B, h, w) int64 in [0, K).
        commitment_loss: scalar, β·‖p̂ − sg(e)‖² + ‖sg(p̂) − e‖² averaged over tokens.
        codebook_loss: scalar, the codebook part ‖sg(p̂) − e‖² alone (it moves only the
            codewords; the ``paper`` loss preset uses it in place of the original's EMA codebook
            update, docs/method.md §6.2).
    """

    features: torch.Tensor
    indices: torch.Tensor
    commitment_loss: torch.Tensor
    codebook_loss: torch.Tensor | None = None


class CosineVectorQuantizer(nn.Module):
    def __init__(self, dim: int, codebook_size: int, codebook_dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.beta = beta
        self.project_in = nn.Linear(dim, codebook_dim)
        self.project_out = nn.Linear(codebook_dim, dim)
        # Unit-norm random init, as the original's cosine codebook.
        self.codebook = nn.Parameter(F.normalize(torch.randn(codebook_size, codebook_dim), dim=-1))

    def normalized_codebook(self) -> torch.Tensor:
        """(K, d) unit-norm codewords."""
        return F.normalize(self.codebook, dim=-1)

    def project(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, M, h, w) → unit-norm p̂ (B, h, w, d)."""
        p = self.project_in(u.permute(0, 2, 3, 1))
        return F.normalize(p, dim=-1, eps=1e-6)

    @staticmethod
    def _similarity(p_hat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (B, h, w, K) of unit vectors p̂ with every codeword."""
        return p_hat @ codebook.to(p_hat.dtype).t()

    def _nearest(self, p_hat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        # argmax takes the first maximum on ties.
        return self._similarity(p_hat, codebook).argmax(dim=-1)

    def ranked(self, u: torch.Tensor, count: int) -> torch.Tensor:
        """Features u (B, M, h, w) → the ``count`` most similar codewords (B, h, w, count),
        most similar first (the encoder's index search picks among them)."""
        similarity = self._similarity(self.project(u), self.normalized_codebook())
        return similarity.topk(count, dim=-1).indices

    def quantize(self, u: torch.Tensor) -> torch.Tensor:
        """Features u (B, M, h, w) → indices (B, h, w) int64."""
        return self._nearest(self.project(u), self.normalized_codebook())

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, h, w) → features û (B, M, h, w). The decoder's only path."""
        return self.features(self.codewords(indices))

    def codewords(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (any shape) → their unit-norm codewords e (…, d)."""
        return F.embedding(indices, self.normalized_codebook())

    def features(self, e: torch.Tensor) -> torch.Tensor:
        """Codewords e (B, h, w, d) → features û (B, M, h, w); the encoder's index search calls
        it on codewords that carry a gradient."""
        return self.project_out(e.to(self.project_out.weight.dtype)).permute(0, 3, 1, 2)

    def forward(self, u: torch.Tensor) -> QuantizerOutput:
        p_hat = self.project(u)
        codebook = self.normalized_codebook()
        indices = self._nearest(p_hat.detach(), codebook)
        e = F.embedding(indices, codebook)
        codebook_term = F.mse_loss(e, p_hat.detach())
        commitment = self.beta * F.mse_loss(p_hat, e.detach()) + codebook_term
        e_st = p_hat + (e - p_hat).detach()
        features = self.features(e_st)
        return QuantizerOutput(features, indices, commitment, codebook_term)
