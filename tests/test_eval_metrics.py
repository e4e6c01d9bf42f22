"""Metric functions against known values; LPIPS / DISTS / FID plumbing with random weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import make_image
from helpers.eval_weights import write_random_weights
from oscar.evaluation import fid as fidlib
from oscar.evaluation.backbones import AlexNetFeatures, VGG16Features
from oscar.evaluation.metrics import MetricSuite, ms_ssim, ms_ssim_scales, psnr
from oscar.evaluation.perceptual import (
    LPIPS,
    build_perceptual,
    load_perceptual,
    unavailable_reason,
)
from oscar.evaluation.weights import WEIGHT_FILES, find_weight


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    return write_random_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture
def no_caches(tmp_path, monkeypatch):
    """Point every cache the weight search looks at to an empty folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("oscar.evaluation.weights._package_file", lambda *a: None)


def test_psnr_of_known_noise():
    a = make_image(40, 60)
    rng = np.random.default_rng(1)
    signs = rng.choice([-3, 3], size=a.shape)
    b = np.clip(a.astype(int) + signs, 0, 255).astype(np.uint8)
    mse = np.mean((a.astype(float) - b) ** 2)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / mse))
    flat = np.full((8, 8, 3), 100, np.uint8)
    assert psnr(flat, flat + 5) == pytest.approx(10 * math.log10(255**2 / 25))
    assert psnr(a, a) == math.inf
    assert psnr(a[:, :, 0], a[:, :, 0]) == math.inf  # greyscale handled as RGB


def test_ms_ssim_identical_and_against_pytorch_msssim():
    import pytorch_msssim

    a = make_image(176, 200, seed=3)
    value, scales = ms_ssim(a, a)
    assert scales == 5 and value == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    b = np.clip(a.astype(int) + rng.integers(-25, 26, a.shape), 0, 255).astype(np.uint8)
    mine, _ = ms_ssim(a, b)
    as_t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None].double()  # noqa: E731
    ref = float(pytorch_msssim.ms_ssim(as_t(a), as_t(b), data_range=255))
    assert mine == pytest.approx(ref, abs=1e-9)
    assert 0 < mine < 1


def test_ms_ssim_small_images_use_fewer_scales():
    assert [ms_ssim_scales(s, 500) for s in (10, 11, 21, 41, 81, 160, 161)] == [0, 1, 2, 3, 4, 4, 5]
    a = make_image(33, 70)
    value, scales = ms_ssim(a, a)
    assert scales == 2 and value == pytest.approx(1.0)
    assert ms_ssim(a[:8, :8], a[:8, :8]) == (None, 0)
    suite = MetricSuite(("psnr", "ms_ssim"))
    values, notes = suite.image_metrics(a, a)
    assert values["ms_ssim"] == pytest.approx(1.0) and "ms_ssim on 2 scale(s)" in notes


def test_state_dict_keys_match_the_standard_files():
    alex = set(AlexNetFeatures().state_dict())
    assert alex == {f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")}
    vgg_convs = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    assert set(VGG16Features().state_dict()) == {
        f"features.{i}.{p}" for i in vgg_convs for p in ("weight", "bias")
    }
    lpips_keys = set(LPIPS("vgg").state_dict())
    assert {f"lin{k}.model.1.weight" for k in range(5)} <= lpips_keys
    assert set(build_perceptual("dists").state_dict()) >= {"alpha", "beta", "net.features.0.bias"}
    inception = set(fidlib.FIDInceptionV3().state_dict())
    for key in (
        "Conv2d_1a_3x3.conv.weight",
        "Conv2d_4a_3x3.bn.running_var",
        "Mixed_5b.branch_pool.conv.weight",
        "Mixed_6e.branch7x7dbl_5.bn.bias",
        "Mixed_7c.branch3x3dbl_3b.conv.weight",
    ):
        assert key in inception
    n_params = sum(p.numel() for p in fidlib.FIDInceptionV3().parameters())
    assert n_params == 21_785_568  # torchvision Inception3 without fc and aux head


def test_missing_weights_give_one_clear_line(no_caches):
    assert load_perceptual("lpips_vgg") is None
    reason = unavailable_reason("lpips_vgg")
    assert "\n" not in reason
    assert "vgg16-397923af.pth" in reason and "lpips_vgg.pth" in reason
    assert "--weights-dir" in reason
    suite = MetricSuite(("psnr", "lpips_vgg", "dists", "fid", "kid"))
    assert suite.active == ("psnr",)
    lines = suite.skip_lines()
    assert len(lines) == 3  # LPIPS-VGG, DISTS, FID/KID (one line for both)
    assert any("pt_inception-2015-12-05-6726825d.pth" in line for line in lines)


def test_perceptual_modules_with_random_weights(weights_dir, no_caches):
    x = torch.from_numpy(make_image(32, 40)).permute(2, 0, 1)[None].float() / 127.5 - 1
    y = torch.from_numpy(make_image(32, 40, seed=5)).permute(2, 0, 1)[None].float() / 127.5 - 1
    for name in ("lpips_alex", "lpips_vgg", "dists"):
        assert unavailable_reason(name, weights_dir) is None
        module = load_perceptual(name, weights_dir)
        assert module is not None and not module.training
        assert all(not p.requires_grad for p in module.parameters())
        same = module(torch.cat([x, y]), torch.cat([x, y]))
        assert same.shape == (2,) and torch.allclose(same, torch.zeros(2), atol=1e-5)
        x_hat = y.clone().requires_grad_(True)
        d = module(x_hat, x)
        assert d.shape == (1,) and float(d.detach()) > 0
        d.sum().backward()  # usable as a training loss: gradient reaches the input
        assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    found = find_weight("vgg16", weights_dir)
    assert found is not None and found.name == WEIGHT_FILES["vgg16"].filename


def test_fid_kid_math():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    assert fidlib.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.zeros(8)
    shift[0] = 3.0
    assert fidlib.frechet_distance(a, a + shift) == pytest.approx(9.0, rel=1e-6)
    b = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
    for x, y in ((a, b), (a[:5], b[:7])):  # more samples than dimensions, and fewer
        from scipy import linalg

        s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
        ref = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s1 + s2)
        ref -= 2 * np.trace(np.real(linalg.sqrtm(s1 @ s2)))
        assert fidlib.frechet_distance(x, y) == pytest.approx(ref, rel=1e-6, abs=1e-6)
    b = rng.normal(size=(400, 8))
    assert abs(fidlib.kernel_inception_distance(a, b, subsets=5, subset_size=100)) < 0.05
    assert fidlib.kernel_inception_distance(a, a + shift, subsets=5, subset_size=100) > 1.0


def test_patch_grid():
    boxes = fidlib.patch_boxes(512, 768, 256)
    assert boxes[:6] == [(0, 0), (0, 256), (0, 512), (256, 0), (256, 256), (256, 512)]
    assert boxes[6:] == [(128, 128), (128, 384)]  # the grid shifted by half a patch
    assert fidlib.patch_boxes(100, 100, 256) == []
    assert len(fidlib.patch_boxes(512, 768, 256, shifted=False)) == 6


def test_fid_suite_with_random_inception(weights_dir, no_caches):
    suite = MetricSuite(
        ("fid", "kid", "fid_whole"), weights_dir, fid_patch=32, fid_shifted=False, kid_subsets=3
    )
    assert suite.skipped == {}
    a, b = make_image(32, 64, seed=1), make_image(32, 64, seed=2)
    real, fake = suite.features(a), suite.features(b)
    assert real.arrays()["patches"].shape == (2, 2048)
    assert real.arrays()["whole"].shape == (1, 2048)
    values, notes = suite.dataset_metrics(real.arrays(), fake.arrays())
    assert values["fid"] is not None and values["fid"] >= 0 and values["kid"] is not None
    assert values["fid_whole"] is None and any("fid_whole: 1 sample" in n for n in notes)
    same, _ = suite.dataset_metrics(real.arrays(), real.arrays())
    assert same["fid"] == pytest.approx(0.0, abs=1e-3)
