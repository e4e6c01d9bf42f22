"""`oscar eval` end to end on a 3-image folder with the tiny model; runner API; the report in a
headless browser."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from helpers.eval_weights import write_random_weights
from oscar.cli import main
from oscar.coding import bitstream
from oscar.evaluation.baselines import get_baselines
from oscar.evaluation.metrics import MetricSuite, psnr
from oscar.evaluation.records import aggregate
from oscar.evaluation.runner import (
    EvalOptions,
    Shard,
    evaluate_images,
    evaluate_oscar,
    finalize,
    list_images,
)
from oscar.evaluation.shards import load_partial, save_partial

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def isolated_caches(tmp_path_factory):
    """No real weight files from this machine's caches leak into the tests."""
    mp = pytest.MonkeyPatch()
    base = tmp_path_factory.mktemp("caches")
    mp.setenv("TORCH_HOME", str(base / "torch"))
    mp.setenv("XDG_CACHE_HOME", str(base / "cache"))
    mp.setattr("oscar.evaluation.weights._package_file", lambda *a: None)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, tiny_model_dir, sample_dir, isolated_caches):
    weights = write_random_weights(tmp_path_factory.mktemp("weights"))
    out = tmp_path_factory.mktemp("eval") / "out"
    published = out.parent / "published.csv"
    published.write_text("codec,bpp,metric,value,source\nOSCAR,0.0313,psnr,20.0,paper plot\n")
    args = [
        "eval",
        str(sample_dir),
        "-o",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--levels",
        "0,7",
        "--baselines",
        "jpeg,webp",
        "--metrics",
        "psnr,ms_ssim,colour_shift,lpips_alex",
        "--weights-dir",
        str(weights),
        "--crops",
        "2",
        "--crop-size",
        "32",
        "--published",
        str(published),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    return out


def test_eval_writes_every_output(report_dir):
    for name in (
        "per_image.csv",
        "per_image.json",
        "aggregates.csv",
        "aggregates.json",
        "bd_rate.csv",
        "head_to_head.csv",
        "summary.json",
        "rd.png",
        "rd.svg",
        "report.html",
    ):
        assert (report_dir / name).stat().st_size > 0, name
    assert Image.open(report_dir / "rd.png").size[0] > 500
    crops = sorted(p.relative_to(report_dir).as_posix() for p in report_dir.glob("crops/*/*.png"))
    assert "crops/000_L0/original.png" in crops and "crops/001_L7/oscar.png" in crops
    assert not any(p.startswith("crops/002") for p in crops)  # --crops 2
    summary = json.loads((report_dir / "summary.json").read_text())
    assert "akima" in summary["bd_rate_method"] and summary["skipped_metrics"] == {}
    html = (report_dir / "report.html").read_text()
    for fragment in ("<table", "rd.svg", "class='compare'", "type='range'", "not re-measured"):
        assert fragment in html


def test_report_stands_alone_and_names_every_bd_rate(report_dir):
    """One file: every image inlined; every metric has a BD-rate or the reason it has none;
    the colour figure is reported beside PSNR and MS-SSIM; times at sensible precision."""
    html = (report_dir / "report.html").read_text()
    sources = re.findall(r"""src=['"]([^'"]*)['"]""", html)
    assert len(sources) > 20 and all(src.startswith("data:image/") for src in sources)
    assert "href='rd.png'" not in html and "crops/" not in html
    rows = list(csv.DictReader((report_dir / "bd_rate.csv").open()))
    assert {r["metric"] for r in rows} == {"psnr", "ms_ssim", "colour_shift", "lpips_alex"}
    assert all(r["bd_rate_percent"] or r["note"] for r in rows)
    for r in rows:
        if not r["bd_rate_percent"]:
            assert f"n/a: {r['note']}" in html
    assert "colour shift" in html
    from oscar.evaluation.report import _fmt_metric, _fmt_ms

    assert [_fmt_ms(s) for s in (5.882831, 0.0123456, 0.00045)] == ["5880", "12.3", "0.45"]
    assert _fmt_metric("psnr", 23.456789) == "23.46" and _fmt_metric("ms_ssim", 0.9) == "0.9000"


def test_head_to_head_counts_every_image_once_per_baseline(report_dir):
    rows = list(csv.DictReader((report_dir / "head_to_head.csv").open()))
    per_image = list(csv.DictReader((report_dir / "per_image.csv").open()))
    images = len({r["image"] for r in per_image})
    assert rows and all(int(r["images"]) == images for r in rows)
    assert all(int(r["wins"]) + int(r["losses"]) + int(r["mixed"]) == images for r in rows)
    assert "Head to head" in (report_dir / "report.html").read_text()


def test_head_to_head_outcomes_use_both_bytes_and_quality():
    from oscar.evaluation.head_to_head import head_to_head, outcome
    from oscar.evaluation.records import ImageRecord

    def rec(codec, kind, size, psnr, shift):
        return ImageRecord(
            image="a.png", codec=codec, kind=kind, level=3, setting="s", quality=None,
            height=8, width=8, bytes=size, bpp=size / 8, overhead_bytes=None, target_bpp=None,
            status="ok", notes=(), metrics={"psnr": psnr, "colour_shift": shift},
            encode_s=0.0, decode_s=0.0,
        )  # fmt: skip

    ours = rec("oscar", "oscar", 100, 30.0, 2.0)
    assert outcome(ours, rec("jpeg", "matched", 120, 29.0, 1.0), "psnr") == "win"
    assert outcome(ours, rec("jpeg", "matched", 90, 31.0, 1.0), "psnr") == "loss"
    assert outcome(ours, rec("jpeg", "matched", 90, 29.0, 1.0), "psnr") == "mixed"
    # lower is better for the colour shift
    assert outcome(ours, rec("jpeg", "matched", 120, 29.0, 1.0), "colour_shift") == "mixed"
    assert outcome(ours, rec("jpeg", "matched", 100, 29.0, 3.0), "colour_shift") == "win"
    rows = head_to_head([ours, rec("jpeg", "matched", 120, 29.0, 1.0)], ["psnr"])
    assert [(r.level, r.codec, r.wins, r.losses, r.mixed) for r in rows] == [(3, "jpeg", 1, 0, 0)]


def test_rates_are_real_bytes(report_dir, tiny_codec, sample_dir):
    records = json.loads((report_dir / "per_image.json").read_text())
    ours = [r for r in records if r["codec"] == "oscar"]
    assert len(ours) == 3 * 2
    for r in ours[:2]:  # re-encoding is deterministic: the bytes must be the same
        data = tiny_codec.compress(sample_dir / r["image"], r["level"])
        assert r["bytes"] == len(data)
        assert r["bpp"] == len(data) * 8 / (r["height"] * r["width"])
        assert r["overhead_bytes"] == bitstream.read(data).overhead_bytes
    for r in ours:
        assert r["bpp"] == r["bytes"] * 8 / (r["height"] * r["width"])
        assert set(r["metrics"]) == {"psnr", "ms_ssim", "colour_shift", "lpips_alex"}
    matched = [r for r in records if r["kind"] == "matched"]
    for r in ours:
        for name in ("jpeg", "webp"):
            (m,) = [
                x
                for x in matched
                if x["codec"] == name and x["image"] == r["image"] and x["level"] == r["level"]
            ]
            assert m["target_bpp"] == r["bpp"]
            assert m["bpp"] == m["bytes"] * 8 / (m["height"] * m["width"])
            if m["status"] == "floor":  # below the floor: the down-scaled variants are run too
                assert "cannot go as low" in " ".join(m["notes"])
                for scale in (2, 4):
                    assert any(
                        x["codec"] == f"{name}-down{scale}"
                        and x["image"] == r["image"]
                        and x["level"] == r["level"]
                        for x in matched
                    )
    sweeps = [r for r in records if r["kind"] == "sweep"]
    assert len(sweeps) == 3 * 2 * 8
    with (report_dir / "per_image.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records) and "lpips_alex" in rows[0]
    aggregates = json.loads((report_dir / "aggregates.json").read_text())
    oscar_rows = [a for a in aggregates if a["codec"] == "oscar"]
    assert [a["level"] for a in oscar_rows] == [0, 7] and all(a["images"] == 3 for a in oscar_rows)
    mean_bpp = np.mean([r["bpp"] for r in ours if r["level"] == 0])
    assert oscar_rows[0]["bpp"] == pytest.approx(mean_bpp)


def test_missing_weights_skip_with_one_line(
    tiny_model_dir, sample_dir, tmp_path, capsys, isolated_caches
):
    code = main(
        [
            "eval",
            str(sample_dir / "img0.png"),
            "-o",
            str(tmp_path / "out"),
            "--model",
            str(tiny_model_dir),
            "--levels",
            "0",
            "--baselines",
            "none",
            "--metrics",
            "psnr,lpips_vgg",
            "--no-sweep",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    lines = [line for line in captured.err.splitlines() if "skipped" in line]
    assert len(lines) == 1 and "vgg16-397923af.pth" in lines[0] and "LPIPS-VGG" in lines[0]
    assert (
        main(["eval", str(sample_dir), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir)])
        == 1
    )  # not empty, no --force
    assert "--force" in capsys.readouterr().err


def test_shards_merge_to_the_same_result(tiny_codec, sample_dir, tmp_path):
    images = list_images(sample_dir)[:2]
    suite = MetricSuite(("psnr",))
    options = EvalOptions(levels=(0,), sweep=False, crops=2, crop_size=16, warmup=False)
    baselines = get_baselines("jpeg")
    whole = finalize(
        [evaluate_images(tiny_codec, images, baselines, suite, options, progress=False)], suite
    )
    parts = []
    for i in range(2):
        part = evaluate_images(
            tiny_codec, images, baselines, suite, options, Shard(i, 2), progress=False
        )
        save_partial(part, tmp_path / f"part-{i}")
        parts.append(load_partial(tmp_path / f"part-{i}"))
    merged = finalize(parts, suite)
    key = lambda r: (r.image, r.codec, r.level, r.bytes, r.metrics["psnr"])  # noqa: E731
    assert sorted(map(key, merged.records)) == sorted(map(key, whole.records))
    assert [a.bpp for a in merged.aggregates] == [a.bpp for a in whole.aggregates]
    assert len(merged.crops) == len(whole.crops) == 2
    assert all(
        np.array_equal(m.crops["oscar"], w.crops["oscar"])
        for m, w in zip(merged.crops, whole.crops, strict=True)
    )


def test_evaluate_oscar_for_training_validation(tiny_codec, sample_dir, tmp_path):
    paths = sorted(sample_dir.glob("*.png"))
    records = evaluate_oscar(tiny_codec, paths, [0, 3], save_dir=tmp_path / "val")
    assert len(records) == 6
    r = records[0]
    assert (r.codec, r.kind, r.level, r.image) == ("oscar", "oscar", 0, paths[0].name)
    assert set(r.metrics) == {"psnr", "ms_ssim"} and r.encode_s > 0 and r.decode_s > 0
    saved = (tmp_path / "val" / "L0" / f"{paths[0].stem}.oscar").read_bytes()
    assert len(saved) == r.bytes
    decoded = np.asarray(Image.open(tmp_path / "val" / "L0" / f"{paths[0].stem}.png"))
    assert np.array_equal(decoded, tiny_codec.decompress(saved))
    rows = aggregate(records)
    assert [(a.codec, a.level, a.images) for a in rows] == [("oscar", 0, 3), ("oscar", 3, 3)]
    with pytest.raises(Exception, match="per-image metrics only"):
        evaluate_oscar(tiny_codec, paths, [0], metrics=("fid",))


# ----------------------------------------------------------------------------- browser
def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("CI is set but chromium is not installed (.ci/run installs it with apt-get)")
    pytest.skip("headless Chromium not installed (apt-get install chromium): report not rendered")


def _browser(args: list[str], tmp_path, name: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{name}"
    return subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _image_counts(dom: str) -> tuple[int, int]:
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    total = re.search(r'data-images-total="(\d+)"', dom)
    assert loaded and total, "the report's image check did not run"
    return int(loaded.group(1)), int(total.group(1))


def test_report_renders_in_headless_chromium(report_dir, tmp_path):
    url = (report_dir / "report.html").as_uri()
    shot = tmp_path / "report.png"
    run = _browser(
        ["--window-size=1280,1800", "--virtual-time-budget=5000", f"--screenshot={shot}", url],
        tmp_path,
        "shot",
    )
    assert shot.exists(), run.stderr[-2000:]
    picture = np.asarray(Image.open(shot).convert("RGB"))
    assert picture.shape == (1800, 1280, 3) and picture.std() > 10  # not a blank page
    dom = _browser(["--virtual-time-budget=5000", "--dump-dom", url], tmp_path, "dom").stdout
    loaded, total = _image_counts(dom)
    assert total > 20 and loaded == total
    assert f"All {total} images loaded" in dom
    # the check itself works: an image that does not decode is reported
    broken = tmp_path / "broken.html"
    page = (report_dir / "report.html").read_text()
    start = page.index("data:image/png;base64,") + len("data:image/png;base64,")
    broken.write_text(page[:start] + "bm90IGEgcG5n" + page[start + 40 :])
    dom = _browser(
        ["--virtual-time-budget=5000", "--dump-dom", broken.as_uri()],
        tmp_path,
        "broken",
    ).stdout
    loaded, total = _image_counts(dom)
    assert loaded < total and "failed to load" in dom


def test_eval_decodes_with_the_steps_asked_for(tiny_codec, tiny_model_dir, sample_dir, tmp_path):
    """`--steps N`: every reconstruction is decompress(data, steps=N); impossible N is refused
    before any work."""
    images = list_images(sample_dir)[:1]
    suite = MetricSuite(("psnr",))

    def run(steps):
        options = EvalOptions(levels=(7,), sweep=False, crops=0, warmup=False, steps=steps)
        (record,) = evaluate_images(tiny_codec, images, [], suite, options, progress=False).records
        return record

    one, three = run(1), run(3)
    rgb = np.asarray(Image.open(images[0][0]).convert("RGB"))
    data = tiny_codec.compress(rgb, 7)
    assert three.bytes == one.bytes == len(data)  # same file
    assert three.metrics["psnr"] == pytest.approx(psnr(rgb, tiny_codec.decompress(data, steps=3)))
    assert three.metrics["psnr"] != pytest.approx(one.metrics["psnr"])
    out = tmp_path / "out"
    argv = ["eval", str(images[0][0]), "-o", str(out), "--model", str(tiny_model_dir)]
    argv += ["--levels", "7", "--baselines", "none", "--metrics", "psnr", "--steps", "151"]
    assert main(argv) == 1 and not out.exists()  # level 7's timestep is 150


def test_downscaled_always_adds_the_variants_at_every_level(tiny_codec, tmp_path):
    # a flat grey image: webp is not at its floor at level 7's rate (on a flat image it can't
    # even spend that many bytes), so only "always" adds the smaller copies
    Image.new("RGB", (256, 256), (120, 130, 140)).save(tmp_path / "grey.png")
    images = list_images(tmp_path)
    suite = MetricSuite(("psnr",))
    found = {}
    for when in ("floor", "always"):
        options = EvalOptions(levels=(7,), sweep=False, crops=0, warmup=False, downscaled=when)
        part = evaluate_images(
            tiny_codec, images, get_baselines("webp"), suite, options, progress=False
        )
        found[when] = {(r.codec, r.status) for r in part.records if r.kind == "matched"}
    ((codec, status),) = found["floor"]
    assert codec == "webp" and status != "floor"
    assert {codec for codec, _ in found["always"]} == {"webp", "webp-down2", "webp-down4"}
    with pytest.raises(ValueError, match="downscaled"):
        EvalOptions(downscaled="sometimes")
