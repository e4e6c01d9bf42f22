"""Classical baselines: round trips, rate matching within tolerance, floors; BD-rate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import make_image
from oscar.errors import ConfigError
from oscar.evaluation.baselines import (
    BASELINES,
    EncodingCache,
    downscale,
    get_baselines,
    match_rate,
    upscale,
)
from oscar.evaluation.bdrate import bd_rate, curves
from oscar.evaluation.records import Aggregate


@pytest.fixture(scope="module")
def image():
    return make_image(96, 128, seed=7)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_round_trip_and_rate_from_bytes(name, image):
    (baseline,) = get_baselines(name)
    low, high = baseline.sweep[0], baseline.sweep[-1]
    data_low, data_high = baseline.encode(image, low), baseline.encode(image, high)
    assert isinstance(data_low, bytes) and len(data_low) < len(data_high)
    decoded = baseline.decode(data_high)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    mse = np.mean((decoded.astype(float) - image) ** 2)
    assert mse < np.mean((baseline.decode(data_low).astype(float) - image) ** 2)
    assert baseline.encode(image, high) == data_high  # deterministic


@pytest.mark.parametrize("name", ["jpeg", "webp", "jpeg2000"])
def test_rate_search_hits_target(name, image):
    (baseline,) = get_baselines(name)
    cache = EncodingCache(baseline, image, image.shape[0] * image.shape[1])
    grid = baseline.qualities
    mid = grid[len(grid) // 2]
    exact = cache.bpp(mid)
    match = match_rate(cache, exact)
    assert match.status == "ok" and match.bpp == pytest.approx(exact)
    # a target between settings: the closest of the two settings that bracket it
    lo_q, hi_q = grid[len(grid) // 3], grid[len(grid) // 3 + 1]
    target = (cache.bpp(lo_q) + cache.bpp(hi_q)) / 2
    fresh = EncodingCache(baseline, image, image.shape[0] * image.shape[1])
    match = match_rate(fresh, target)
    assert len(fresh.done) <= math.ceil(math.log2(len(grid))) + 2  # bisection, not a scan
    rates = sorted(cache.bpp(q) for q in grid)
    above = min(r for r in rates if r >= target)
    below = max(r for r in rates if r <= target)
    assert abs(match.bpp - target) <= min(above - target, target - below) + 1e-12


def test_floor_is_reported_not_dropped(image):
    (jpeg,) = get_baselines("jpeg")
    cache = EncodingCache(jpeg, image, image.shape[0] * image.shape[1])
    match = match_rate(cache, 0.001)
    assert match.status == "floor" and match.encoding.quality == 1.0
    assert "cannot go as low as 0.0010 bpp" in match.note
    small = downscale(image, 4)
    assert small.shape == (24, 32, 3)
    assert upscale(small, 96, 128).shape == image.shape
    down = EncodingCache(jpeg, small, image.shape[0] * image.shape[1])  # rate over ORIGINAL pixels
    assert down.bpp(1.0) < cache.bpp(1.0)


def test_unknown_baseline_is_a_clear_error():
    assert get_baselines("none") == []
    assert [b.name for b in get_baselines("JPEG, jpegxl")] == ["jpeg", "jxl"]
    with pytest.raises(ConfigError, match="unknown baseline 'bpg'"):
        get_baselines("jpeg,bpg")


def test_bd_rate_on_synthetic_curves():
    rates = [0.1, 0.2, 0.4, 0.8, 1.6]
    psnrs = [28.0, 30.5, 33.0, 35.0, 36.5]
    anchor = list(zip(rates, psnrs, strict=True))
    test = [(r * 0.8, d) for r, d in anchor]  # same quality with 20 % fewer bits
    value, note = bd_rate(anchor, test, higher_better=True)
    assert value == pytest.approx(-20.0, abs=1e-9) and note == ""
    lpips = [0.5, 0.4, 0.3, 0.22, 0.15]  # lower is better
    value, _ = bd_rate(
        list(zip(rates, lpips, strict=True)),
        [(r * 1.5, v) for r, v in zip(rates, lpips, strict=True)],
        higher_better=False,
    )
    assert value == pytest.approx(50.0, abs=1e-9)
    assert bd_rate(anchor, anchor)[0] == pytest.approx(0.0, abs=1e-12)


def test_bd_rate_refuses_what_it_cannot_compute():
    anchor = [(0.1, 30.0), (0.2, 32.0), (0.4, 34.0)]
    value, note = bd_rate(anchor, [(0.1, 31.0), (0.2, 30.0), (0.4, 35.0)])
    assert value is None and "not strictly monotone" in note
    value, note = bd_rate(anchor, [(0.5, 40.0), (1.0, 42.0)])
    assert value is None and "share no metric range" in note
    value, note = bd_rate(anchor, [(0.3, 33.0)])
    assert value is None and "1 usable point" in note
    value, note = bd_rate(anchor, [(0.15, 33.0), (0.3, 37.0)])
    assert value is not None and math.isfinite(value) and "overlap" in note


def test_published_csv(tmp_path):
    from helpers import ROOT
    from oscar.evaluation.plots import read_published

    points = read_published(ROOT / "docs" / "published" / "oscar-kodak.csv")
    assert len(points) == 16 and {p.metric for p in points} == {"dists", "lpips_vgg"}
    bad = tmp_path / "bad.csv"
    bad.write_text("codec,bpp,metric,value\nX,0.1,sharpness,3\n")
    with pytest.raises(ConfigError, match="unknown metric 'sharpness'"):
        read_published(bad)


def _aggregate(codec, kind, level, images, bpp, psnr, statuses=None):
    return Aggregate(
        codec=codec,
        kind=kind,
        level=level,
        quality=None,
        setting=f"level {level}",
        images=images,
        bpp=bpp,
        bpp_pooled=bpp,
        bytes_mean=100.0,
        overhead_bytes_mean=None,
        target_bpp=bpp,
        metrics={"psnr": psnr},
        counts={"psnr": images},
        statuses=statuses or {"ok": images},
    )


def test_curves_join_only_means_over_every_image():
    """A down-scaled variant used on 2 of 7 images at a level must not extend its curve."""
    ours = [_aggregate("oscar", "level", lv, 7, 0.01 * (lv + 1), 20.0 + lv) for lv in range(4)]
    down = [
        _aggregate("jpeg-down2", "matched", 0, 7, 0.01, 22.0),
        _aggregate("jpeg-down2", "matched", 1, 7, 0.02, 25.0),
        _aggregate("jpeg-down2", "matched", 2, 2, 0.03, 19.0),  # two hard images only
        _aggregate("jpeg-down2", "matched", 3, 7, 0.04, 28.0, {"ok": 6, "floor": 1}),
    ]
    found = curves(ours + down)
    assert [a.level for a in found["oscar"]] == [0, 1, 2, 3]
    assert [a.level for a in found["jpeg-down2"]] == [0, 1]
