"""Hyper-coder and cosine vector quantiser."""

from __future__ import annotations

import pytest
import torch

from oscar.config import HyperConfig
from oscar.models.hyper import HyperCoder
from oscar.models.quantizer import CosineVectorQuantizer
from oscar.rates import DEFAULT_LADDER


def test_indices_to_features_path_equals_forward():
    torch.manual_seed(0)
    vq = CosineVectorQuantizer(dim=12, codebook_size=32, codebook_dim=4)
    u = torch.randn(2, 12, 5, 7)
    out = vq(u)
    indices = vq.quantize(u)
    assert torch.equal(indices, out.indices)
    torch.testing.assert_close(vq.dequantize(indices), out.features, atol=1e-6, rtol=1e-6)
    assert indices.dtype == torch.int64 and indices.shape == (2, 5, 7)
    assert int(indices.max()) < 32


def test_quantizer_picks_most_similar_codeword():
    vq = CosineVectorQuantizer(dim=3, codebook_size=3, codebook_dim=3)
    with torch.no_grad():
        vq.project_in.weight.copy_(torch.eye(3))
        vq.project_in.bias.zero_()
        vq.codebook.copy_(torch.eye(3) * 5)  # lengths do not matter: cosine
    u = torch.tensor([[0.1, 2.0, 0.3], [-1.0, 0.0, 0.2], [0.0, 0.1, 9.0]])
    u = u.t().reshape(1, 3, 1, 3)
    assert vq.quantize(u).tolist() == [[[1, 2, 2]]]


def test_straight_through_gradients_reach_analysis_and_codebook():
    torch.manual_seed(0)
    coder = HyperCoder(DEFAULT_LADDER[2], HyperConfig(8, 8, 4))
    y = torch.randn(1, 4, 16, 16)
    out = coder(y)
    (out.y_tilde.square().mean() + out.commitment_loss).backward()
    assert coder.g_a[0].weight.grad.abs().sum() > 0
    assert coder.quantizer.codebook.grad.abs().sum() > 0


@pytest.mark.parametrize("rate", DEFAULT_LADDER, ids=lambda r: f"level{r.level}")
def test_strided_positions_follow_the_original_layout(rate):
    """docs/official-checkpoint.md §2.1: which of backbone.0/4/9 and proj.0/4/8 are 5x5 stride 2."""
    coder = HyperCoder(rate, HyperConfig(8, 8, 4))
    stages = rate.num_stride2_stages
    expected = [stages >= 3, stages >= 2, stages >= 1]
    assert [coder.g_a[i].kernel_size == (5, 5) for i in (0, 4, 9)] == expected
    assert [isinstance(coder.g_s[i], torch.nn.ConvTranspose2d) for i in (0, 4, 8)] == expected
    assert len(coder.g_a) == 15 and len(coder.g_s) == 13
