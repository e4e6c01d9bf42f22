"""Model directories: save/load, strictness, fingerprints."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import build_tiny_model, make_image
from oscar.coding.codec import OscarCodec
from oscar.errors import ModelError
from oscar.store.pretrained import PARTS_FILE, load_model, save_model


def test_save_load_same_output(tmp_path):
    model = build_tiny_model(3).eval()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m").model
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        for level in (0, 7):
            a, b = model(x, level), loaded(x, level)
            assert torch.equal(a.indices, b.indices)
            torch.testing.assert_close(a.x_hat, b.x_hat)


def test_model_files_get_the_usual_permissions(tmp_path, tiny_model_dir):
    """safetensors writes its files 0600; a shared model folder must stay readable."""
    import os

    loaded = load_model(tiny_model_dir)
    old = os.umask(0o022)
    try:
        save_model(loaded.model, tmp_path / "m", priors=loaded.priors)
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "m").rglob("*") if p.is_file()]
    assert any(p.name == "priors.safetensors" for p in files)
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: 0o644 for p in files}


def test_fingerprint_is_stable_and_tracks_weights(tmp_path):
    model = build_tiny_model(3)
    first = save_model(model, tmp_path / "a")
    assert load_model(tmp_path / "a").fingerprint == first
    assert save_model(model, tmp_path / "b") == first  # same weights, same fingerprint
    with torch.no_grad():
        model.hyper["4"].quantizer.codebook[0, 0] += 1e-3
    assert save_model(model, tmp_path / "c") != first


def test_float16_save_loads_as_float32(tmp_path):
    save_model(build_tiny_model(0), tmp_path / "m", dtype=torch.float16)
    state = load_file(str(tmp_path / "m" / PARTS_FILE))
    assert all(t.dtype == torch.float16 for t in state.values())
    codec = OscarCodec.from_pretrained(tmp_path / "m", device="cpu")
    assert next(codec.model.parameters()).dtype == torch.float32
    assert codec.decompress(codec.compress(make_image(16, 16), 1)).shape == (16, 16, 3)


@pytest.fixture()
def model_copy(tmp_path, tiny_model_dir):
    path = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, path)
    return path


def test_missing_parts(model_copy):
    (model_copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelError, match="UNet weights is missing"):
        load_model(model_copy)


def test_missing_description(model_copy):
    (model_copy / "oscar.json").unlink()
    with pytest.raises(ModelError, match="model description is missing"):
        load_model(model_copy)


def test_wrong_shapes(model_copy):
    path = model_copy / PARTS_FILE
    state = load_file(str(path))
    state["hyper.0.g_a.0.weight"] = torch.zeros(3, 3, 1, 1)
    save_file(state, str(path))
    with pytest.raises(ModelError, match=r"wrong shape: (hyper\.)?0\.g_a\.0\.weight"):
        load_model(model_copy)


def test_missing_and_unexpected_tensors(model_copy):
    path = model_copy / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    state.pop("decoder.conv_out.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(ModelError, match=r"missing: decoder\.conv_out\.weight.*unexpected: extra"):
        load_model(model_copy)


def test_nan_weights(model_copy):
    path = model_copy / PARTS_FILE
    state = load_file(str(path))
    state["prompt_embedding"][0, 0] = float("nan")
    save_file(state, str(path))
    with pytest.raises(ModelError, match="NaN"):
        load_model(model_copy)


def test_not_safetensors(model_copy):
    (model_copy / PARTS_FILE).write_bytes(b"\x80\x04pickle-ish")
    with pytest.raises(ModelError, match="not a readable safetensors"):
        load_model(model_copy)


def test_bad_config(model_copy):
    meta = json.loads((model_copy / "oscar.json").read_text())
    meta["config"]["levels"][0]["grid_factor"] = 12
    (model_copy / "oscar.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="grid_factor"):
        load_model(model_copy)


def test_priors_change_the_fingerprint(tiny_model_dir, model_copy):
    before = load_model(model_copy).fingerprint
    (model_copy / "priors.safetensors").unlink()
    assert load_model(model_copy).fingerprint != before
    assert np.all(load_model(tiny_model_dir).priors.table(0) >= 1)
