"""scripts/build_dataset.py: selection rules, split, licences and manifest, on synthetic images.

No network and no Debian tools: only the pure functions are exercised here.
"""

from __future__ import annotations

import importlib.util
import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_dataset.py"


@pytest.fixture(scope="module")
def bd():
    spec = importlib.util.spec_from_file_location("build_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_dataset"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("build_dataset", None)


def textured(height: int, width: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth large structure plus fine noise, same look at any size."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    base = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), np.float64)
    noise = rng.normal(0, 10, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def gradient(height: int, width: int) -> Image.Image:
    xx = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    return Image.fromarray(np.stack([xx, xx * 0.5, 255 - xx], 2).astype(np.uint8))


def test_work_names(bd):
    assert bd.work_of("Kay/contents/images_dark/5120x2880.png") == ("Kay", True)
    assert bd.work_of("Kay/contents/images/1080x1920.png") == ("Kay", False)
    assert bd.work_of("abstract/Elephants_3840x2160.jpg") == ("abstract/Elephants", False)
    assert bd.work_of("abstract/Elephants.jpg") == ("abstract/Elephants", False)
    assert bd.work_of("adwaita-d.webp") == ("adwaita", True)
    assert bd.work_of("desktop/MATE-Stripes-Light.png") == ("desktop/MATE-Stripes", False)
    assert (
        bd.work_of("desktop/Ubuntu-Mate-Dark-no-logo.png")[0] == "desktop/Ubuntu-Mate-Dark-no-logo"
    )
    assert bd.output_name("mate", "nature/Aqua") == "mate_nature_Aqua.jpg"


def test_rules_by_name(bd):
    assert bd.skip_reason_by_name("blobs-l.svg", False) == "vector source"
    assert bd.skip_reason_by_name("Kay/metadata.json", False) == ""
    assert bd.skip_reason_by_name("Kay/contents/screenshot.png", False) == "preview"
    assert bd.skip_reason_by_name("a/contents/images/800x600.jpg", True).startswith("symbolic")
    assert bd.skip_reason_by_name("nature/Aqua.JPG", False) is None


def test_flatness_and_transparency(bd):
    assert bd.detail_fraction(Image.new("RGB", (900, 600), (40, 90, 200))) == 0.0
    assert bd.detail_fraction(gradient(600, 900)) == 0.0  # a plane per block: no detail
    assert bd.detail_fraction(textured(600, 900)) > 0.9
    rgba = textured(100, 100).convert("RGBA")
    rgba.putalpha(Image.new("L", (100, 100), 128))
    rgb, transparent = bd.to_rgb(rgba)
    assert rgb.mode == "RGB" and transparent == 1.0
    assert bd.to_rgb(textured(50, 60))[1] == 0.0


def test_hash_and_downscale(bd):
    image = textured(900, 1600, seed=1)
    small = bd.downscale(image, 512)
    assert small.size == (512, 288)
    assert bd.downscale(small, 1536) is small  # never upscaled
    assert bd.hamming(bd.dhash(image), bd.dhash(small)) <= 8
    assert bd.hamming(bd.dhash(image), bd.dhash(textured(900, 1600, seed=2))) > 64
    assert bd.encode_jpeg(small) == bd.encode_jpeg(small)


def candidate(bd, folder: Path, rel: str, image: Image.Image) -> object:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return bd.Candidate("pkg", "p", "1.0", path, f"usr/share/p/{rel}", rel, *image.size)


def test_select(bd, tmp_path, monkeypatch):
    monkeypatch.setattr(bd, "MIN_SHORT_SIDE", 120)  # small images keep the test fast
    big = textured(270, 480, seed=3)
    twin = Image.fromarray(np.clip(np.asarray(big, np.int16) + 12, 0, 255).astype(np.uint8))
    clear = textured(200, 200).convert("RGBA")
    clear.putalpha(Image.new("L", clear.size, 0))
    candidates = [
        candidate(bd, tmp_path, "Hills_480x270.png", big),
        candidate(bd, tmp_path, "Hills.png", bd.downscale(big, 320)),
        candidate(bd, tmp_path, "Brighter.png", twin.resize((400, 225))),
        candidate(bd, tmp_path, "Sky.png", gradient(200, 300)),
        candidate(bd, tmp_path, "Tiny.png", textured(100, 400)),
        candidate(bd, tmp_path, "Clear.png", clear),
        candidate(bd, tmp_path, "Other.png", textured(200, 250, seed=4)),
    ]
    result = bd.select(candidates, max_side=240)
    kept = {s.candidate.rel_path: s for s in result.kept}
    assert sorted(kept) == ["Hills_480x270.png", "Other.png"]
    assert kept["Hills_480x270.png"].image.size == (240, 135)
    reasons = {path.rsplit("/", 1)[-1]: reason for _, path, reason in result.skipped}
    assert reasons["Hills.png"] == "other version of usr/share/p/Hills_480x270.png"
    assert reasons["Brighter.png"].startswith("near-duplicate of usr/share/p/Hills_480x270.png")
    assert reasons["Sky.png"].startswith("too flat")
    assert reasons["Tiny.png"].startswith("too small")
    assert reasons["Clear.png"].startswith("transparent")
    assert len(result.skipped) == 5


def test_split_is_deterministic_balanced_and_whole_images(bd):
    items = [(f"a/{i}.jpg", "a/photo") for i in range(20)] + [
        (f"b/{i}.jpg", "b/illustration") for i in range(9)
    ]
    split = bd.assign_splits(items, fraction=0.12)
    assert split == bd.assign_splits(list(reversed(items)), fraction=0.12)
    held = [k for k, s in split.items() if s == "heldout"]
    assert len(held) == round(0.12 * len(items)) == 3
    assert {k.split("/")[0] for k in held} == {"a", "b"}
    assert set(split.values()) == {"train", "heldout"} and len(split) == len(items)


DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: x

Files: *
Copyright: 2014 Somebody
License: GPL-2+

Files: nature/Aqua.jpg
       desktop/Ubuntu-*-no-logo.png
Copyright: 2008, A. Photographer
           2009, B. Editor
License: CC-BY-SA-4.0
 Full text here.

License: GPL-2+
 Text.
"""

FREE_FORM = """Image Authors:

 - adwaita*
 - other.jpg:
   Copyright © 2011 Jakub Steiner
   Licensed under Creative Commons Attribution-ShareAlike 3.0 License.

oceans.svg:
  Copyright © Ed Hawkins
  CC BY 4.0 License.
"""


def test_licences(bd, tmp_path):
    path = "usr/share/backgrounds/mate/nature/Aqua.jpg"
    found = bd.debian_licence(DEP5, path, "fallback")
    assert found.licence == "CC-BY-SA-4.0"
    assert found.copyright == "2008, A. Photographer; 2009, B. Editor"
    assert bd.debian_licence(DEP5, "usr/share/x/Storm.jpg", "fallback").licence == "GPL-2+"
    logo = bd.debian_licence(DEP5, "usr/share/m/desktop/Ubuntu-Warm-no-logo.png", "f")
    assert logo.licence == "CC-BY-SA-4.0"
    gnome = bd.debian_licence(FREE_FORM, "usr/share/backgrounds/gnome/adwaita-l.webp", "pkg")
    assert (gnome.licence, gnome.copyright) == ("CC-BY-SA-3.0", "2011 Jakub Steiner")
    assert bd.debian_licence(FREE_FORM, "usr/share/g/oceans.svg", "pkg").licence == "CC-BY-4.0"
    unknown = bd.debian_licence(FREE_FORM, "usr/share/g/truchet-l.webp", "GPL-2+")
    assert unknown.licence == "GPL-2+" and "package level" in unknown.licence_source
    (tmp_path / "metadata.json").write_text(
        json.dumps({"KPlugin": {"Authors": [{"Name": "Ann"}], "License": "CC-BY-SA-4.0"}})
    )
    assert bd.kde_metadata(tmp_path) == ("CC-BY-SA-4.0", "Ann")


def test_manifest_round_trip_and_verify(bd, tmp_path):
    rows = []
    for i, split in enumerate(["train", "train", "heldout"]):
        image = textured(64, 96, seed=i)
        data = bd.encode_jpeg(image)
        (tmp_path / split).mkdir(exist_ok=True)
        (tmp_path / split / f"img{i}.jpg").write_bytes(data)
        row = dict.fromkeys(bd.MANIFEST_FIELDS, "x")
        row.update(file=f"{split}/img{i}.jpg", split=split, width="96", height="64")
        row["sha256"] = bd.sha256_file(tmp_path / split / f"img{i}.jpg")
        rows.append(row)
    manifest = tmp_path / "manifest.csv"
    bd.write_manifest(rows, manifest)
    assert bd.read_manifest(manifest) == sorted(rows, key=lambda r: r["file"])
    assert bd.verify(tmp_path, bd.read_manifest(manifest)) == []
    assert bd.main(["--out", str(tmp_path), "--manifest", str(manifest), "--verify"]) == 0

    (tmp_path / "train" / "img0.jpg").write_bytes(bd.encode_jpeg(textured(64, 96, seed=9)))
    (tmp_path / "heldout" / "img2.jpg").unlink()
    (tmp_path / "train" / "stray.jpg").write_bytes(b"")
    problems = bd.verify(tmp_path, bd.read_manifest(manifest))
    assert problems == [
        "heldout/img2.jpg: missing",
        "train/img0.jpg: SHA-256 differs from the manifest",
        "train/stray.jpg: not in the manifest",
    ]
    assert bd.main(["--out", str(tmp_path), "--manifest", str(manifest), "--verify"]) == 1
    assert (
        bd.main(["--out", str(tmp_path), "--manifest", str(tmp_path / "no.csv"), "--verify"]) == 1
    )


def test_clear_error_without_apt(bd, tmp_path, monkeypatch):
    monkeypatch.setattr(bd.shutil, "which", lambda name: None)
    with pytest.raises(bd.DatasetError, match="apt-get not found"):
        bd.fetch(bd.PACKAGES[0], tmp_path)


# --------------------------------------------------------------------------- containers


def jpeg_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    textured(24, 32, seed=seed).save(buffer, "JPEG")
    return buffer.getvalue()


def eet_file(entries: list[tuple[str, bytes, int]]) -> bytes:
    """An Eet (version 2) file built byte by byte: header, directory, names, then data."""
    header_size = 12 + 24 * len(entries)
    names = b"".join(name.encode() + b"\0" for name, _, _ in entries)
    directory, blobs = b"", b""
    name_at, data_at = header_size, header_size + len(names)
    for name, payload, flags in entries:
        stored = zlib.compress(payload) if flags & 1 else payload
        directory += struct.pack(
            ">6I", data_at + len(blobs), len(stored), len(payload), name_at, len(name) + 1, flags
        )
        name_at += len(name) + 1
        blobs += stored
    return struct.pack(">3I", 0x1EE70F42, len(entries), 0) + directory + names + blobs


def test_eet_reader(bd):
    big, small = jpeg_bytes(1), jpeg_bytes(2)
    alpha = struct.pack("<3I", 0xBEEFF00D, len(small), 3) + small + b"abc"
    data = eet_file(
        [
            ("edje/images/0", big, 0),
            ("edje/file", b"settings" * 10, 1),  # zlib-compressed
            ("edje/images/1", alpha, 0),
            ("edje/images/2", b"\xac\x1d\xfe\xed" + bytes(40), 0),  # lossless ARGB
            ("secret", b"x", 2),  # ciphered: left out
            ("edje/sources", b"lz4 bytes", 1 | (10 << 3)),  # LZ4: left out
        ]
    )
    entries = bd.read_eet(data)
    assert sorted(entries) == ["edje/file", "edje/images/0", "edje/images/1", "edje/images/2"]
    assert entries["edje/file"] == b"settings" * 10
    assert bd.eet_image_jpeg(entries["edje/images/0"]) == big
    assert bd.eet_image_jpeg(entries["edje/images/1"]) == small
    assert bd.eet_image_jpeg(entries["edje/images/2"]) is None
    with pytest.raises(bd.DatasetError, match="not an Eet file"):
        bd.read_eet(b"\x1e\xe7\xff\x00" + bytes(20))
    with pytest.raises(bd.DatasetError, match="past the end"):
        bd.read_eet(data[:100])


def rcc_file(tree: dict, version: int = 2) -> bytes:
    """A Qt resource file built byte by byte from {name: bytes | (bytes, "zlib") | {...}}."""
    nodes, names, blobs = [], b"", b""

    def name_offset(name: str) -> int:
        nonlocal names
        at = len(names)
        encoded = name.encode("utf-16-be")
        names += struct.pack(">HI", len(name), 0) + encoded
        return at

    # Breadth-first, as rcc writes it: a directory's children are consecutive nodes.
    nodes.append(["", tree])
    i = 0
    while i < len(nodes):
        name, content = nodes[i]
        if isinstance(content, dict):
            nodes[i].append(len(nodes))
            nodes.extend([child, sub] for child, sub in content.items())
        i += 1
    packed = []
    for index, node in enumerate(nodes):
        name, content = node[0], node[1]
        at = name_offset(name) if index else 0
        if isinstance(content, dict):
            packed.append(struct.pack(">IHII", at, 2, len(content), node[2]))
        else:
            payload, flags = (content, 0) if isinstance(content, bytes) else (content[0], 1)
            stored = struct.pack(">I", len(payload)) + zlib.compress(payload) if flags else payload
            packed.append(struct.pack(">IHHHI", at, flags, 0, 0, len(blobs)))
            blobs += struct.pack(">I", len(stored)) + stored
        if version >= 2:
            packed[-1] += bytes(8)  # modification time
    header = 20 + (4 if version >= 3 else 0)
    tree_at = header
    data_at = tree_at + sum(len(p) for p in packed)
    names_at = data_at + len(blobs)
    head = b"qres" + struct.pack(">4I", version, tree_at, data_at, names_at)
    head += bytes(4) if version >= 3 else b""
    return head + b"".join(packed) + blobs + names


def test_rcc_reader(bd):
    photo = jpeg_bytes(3)
    tree = {
        "gcompris": {
            "src": {"erase": {"gorilla.webp": photo, "main.qml": (b"Item {}" * 20, "zlib")}},
            "readme": b"hello",
        }
    }
    for version in (1, 2, 3):
        files = bd.read_rcc(rcc_file(tree, version))
        assert files == {
            "gcompris/readme": b"hello",
            "gcompris/src/erase/gorilla.webp": photo,
            "gcompris/src/erase/main.qml": b"Item {}" * 20,
        }
    with pytest.raises(bd.DatasetError, match="not a Qt resource file"):
        bd.read_rcc(b"RIFF" + bytes(30))
    with pytest.raises(bd.DatasetError, match="version 7"):
        bd.read_rcc(b"qres" + struct.pack(">4I", 7, 20, 20, 20))


def test_container_scan(bd, tmp_path):
    """Images inside .rcc and .edj files become candidates named after the entry."""
    root = tmp_path / "pkg_1.0_all"
    rcc_dir = root / "usr/share/gcompris-qt/rcc"
    rcc_dir.mkdir(parents=True)
    webp = io.BytesIO()
    textured(40, 60).save(webp, "WEBP")
    tree = {
        "gcompris": {
            "src": {
                "activities": {
                    "erase": {"resource": {"cat.webp": webp.getvalue(), "x.svg": b"<svg/>"}}
                }
            }
        }
    }
    (rcc_dir / "erase.rcc").write_bytes(rcc_file(tree))
    spec = bd.SPECS["gcompris-qt-data"]
    skipped = []
    found = bd.scan(spec, root, "1.0", skipped, tmp_path / "extracted")
    assert [(c.rel_path, c.work, c.width, c.height) for c in found] == [
        ("erase/resource/cat.webp", "erase/resource/cat", 60, 40)
    ]
    assert found[0].source_path == (
        "usr/share/gcompris-qt/rcc/erase.rcc!/gcompris/src/activities/erase/resource/cat.webp"
    )
    assert skipped[0][2] == "vector source"
    assert bd.decision("gcompris", found[0].work) == bd.PHOTO
    assert bd.decision("gcompris", "lang/resource/words_sample/cat") != bd.PHOTO
    assert bd.decision("gcompris", "nowhere/else") == "not a photograph: activity graphics"
    assert bd.decision("nobody", "x") == "not reviewed"

    edj_dir = root / "usr/share/enlightenment/data/backgrounds"
    edj_dir.mkdir(parents=True)
    big, small = jpeg_bytes(5), jpeg_bytes(6)[:200]
    (edj_dir / "Bamboo.edj").write_bytes(
        eet_file([("edje/images/1", small, 0), ("edje/images/0", big, 0)])
    )
    skipped = []
    found = bd.scan(bd.SPECS["enlightenment-data"], root, "1.0", skipped, tmp_path / "e")
    assert [(c.work, c.source_path) for c in found] == [
        ("Bamboo", "usr/share/enlightenment/data/backgrounds/Bamboo.edj!/edje/images/0")
    ]
    assert found[0].path.read_bytes() == big
    assert skipped == [
        (
            "enlightenment-data",
            "usr/share/enlightenment/data/backgrounds/Bamboo.edj!/edje/images/1",
            "smaller copy of edje/images/0 in the same file",
        )
    ]


def test_heldout_rule(bd, monkeypatch):
    monkeypatch.setattr(bd, "HELDOUT_PHOTOS", {"g/cat": "animals", "o/fruits": "food"})
    items = [(f"wall/{i}.jpg", "wall/photo", False) for i in range(17)] + [
        ("gpkg/cat.webp", "g/cat", True),
        ("gpkg/dog.webp", "g/dog", True),
        ("opkg/fruits.jpg", "o/fruits", True),
    ]
    split = bd.split_images(items)
    assert split == bd.split_images(list(reversed(items)))
    assert split["gpkg/cat.webp"] == ("heldout", bd.SPLIT_RULE_FIXED)
    assert split["opkg/fruits.jpg"] == ("heldout", bd.SPLIT_RULE_FIXED)
    assert split["gpkg/dog.webp"] == ("train", bd.SPLIT_RULE_REST)
    hashed = [k for k, (s, rule) in split.items() if rule == bd.SPLIT_RULE_HASH and s == "heldout"]
    assert len(hashed) == round(0.12 * 17) == 2  # the wallpaper rule is unchanged
    with pytest.raises(bd.DatasetError, match="o/fruits"):
        bd.split_images(items[:-1])


def test_fixed_heldout_list_covers_the_categories(bd):
    assert len(bd.HELDOUT_PHOTOS) >= 20
    text = " ".join(bd.HELDOUT_PHOTOS.values())
    for category in ("people", "animals", "food", "red", "blue", "indoor", "city", "night"):
        assert category in text
    for work in bd.HELDOUT_PHOTOS:
        short, rest = work.split("/", 1)
        assert bd.decision(short, rest) == bd.PHOTO, work


def test_upstream_licences(bd):
    text = DEP5 + (
        "\nFiles: src/activities/erase/resource/cat.jpg\nCopyright: C. At\nLicense: CC0-1.0\n"
        "\nFiles: data/*\nCopyright: D\nLicense: BSD-3-Clause\n"
    )
    spec = bd.SPECS["gcompris-qt-data"]
    path = "usr/share/gcompris-qt/rcc/erase.rcc!/gcompris/src/activities/erase/resource/cat.webp"
    assert bd.upstream_path(spec, path) == "src/activities/erase/resource/cat.webp"
    found = bd.debian_licence(text, path, "GPL-3+", bd.upstream_path(spec, path))
    assert (found.licence, found.copyright) == ("CC0-1.0", "C. At")
    assert found.licence_source.endswith("(as src/activities/erase/resource/cat.jpg)")
    # Whole-path matching: the source tree's data/* is not the samples' data folder.
    opencv = bd.SPECS["opencv-doc"]
    sample = "usr/share/doc/opencv-doc/examples/data/fruits.jpg"
    assert bd.upstream_path(opencv, sample) == "samples/data/fruits.jpg"
    assert bd.debian_licence(text, sample, "x", "samples/data/fruits.jpg").licence == "GPL-2+"
    assert bd.debian_licence(text, sample, "x").licence == "BSD-3-Clause"  # trailing-part rule
