"""Training crops (oscar.training.data): deterministic per sample number, optional recolouring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_image
from oscar.training.data import CropDataset, recolour


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, (h, w) in enumerate([(80, 96), (40, 56)]):  # the second is smaller than a patch
        image = make_image(h, w, seed=i)
        image[:, : w // 3] = 90  # a grey band: its pixels keep their value when recoloured
        paths.append(folder / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def test_crops_depend_only_on_seed_and_sample_number(images):
    a = CropDataset(images, 64, seed=1)
    b = CropDataset(images, 64, seed=1, cache=False)
    assert all(torch.equal(a[n], b[n]) for n in (0, 5, 2**40 + 3))
    assert a[0].shape == (3, 64, 64) and -1 <= float(a[0].min()) <= float(a[0].max()) <= 1
    assert not torch.equal(a[0], CropDataset(images, 64, seed=2)[0])


def test_colour_augment_recolours_the_same_crops(images):
    plain = CropDataset(images, 64, seed=1)
    coloured = CropDataset(images, 64, seed=1, colour_augment=True)
    changed = grey_pixels = 0
    for n in range(12):
        x, y = plain[n], coloured[n]
        assert torch.equal(coloured[n], y)  # deterministic
        assert -1 <= float(y.min()) <= float(y.max()) <= 1
        changed += not torch.allclose(x, y)
        # Same crop: recolouring keeps each pixel's place, and grey pixels keep their value.
        grey = (x.amax(0) - x.amin(0)) < 1e-6
        grey_pixels += int(grey.sum())
        assert torch.allclose(y[:, grey], x[:, grey], atol=1e-5)
    assert changed >= 10 and grey_pixels > 0


def test_recolour_permutes_channels_and_scales_saturation_about_luma():
    x = torch.rand(3, 5, 7) * 2 - 1
    assert torch.allclose(recolour(x, np.array([0, 1, 2]), 1.0), x)
    assert torch.allclose(recolour(x, np.array([2, 0, 1]), 1.0), x[[2, 0, 1]])
    grey = recolour(x, np.array([0, 1, 2]), 0.0)
    luma = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    assert torch.allclose(grey, luma.expand(3, -1, -1), atol=1e-6)
    vivid = recolour(x, np.array([0, 1, 2]), 3.0)
    assert float(vivid.abs().max()) <= 1.0
    assert float((vivid - vivid.mean(0)).abs().mean()) > float((x - x.mean(0)).abs().mean())
