"""Encoder effort (oscar.coding.index_search): better indices, same decoder, never worse than
nearest (by the search's measure: the error of the coarse latent that the hyper-synthesis
rebuilds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_image
from oscar.cli import main
from oscar.coding import index_search
from oscar.coding.codec import OscarCodec
from oscar.coding.effort import DEFAULT_EFFORT, check_effort
from oscar.coding.index_search import IndexSearch, search_indices
from oscar.errors import ConfigError


@pytest.fixture(scope="module")
def effort_codec(tiny_model_dir) -> OscarCodec:
    return OscarCodec.from_pretrained(tiny_model_dir, device="cpu", effort=8)


@pytest.fixture(scope="module")
def nearest_codec(tiny_model_dir) -> OscarCodec:
    return OscarCodec.from_pretrained(tiny_model_dir, device="cpu", effort=0)


def _latent(codec, image):
    y, codes = codec.encode_latents([codec.prepare_image(image)])
    return y, torch.from_numpy(np.asarray(codes, np.uint8))


def _coarse_error(codec, level, indices, y, rms) -> float:
    with torch.inference_mode(False):
        err, _, _ = IndexSearch(codec.model, level).error(
            torch.as_tensor(indices)[None], y.clone(), rms.clone(), grad=False
        )
    return float(err.sum())


def test_effort_zero_is_the_nearest_codeword_and_the_default_searches(
    tiny_codec, nearest_codec, tiny_model_dir
):
    image = make_image(48, 80)
    y, _ = _latent(tiny_codec, image)
    explicit = OscarCodec.from_pretrained(tiny_model_dir, device="cpu", effort=DEFAULT_EFFORT)
    assert tiny_codec.effort == DEFAULT_EFFORT > 0
    for level in (0, 3, 4):
        hyper = tiny_codec.model.hyper_coder(level)
        with torch.inference_mode():
            nearest = hyper.quantizer.quantize(hyper.g_a(y))[0].numpy()
        np.testing.assert_array_equal(nearest_codec.encode(image, level).indices, nearest)
        assert explicit.compress(image, level) == tiny_codec.compress(image, level)


def test_search_lowers_the_coarse_latent_error_and_files_decode_anywhere(
    tiny_codec, nearest_codec, effort_codec
):
    image = make_image(64, 96, seed=3)
    y, rms = _latent(tiny_codec, image)
    changed = 0
    for level in (3, 4, 5, 7):
        nearest = nearest_codec.encode(image, level).indices
        searched = effort_codec.encode(image, level).indices
        assert searched.shape == nearest.shape and searched.dtype == np.int64
        assert searched.min() >= 0 and searched.max() < tiny_codec.rate(level).codebook_size
        # The guarantee: the coarse latent's error never ends above the nearest choice's.
        before = _coarse_error(tiny_codec, level, nearest, y, rms)
        after = _coarse_error(tiny_codec, level, searched, y, rms)
        assert after <= before
        changed += int((searched != nearest).sum())
        # Same model, any effort: any codec decodes the file, and the same bytes come twice.
        data = effort_codec.compress(image, level)
        assert data == effort_codec.compress(image, level)
        assert nearest_codec.decompress(data).shape == image.shape
    assert changed > 0, "the search moved no token at all on four levels"


def test_search_restores_gradient_flags(tiny_model_dir):
    codec = OscarCodec.from_pretrained(tiny_model_dir, device="cpu", effort=2)
    codec.model.hyper_coder(4).g_s[0].weight.requires_grad_(False)
    flags = [p.requires_grad for p in codec.model.parameters()]
    codec.compress(make_image(32, 32), 4)
    assert [p.requires_grad for p in codec.model.parameters()] == flags


@pytest.mark.parametrize("level", [3, 4])
def test_large_latents_are_searched_in_windows_that_tile_the_grid(
    tiny_codec, nearest_codec, monkeypatch, level
):
    monkeypatch.setattr(index_search, "MAX_WINDOW_POSITIONS", 16 * 16)
    monkeypatch.setattr(index_search, "WINDOW_MARGIN", 8)
    model = tiny_codec.model
    block = model.rate(level).latent_downsample
    latent = (48, 40)  # 384 x 320 pixels, padded multiple of 64
    kept = np.zeros((latent[0] // block, latent[1] // block), int)
    windows = list(index_search._windows(model, level, latent))
    assert len(windows) > 1
    for (t0, t1, s0, s1), (i0, i1, j0, j1) in windows:
        assert t0 <= i0 < i1 <= t1 and s0 <= j0 < j1 <= s1
        kept[i0:i1, j0:j1] += 1
    assert (kept == 1).all()
    image = make_image(320, 384, seed=5)
    y, _ = _latent(tiny_codec, image)
    nearest = torch.as_tensor(nearest_codec.encode(image, level).indices)[None]
    with torch.inference_mode():
        features = model.hyper_coder(level).g_a(y)
    out = search_indices(model, y, features, level, nearest, 2)
    assert out.shape == nearest.shape
    assert int(out.min()) >= 0 and int(out.max()) < model.rate(level).codebook_size


def test_bad_effort_is_one_clear_error(tiny_model_dir, tmp_path, capsys):
    for bad in (-1, 65, 1.5, True, "4"):
        with pytest.raises(ConfigError, match="effort"):
            check_effort(bad)
    Image.fromarray(make_image(20, 20)).save(tmp_path / "a.png")
    args = ["compress", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.oscar")]
    assert main([*args, "--model", str(tiny_model_dir), "--effort", "-1"]) == 1
    err = capsys.readouterr().err
    assert "effort must be an integer from 0 to 64" in err and "Traceback" not in err
    assert not (tmp_path / "a.oscar").exists()
    assert main([*args, "--model", str(tiny_model_dir), "--effort", "2"]) == 0
    assert (tmp_path / "a.oscar").read_bytes()[:3] == b"OSC"


class _Saboteur(IndexSearch):
    """Proposes each token's worst candidate and keeps every move: only the final check stands
    between it and a worse file."""

    def propose(self, gradient, e, options, candidates):
        change = torch.einsum("bhwd,bhwcd->bhwc", gradient, options)
        pick = change.argmax(-1, keepdim=True)
        return candidates.gather(-1, pick).squeeze(-1), torch.full(pick.shape[:-1], -1.0)

    def _local(self, err):
        # run() compares _local(trial error) < _local(current error): make every trial win.
        self._calls = getattr(self, "_calls", 0) + 1
        return torch.zeros_like(err) if self._calls % 2 else torch.ones_like(err)


def test_the_search_never_returns_worse_indices_than_it_started_from(tiny_codec, nearest_codec):
    images = [make_image(64, 96, seed=4), make_image(64, 96, seed=5)]  # a batch: checked per image
    latents = [_latent(tiny_codec, image) for image in images]
    with torch.inference_mode(False):
        y = torch.cat([lat[0] for lat in latents]).clone()
        rms = torch.cat([lat[1] for lat in latents]).clone()
        for level in (3, 4):
            nearest = torch.as_tensor(
                np.stack([r.indices for r in nearest_codec.encode_batch(images, level)])
            )
            saboteur = _Saboteur(tiny_codec.model, level)
            saboteur.candidates = min(8, saboteur.candidates * 4)
            with torch.no_grad():
                features = tiny_codec.model.hyper_coder(level).g_a(y)
            out = saboteur.run(nearest, features, y, rms, rounds=4)
            assert torch.equal(out, nearest)
