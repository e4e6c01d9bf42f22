"""`oscar eval --protocol paper`: the original test script's resize, truncation and encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_image
from oscar import OscarCodec
from oscar.cli import main
from oscar.errors import ConfigError, ImageError
from oscar.evaluation.baselines import get_baselines
from oscar.evaluation.metrics import MetricSuite, psnr
from oscar.evaluation.runner import EvalOptions, evaluate_images, paper_resize
from oscar.io import tensor_to_image


def test_paper_resize_is_lanczos_to_multiples_of_128():
    rgb = make_image(300, 270, seed=1)
    out = paper_resize(rgb)
    assert out.shape == (256, 256, 3)
    direct = np.asarray(Image.fromarray(rgb).resize((256, 256), Image.LANCZOS))
    assert np.array_equal(out, direct)
    kodak_like = make_image(256, 384, seed=2)
    assert paper_resize(kodak_like) is kodak_like  # Kodak's 768x512 is already a multiple
    with pytest.raises(ImageError, match="at least 128x128"):
        paper_resize(make_image(100, 300))


def test_truncation_rounds_down():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.3, 0.999, 1.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    v = (x[0, 0, 0] + 1) * 127.5
    assert tensor_to_image(x, truncate=True)[0, :, 0].tolist() == v.floor().int().tolist()
    assert tensor_to_image(x)[0, :, 0].tolist() == v.round().int().tolist()


@pytest.fixture
def big_image(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(make_image(200, 300, seed=4)).save(path)
    return path


def test_paper_protocol_codes_and_scores_the_resized_image(tiny_model_dir, big_image):
    codec = OscarCodec.from_pretrained(tiny_model_dir, device="cpu", effort=4)
    suite = MetricSuite(("psnr",))
    options = EvalOptions(levels=(7,), sweep=False, crops=0, warmup=False, protocol="paper")
    images = [(big_image, "big.png")]
    part = evaluate_images(codec, images, get_baselines("jpeg"), suite, options, progress=False)
    records = part.records
    assert codec.effort == 0
    resized = paper_resize(np.asarray(Image.open(big_image).convert("RGB")))
    assert resized.shape == (128, 256, 3)
    assert all((r.height, r.width) == (128, 256) for r in records)  # baselines too
    (ours,) = [r for r in records if r.codec == "oscar"]
    data = OscarCodec.from_pretrained(tiny_model_dir, device="cpu", effort=0).compress(resized, 7)
    assert ours.bytes == len(data) and ours.bpp == pytest.approx(len(data) * 8 / (128 * 256))
    truncated = codec.decompress(data, truncate=True)
    assert ours.metrics["psnr"] == pytest.approx(psnr(resized, truncated))
    assert ours.metrics["psnr"] != pytest.approx(psnr(resized, codec.decompress(data)))
    with pytest.raises(ConfigError, match="protocol"):
        EvalOptions(protocol="original")


def test_eval_command_takes_the_protocol(tiny_model_dir, big_image, tmp_path):
    out = tmp_path / "out"
    argv = ["eval", str(big_image), "-o", str(out), "--model", str(tiny_model_dir)]
    argv += ["--levels", "7", "--baselines", "none", "--metrics", "psnr", "--crops", "0"]
    assert main([*argv, "--protocol", "paper"]) == 0
    text = json.dumps(json.loads((out / "summary.json").read_text()))
    assert '"protocol": "paper"' in text and '"encoder effort": "0"' in text
    records = json.loads((out / "per_image.json").read_text())
    assert {(r["height"], r["width"]) for r in records} == {(128, 256)}
