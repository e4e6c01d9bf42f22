"""The `paper` loss preset: each of the original's terms against a direct formula, and the
stages using them (tiny model, random DISTS weights built by the test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import CONFIGS, build_tiny_model, make_image
from helpers.eval_weights import write_random_weights
from oscar.errors import ConfigError
from oscar.models.quantizer import CosineVectorQuantizer
from oscar.training.config import LOSS_PRESETS, LossConfig, TrainConfig
from oscar.training.loop import LoopContext, make_accelerator
from oscar.training.losses import (
    alignment_loss,
    bce_d_loss,
    channel_cosine,
    paper_edge_perceptual,
    paper_l1,
    paper_sobel_magnitude,
    position_cosine,
    softplus_g_loss,
)
from oscar.training.stages.hyper import HyperStage
from oscar.training.stages.joint import JointStage


def _images(seed: int, shape=(2, 3, 20, 24)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1


# ----------------------------------------------------------------------------- terms
def test_l1_is_taken_on_unit_range_images():
    a, b = _images(0), _images(1)
    direct = np.mean(np.abs((a.numpy() + 1) / 2 - (b.numpy() + 1) / 2))
    assert float(paper_l1(a, b)) == pytest.approx(direct, rel=1e-12)


def test_grey_sobel_magnitude_matches_a_direct_loop():
    x = _images(2, (1, 3, 6, 7))
    x01 = ((x + 1) / 2).numpy()[0]
    grey = 0.2989 * x01[0] + 0.587 * x01[1] + 0.114 * x01[2]
    padded = np.pad(grey, 1)  # zero padding, as the original's Conv2d(padding=1)
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
    ky = kx.T
    h, w = grey.shape
    expected = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            patch = padded[i : i + 3, j : j + 3]
            gx, gy = (patch * kx).sum(), (patch * ky).sum()
            expected[i, j] = np.sqrt(gx**2 + gy**2 + 1e-6)
    got = paper_sobel_magnitude((x + 1) / 2)
    assert got.shape == (1, 1, 6, 7)
    np.testing.assert_allclose(got[0, 0].numpy(), expected, rtol=1e-10)


def test_edge_term_gives_the_perceptual_distance_the_grey_maps():
    seen = []

    def perceptual(a, b):
        seen.append((a, b))
        return (a - b).square().mean()

    x_hat, x = _images(3), _images(4)
    paper_edge_perceptual(perceptual, x_hat, x)
    a, b = seen[0]
    for got, img in ((a, x_hat), (b, x)):
        edges = paper_sobel_magnitude((img + 1) / 2)
        assert got.shape == img.shape  # three equal channels, [-1, 1] convention
        for c in range(3):
            torch.testing.assert_close((got[:, c : c + 1] + 1) / 2, edges)


def test_channel_and_position_cosines_match_direct_formulas():
    a, b = _images(5, (2, 4, 5, 6)), _images(6, (2, 4, 5, 6))
    an, bn = a.numpy(), b.numpy()
    per_channel = np.zeros((2, 4))
    for i in range(2):
        for c in range(4):
            u, v = an[i, c].ravel(), bn[i, c].ravel()
            per_channel[i, c] = u @ v / np.linalg.norm(u) / np.linalg.norm(v)
    np.testing.assert_allclose(channel_cosine(a, b).numpy(), per_channel, rtol=1e-5)
    per_position = np.zeros((2, 30))
    for i in range(2):
        for p in range(30):
            u, v = an[i].reshape(4, -1)[:, p], bn[i].reshape(4, -1)[:, p]
            per_position[i, p] = u @ v / np.linalg.norm(u) / np.linalg.norm(v)
    np.testing.assert_allclose(position_cosine(a, b).numpy(), per_position, rtol=1e-5)
    assert float(alignment_loss("channel", a, b)) == pytest.approx(1 - per_channel.mean(), 1e-5)
    assert float(alignment_loss("position", a, b)) == pytest.approx(1 - per_position.mean(), 1e-5)
    whole = an.reshape(2, -1)
    cos = (whole * bn.reshape(2, -1)).sum(1) / np.linalg.norm(whole, axis=1)
    cos /= np.linalg.norm(bn.reshape(2, -1), axis=1)
    assert float(alignment_loss("global", a, b)) == pytest.approx(1 - cos.mean(), 1e-5)


def test_adversarial_losses_match_the_originals():
    real, fake = torch.randn(3, 17, dtype=torch.float64), torch.randn(3, 17, dtype=torch.float64)
    assert float(softplus_g_loss(fake)) == pytest.approx(
        float(torch.log1p(torch.exp(-fake)).mean()), rel=1e-12
    )
    bce = torch.nn.BCEWithLogitsLoss()
    expected = (bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))) / 2
    assert float(bce_d_loss(real, fake)) == pytest.approx(float(expected), rel=1e-12)


def test_codebook_term_moves_only_the_codewords():
    torch.manual_seed(0)
    q = CosineVectorQuantizer(dim=8, codebook_size=5, codebook_dim=3)
    u = torch.randn(2, 8, 3, 4)
    out = q(u)
    p_hat = q.project(u)
    e = q.normalized_codebook()[out.indices]
    direct = ((e - p_hat) ** 2).mean()
    assert float(out.codebook_loss.detach()) == pytest.approx(float(direct.detach()), rel=1e-6)
    assert float(out.commitment_loss.detach()) == pytest.approx(1.25 * float(direct.detach()), 1e-6)
    q.zero_grad()
    out.codebook_loss.backward()
    assert q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0
    assert q.project_in.weight.grad is None  # no commitment pull on the encoder


# ----------------------------------------------------------------------------- config
def test_presets_fill_only_the_fields_left_out():
    paper = LossConfig(preset="paper")
    assert paper.perceptual_kind == "dists" and paper.commitment == 0.0
    assert paper.discriminator_timesteps == (20, 980) and paper.adversarial == 5e-3
    assert paper.cosine == 2.0 and paper.codebook == 1.0 and paper.discriminator == 1e-2
    ours = LossConfig()
    assert ours.perceptual_kind == "lpips_vgg" and ours.discriminator_timesteps == (0, 500)
    assert ours.commitment == 1.0 and ours.codebook == 0.0
    assert LossConfig(preset="paper", cosine=1.0, adversarial=0.0).cosine == 1.0
    assert set(LOSS_PRESETS["ours"]) == set(LOSS_PRESETS["paper"])
    with pytest.raises(ConfigError, match="preset"):
        LossConfig(preset="original")
    with pytest.raises(ConfigError, match="discriminator_timesteps"):
        LossConfig(discriminator_timesteps=[500, 20])


def test_paper_recipe_parses_with_the_originals_schedule():
    config = TrainConfig.load(CONFIGS / "train_sd21_paper.yaml")
    kinds = [s.kind for s in config.stages]
    assert kinds == ["hyper", "joint", "priors"]
    joint = config.stages[1]
    assert (joint.steps, joint.batch_size, joint.lr) == (150000, 8, 5e-5)
    assert joint.loss.preset == "paper" and joint.train_unet == "lora"
    assert config.data.patch_size == 256 and len(config.data.train) == 3
    assert config.stages[0].loss.preset == "paper" and config.stages[0].loss.cosine == 1.0


# ----------------------------------------------------------------------------- stages
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    (root / "train").mkdir()
    for i in range(2):
        Image.fromarray(make_image(64, 64, seed=i)).save(root / "train" / f"{i}.png")
    return root, write_random_weights(root / "weights")


def _stage(cls, root: Path, weights: Path | None, kind: str, **stage):
    raw = {
        "model": str(CONFIGS / "tiny.json"),
        "output_dir": str(root / "run"),
        "data": {"train": [str(root / "train")], "patch_size": 64, "num_workers": 0},
        "weights_dir": str(weights) if weights else None,
        "stages": [{"kind": kind, "steps": 4, "batch_size": 1, **stage}],
    }
    config = TrainConfig.from_dict(raw)
    ctx = LoopContext(config, config.stages[0], root / kind, make_accelerator(config, root / kind))
    s = cls(ctx, build_tiny_model(0))
    s.setup()
    return s


def test_joint_paper_loss_is_the_sum_of_the_originals_terms(setup):
    root, weights = setup
    stage = _stage(JointStage, root, weights, "joint", loss={"preset": "paper"})
    assert stage.perceptual_name == "dists"
    stage.start_data(0)
    batch = stage.micro_batches()
    stage.micro_batches = lambda: batch
    stage.level_for_step = lambda step: 4
    x = batch[0]
    with torch.no_grad():
        out = stage.model(x, 4)
        dists = stage.perceptual
        d = stage.unwrap(stage.disc.module)
        noise, t, context = stage.disc_inputs(0, out.y)
        logits = d(out.y_hat, noise, t, stage.model.schedule.alphas_cumprod, context)
        expected = (
            ((out.x_hat + 1) / 2 - (x + 1) / 2).abs().mean()
            + dists(out.x_hat, x)
            + paper_edge_perceptual(dists, out.x_hat, x)
            + 2 * (1 - channel_cosine(out.y_tilde, out.y).mean())
            + out.codebook_loss
            + 5e-3 * F.softplus(-logits).mean()
        )
    logs = stage.train_step(0)
    assert logs["loss/total"] == pytest.approx(float(expected), rel=1e-5)
    assert "loss/d" in logs


def test_paper_discriminator_timesteps_span_20_to_980(setup):
    root, weights = setup
    stage = _stage(JointStage, root, weights, "joint", loss={"preset": "paper"})
    y = torch.zeros(64, 4, 8, 8)
    ts = torch.cat([stage.disc_inputs(step, y)[1] for step in range(20)])
    assert int(ts.min()) >= 20 and int(ts.max()) < 980 and int(ts.max()) > 900
    ours = _stage(JointStage, root, weights, "joint", loss={"perceptual_kind": "ms_ssim"})
    ts = torch.cat([ours.disc_inputs(step, y)[1] for step in range(20)])
    assert int(ts.min()) >= 0 and int(ts.max()) < 500


def test_paper_preset_keeps_the_adversarial_gradient(setup):
    root, weights = setup
    stage = _stage(JointStage, root, weights, "joint", loss={"preset": "paper"})
    model = stage.model
    out = model(torch.rand(1, 3, 64, 64) * 2 - 1, 4)
    model.zero_grad(set_to_none=True)
    stage.adversarial_term(0, out.y.detach(), out.y_hat).backward()
    assert sum(float(p.grad.abs().sum()) for p in model.unet.parameters() if p.grad is not None)
    assert float(model.prompt_embedding.grad.abs().sum()) > 0


def test_paper_preset_without_dists_weights_stops_at_setup(setup, tmp_path, monkeypatch):
    root, _ = setup
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("oscar.evaluation.weights._package_file", lambda *a: None)
    with pytest.raises(ConfigError, match=r"loss preset paper needs dists.*dists_weights\.pt"):
        _stage(JointStage, root, None, "joint", loss={"preset": "paper"})


def test_hyper_stage_paper_preset_uses_the_per_position_cosine(setup):
    root, _ = setup
    stage = _stage(
        HyperStage, root, None, "hyper", levels=[4], dead_code_interval=0,
        loss={"preset": "paper", "cosine": 1.0},
    )  # fmt: skip
    stage.start_data(0)
    batch = stage.micro_batches()
    stage.micro_batches = lambda: batch
    with torch.no_grad():
        y = stage.model.encode_latent(batch[0])
        out = stage.model.hyper["4"](y)
        expected = 1 - position_cosine(out.y_tilde, y).mean() + out.codebook_loss
    logs = stage.train_step(0)
    assert logs["loss/hyper"] == pytest.approx(float(expected), rel=1e-5)
    assert logs["cos/level4"] == pytest.approx(float(position_cosine(out.y_tilde, y).mean()), 1e-5)
    with pytest.raises(ConfigError, match="hyper and joint"):
        TrainConfig.from_dict(
            {"model": "m", "output_dir": "o", "stages": [{"kind": "vae", "steps": 1,
             "loss": {"preset": "paper"}}]}
        )  # fmt: skip


def test_dists_matches_the_reference_formula(setup):
    """Our DISTS (the paper preset's perceptual term) against the DISTS reference computation
    written out here: VGG16 stages with the grouped Hann L2 pooling, texture and structure terms
    weighted by alpha/beta, on [0, 1] inputs."""
    from oscar.evaluation.perceptual import load_perceptual

    _, weights = setup
    dists = load_perceptual("dists", weights).double()
    x, y = _images(7, (2, 3, 32, 32)), _images(8, (2, 3, 32, 32))
    convs = dists.net.features
    a = np.hanning(5)[1:-1]
    hann = torch.tensor(a[:, None] * a[None, :], dtype=torch.float64)
    hann = (hann / hann.sum())[None, None]

    def l2pool(h):
        f = hann.repeat(h.shape[1], 1, 1, 1)
        return (F.conv2d(h**2, f, stride=2, padding=1, groups=h.shape[1]) + 1e-12).sqrt()

    def feats(img01):
        mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
        h, out = (img01 - mean) / std, [img01]
        for i, stage in enumerate([(0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28)]):
            if i:
                h = l2pool(h)
            for j in stage:
                h = F.relu(F.conv2d(h, convs[j].weight, convs[j].bias, padding=1))
            out.append(h)
        return out

    fx, fy = feats((x + 1) / 2), feats((y + 1) / 2)
    chns = [3, 64, 128, 256, 512, 512]
    w_sum = dists.alpha.sum() + dists.beta.sum()
    alphas = torch.split(dists.alpha / w_sum, chns, dim=1)
    betas = torch.split(dists.beta / w_sum, chns, dim=1)
    total = torch.zeros(2, dtype=torch.float64)
    for k in range(6):
        mx, my = fx[k].mean([2, 3]), fy[k].mean([2, 3])
        vx = ((fx[k] - mx[..., None, None]) ** 2).mean([2, 3])
        vy = ((fy[k] - my[..., None, None]) ** 2).mean([2, 3])
        cov = (fx[k] * fy[k]).mean([2, 3]) - mx * my
        s1 = (2 * mx * my + 1e-6) / (mx**2 + my**2 + 1e-6)
        s2 = (2 * cov + 1e-6) / (vx + vy + 1e-6)
        total += (alphas[k].flatten() * s1).sum(1) + (betas[k].flatten() * s2).sum(1)
    torch.testing.assert_close(dists(x, y), 1 - total, rtol=1e-7, atol=1e-9)  # float32 filter
