"""The model shipped in the package: present, within budget, float16, and the default everywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

import oscar
from helpers import make_image
from oscar.cli import main
from oscar.coding.codec import OscarCodec
from oscar.io import load_image
from oscar.store.pretrained import embedded_model_dir, read_config

WEIGHT_BUDGET = 50 * 1024 * 1024


@pytest.fixture(scope="module")
def codec() -> OscarCodec:
    return OscarCodec.from_pretrained(device="cpu")  # no argument: the embedded model


def test_embedded_model_is_small_float16_and_calibrated():
    folder = embedded_model_dir()
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= WEIGHT_BUDGET
    weights = [p for p in files if p.suffix == ".safetensors" and p.name != "priors.safetensors"]
    assert {p.parent.name for p in weights} >= {"small", "vae", "unet"}
    for path in weights:
        with safe_open(path, "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                t = f.get_slice(key)
                assert t.get_dtype() in ("F16", "I64", "I32"), (path, key, t.get_dtype())
    config = read_config(folder)
    assert config.name == "small" and len(config.levels) == 8
    # Calibrated: every level has a measured cosine and the timestep it implies.
    assert all(lv.cosine is not None for lv in config.levels)
    assert (folder / "priors.safetensors").is_file()


def test_embedded_model_codes_every_level_at_odd_sizes(codec):
    for level, (h, w) in zip(range(8), [(1, 1), (17, 33), (64, 64), (70, 45)] * 2, strict=True):
        image = make_image(h, w, seed=level)
        data = codec.compress(image, level=level)
        assert codec.compress(image, level=level) == data  # deterministic
        out = codec.decompress(data)
        assert out.shape == image.shape and out.dtype == np.uint8


def test_reconstruction_improves_with_rate(codec):
    sample = load_image(Path(oscar.__file__).parent / "assets" / "sample.png").rgb[:192, :256]
    mse = []
    for level in (0, 7):
        out = codec.decompress(codec.compress(sample, level=level))
        mse.append(float(np.mean((out.astype(np.float64) - sample) ** 2)))
    assert mse[1] < mse[0]


def test_cli_uses_the_embedded_model_by_default(tmp_path, codec):
    Image.fromarray(make_image(40, 56)).save(tmp_path / "a.png")
    assert (
        main(["compress", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.oscar"), "--level", "3"])
        == 0
    )
    assert main(["decompress", str(tmp_path / "a.oscar"), "-o", str(tmp_path / "b.png")]) == 0
    assert Image.open(tmp_path / "b.png").size == (56, 40)
    # The file is tied to this model by its fingerprint.
    assert (tmp_path / "a.oscar").read_bytes()[6:10] == codec.fingerprint
    assert main(["info", str(tmp_path / "a.oscar"), "--json"]) == 0


def test_files_made_with_version_1_fail_with_the_fingerprint_error(tmp_path, capsys):
    """A file the first embedded model (fingerprint bb2087d1) wrote: one line, no output file."""
    made_with_v1 = Path(__file__).parent / "data" / "made-with-small-v1.oscar"
    assert made_with_v1.read_bytes()[6:10].hex() == "bb2087d1"
    out = tmp_path / "out.png"
    assert main(["decompress", str(made_with_v1), "-o", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bb2087d1" in err, err
    assert not out.exists()
