"""Build the training set of the embedded model from Debian wallpaper packages.

    python scripts/build_dataset.py --out /work/data/wallpapers [--max-side 1536] [--work DIR]
    python scripts/build_dataset.py --out /work/data/wallpapers --verify

Sources (see docs/dataset.md): the Debian packages `mate-backgrounds`,
`plasma-workspace-wallpapers`, `ukui-wallpapers` and `gnome-backgrounds`, fetched with
`apt-get download` and unpacked with `dpkg -x` into the work folder (default
`~/.cache/oscar-dataset`); nothing is installed. A second run reuses the `.deb` files and the
unpacked trees found there.

Selection rules, applied in this order to every file under each package's image folder; every
rule is deterministic and the reason for each skipped file is written to `OUT/skipped.csv`:

1. Raster only: `.jpg`, `.jpeg`, `.png`, `.webp` are candidates; `.svg`/`.svgz` are skipped
   (vector sources, and no SVG renderer is assumed).
2. Symbolic links are skipped (KDE ships one wallpaper under a dozen size names, all links).
3. Previews are skipped: files named `screenshot.*` or `thumbnail.*`, or inside `thumbnails/`.
4. Too small: shorter side below `MIN_SHORT_SIDE` (768 px).
5. One version per work. Files are grouped by a work name taken from the path: in a KDE
   wallpaper package (`NAME/contents/images[_dark]/WxH.ext`) the work is NAME; otherwise the path
   without its extension, a trailing resolution tag (`_3840x2160`) and a trailing light/dark tag
   (`-l`, `-d`, `-light`, `-dark`). Within a work the largest file (pixel count) is kept; ties
   prefer the light variant, then the smaller source path.
6. Transparent images are skipped: more than `MAX_TRANSPARENT_FRACTION` (1 %) of pixels with
   alpha below 250 (these are overlays whose look depends on the desktop colour).
7. Too flat: on a copy whose longest side is `DETAIL_SIDE` (512 px, box filter), the luminance is
   cut into 16x16 blocks; a block "has detail" when the standard deviation of what is left after
   fitting a plane to it (so that a linear gradient counts as flat) exceeds `DETAIL_STD` (2 grey
   levels). Images with fewer than `MIN_DETAIL_FRACTION` (15 %) of blocks with detail are skipped:
   plain colours, simple gradients, and logos on plain backgrounds.
8. Near-duplicates across names: a 16x16 difference hash (256 bits) of the luminance; going
   through the kept images from the largest down, an image whose hash is within
   `DHASH_MAX_DISTANCE` bits of an image already kept is skipped.

Kept images are converted to RGB (EXIF orientation applied; a non-sRGB ICC profile is converted
to sRGB, sRGB profiles are dropped; greyscale becomes three equal channels), downscaled with
Lanczos so that the longest side is at most `--max-side` (never upscaled), and written as JPEG,
quality 95, 4:4:4, without metadata, to `OUT/train/` or `OUT/heldout/`.

`kind` is `photo` or `illustration` from a table made by looking at the images of the package
versions named in docs/dataset.md (`KINDS`); a work missing from it is `unknown`.

Held-out split (whole images, never crops): `HELDOUT_FRACTION` (12 %) of the kept images, rounded.
Images are grouped by (package, kind); each group gets floor(fraction x size) held-out images and
the remaining ones go to the groups with the largest remainders (ties by group name). Within a
group the images whose SHA-256 of "oscar-heldout-v1:PACKAGE/SOURCE_PATH" is smallest are held out.

Licences: from each package's `usr/share/doc/PKG/copyright`. For a machine-readable (DEP-5) file
the last `Files:` stanza matching the file's path (any trailing part of it) gives the licence and
copyright holders. For a free-form file an "Image Authors" list (`- pattern:` lines followed by
`Copyright ...` and `Licensed under ...`) is used where a pattern matches the file name;
otherwise the package-level licence is recorded and marked as such. Upstream statements shipped
in the package are recorded beside it: a KDE wallpaper's `metadata.json`/`metadata.desktop`
(author, licence) and the image-authors list of `usr/share/doc/PKG/AUTHORS`.

Outputs: `OUT/train/*.jpg`, `OUT/heldout/*.jpg`, `OUT/manifest.csv` (also written to
`--manifest`, by default the repository's `datasets/wallpapers.csv`), `OUT/skipped.csv`, and the
packages' copyright files in `OUT/licences/`. `--verify` checks a folder against the manifest
(every file present with its size and SHA-256, in its split's folder, and no extra images).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = REPO / "datasets" / "wallpapers.csv"
DEFAULT_WORK = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "oscar-dataset"


@dataclass(frozen=True)
class PackageSpec:
    name: str  # Debian package
    short: str  # prefix of the output file names
    image_root: str  # folder inside the package that holds the wallpapers
    fallback_licence: str  # package-level licence, used when no per-file statement matches


PACKAGES: tuple[PackageSpec, ...] = (
    PackageSpec("mate-backgrounds", "mate", "usr/share/backgrounds/mate", "GPL-2+"),
    PackageSpec("plasma-workspace-wallpapers", "plasma", "usr/share/wallpapers", "GPL-2+"),
    PackageSpec("ukui-wallpapers", "ukui", "usr/share/backgrounds", "CC-BY-SA-3.0"),
    # The GNOME copyright file is free-form; its "Licenses:" section gives these two texts.
    PackageSpec(
        "gnome-backgrounds", "gnome", "usr/share/backgrounds/gnome", "GPL-2+; CC-BY-SA-3.0"
    ),
)

RASTER_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
VECTOR_SUFFIXES = frozenset({".svg", ".svgz"})
PREVIEW_STEMS = frozenset({"screenshot", "thumbnail"})
MIN_SHORT_SIDE = 768
MAX_TRANSPARENT_FRACTION = 0.01
DETAIL_SIDE = 512
DETAIL_BLOCK = 16
DETAIL_STD = 2.0
MIN_DETAIL_FRACTION = 0.15
DHASH_SIZE = 16
DHASH_MAX_DISTANCE = 32  # of 256 bits; colour variants of one work differ by about 22
HELDOUT_FRACTION = 0.12
SPLIT_SALT = "oscar-heldout-v1"
JPEG_QUALITY = 95

# By eye, for the package versions listed in docs/dataset.md. Keys are "short/work".
_PHOTOS = (
    "mate/nature/Aqua mate/nature/Blinds mate/nature/Dune mate/nature/FreshFlower "
    "mate/nature/Garden mate/nature/GreenMeadow mate/nature/LadyBird mate/nature/RainDrops "
    "mate/nature/Storm mate/nature/TwoWings mate/nature/Wood mate/nature/YellowFlower "
    "plasma/BytheWater plasma/ColdRipple plasma/ColorfulCups plasma/DarkestHour "
    "plasma/EveningGlow plasma/FallenLeaf plasma/Grey plasma/Kite plasma/OneStandsOut "
    "plasma/Path plasma/summer_1am"
)
_ILLUSTRATIONS = (
    "mate/abstract/Elephants mate/abstract/Flow mate/abstract/Gulp mate/desktop/Float-into-MATE "
    "mate/desktop/Stripes mate/desktop/Ubuntu-Mate-Cold-no-logo "
    "mate/desktop/Ubuntu-Mate-Radioactive-no-logo mate/desktop/Ubuntu-Mate-Warm-no-logo "
    "mate/desktop/Ubuntu-Mate-Dark-no-logo mate/desktop/GreenTraditional "
    "plasma/Altai plasma/Autumn plasma/Canopee plasma/Cascade plasma/Cluster plasma/Elarun "
    "plasma/Flow plasma/FlyingKonqui plasma/Honeywave plasma/IceCold plasma/Kay plasma/Kokkini "
    "plasma/MilkyWay plasma/Opal plasma/PastelHills plasma/Patak plasma/SafeLanding "
    "plasma/Shell plasma/Volna "
    "ukui/2004default ukui/calla ukui/city ukui/desert ukui/firstgeneration ukui/fluent-color "
    "ukui/focal-ubuntukylin ukui/goldfish ukui/rhythm ukui/rollpaper ukui/string ukui/the-mouse "
    "gnome/adwaita gnome/grid gnome/licorice gnome/pixels gnome/symbolic gnome/truchet "
    "gnome/wood"
)
KINDS: dict[str, str] = {
    **{key: "photo" for key in _PHOTOS.split()},
    **{key: "illustration" for key in _ILLUSTRATIONS.split()},
}

# fmt: off
MANIFEST_FIELDS = (
    "file", "split", "source_package", "package_version", "source_path", "kind", "licence",
    "licence_source", "copyright", "upstream_licence", "upstream_author", "width", "height",
    "original_width", "original_height", "detail", "sha256",
)
# fmt: on


class DatasetError(Exception):
    """A problem the user can fix (missing tool, missing package, bad folder)."""


# --------------------------------------------------------------------------- selection rules


_RESOLUTION_TAG = re.compile(r"[_-]\d+x\d+$")
_VARIANT_TAG = re.compile(r"[_-](l|d|light|dark)$", re.IGNORECASE)


def work_of(rel_path: str) -> tuple[str, bool]:
    """Work name and dark-variant flag of a file, from its path below the image root (rule 5)."""
    parts = rel_path.split("/")
    if "contents" in parts[1:]:  # KDE wallpaper package: NAME/contents/images[_dark]/WxH.ext
        i = parts.index("contents", 1)
        return "/".join(parts[:i]), any("dark" in p.lower() for p in parts[i + 1 : -1])
    stem = rel_path.rsplit(".", 1)[0]
    stem = _RESOLUTION_TAG.sub("", stem)
    match = _VARIANT_TAG.search(stem)
    if match:
        return stem[: match.start()], match.group(1).lower() in ("d", "dark")
    return stem, False


def skip_reason_by_name(rel_path: str, is_symlink: bool) -> str | None:
    """Rules 1-3 (no pixels read). None if the file is a candidate; '' if not an image at all."""
    path = Path(rel_path)
    suffix = path.suffix.lower()
    if suffix in VECTOR_SUFFIXES:
        return "vector source"
    if suffix not in RASTER_SUFFIXES:
        return ""
    if is_symlink:
        return "symbolic link (same file under another name)"
    if path.stem.lower() in PREVIEW_STEMS or "thumbnails" in path.parts:
        return "preview"
    return None


def to_rgb(image: Image.Image) -> tuple[Image.Image, float]:
    """RGB copy (EXIF orientation, sRGB) and the fraction of pixels with alpha below 250."""
    icc = image.info.get("icc_profile")  # read before a transpose, whose result may lack it
    image = ImageOps.exif_transpose(image)
    transparent = 0.0
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        transparent = float((alpha < 250).mean())
    rgb = image.convert("RGB")
    if icc:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if "srgb" not in ImageCms.getProfileDescription(profile).lower():
            rgb = ImageCms.profileToProfile(rgb, profile, ImageCms.createProfile("sRGB"))
    rgb.info.clear()
    return rgb, transparent


def _luma_thumbnail(image: Image.Image, side: int) -> np.ndarray:
    w, h = image.size
    scale = min(1.0, side / max(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(image.convert("L").resize(size, Image.Resampling.BOX), dtype=np.float64)


def detail_fraction(image: Image.Image) -> float:
    """Rule 7: fraction of 16x16 luminance blocks whose residual after a plane fit has std > 2."""
    y = _luma_thumbnail(image, DETAIL_SIDE)
    b = DETAIL_BLOCK
    rows, cols = y.shape[0] // b, y.shape[1] // b
    if rows == 0 or cols == 0:
        return 0.0
    blocks = y[: rows * b, : cols * b].reshape(rows, b, cols, b).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(-1, b * b)
    grid = np.arange(b, dtype=np.float64) - (b - 1) / 2
    xx, yy = np.meshgrid(grid, grid)
    design = np.stack([np.ones(b * b), xx.ravel(), yy.ravel()], axis=1)
    residual = blocks - blocks @ (design @ np.linalg.pinv(design)).T
    return float((residual.std(axis=1) > DETAIL_STD).mean())


def dhash(image: Image.Image, size: int = DHASH_SIZE) -> int:
    """Difference hash: sign of horizontal luminance steps on a (size, size + 1) thumbnail."""
    small = image.convert("L").resize((size + 1, size), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).ravel()
    return int("".join("1" if bit else "0" for bit in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def downscale(image: Image.Image, max_side: int) -> Image.Image:
    """Lanczos resize so that the longest side is at most max_side; never upscales."""
    w, h = image.size
    if max(w, h) <= max_side:
        return image
    scale = max_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class Candidate:
    package: str
    short: str
    version: str
    path: Path  # on disk
    source_path: str  # inside the package, e.g. usr/share/backgrounds/mate/nature/Aqua.jpg
    rel_path: str  # below the package's image root
    width: int
    height: int

    @property
    def work(self) -> str:
        return work_of(self.rel_path)[0]

    @property
    def key(self) -> str:
        return f"{self.package}/{self.source_path}"


@dataclass
class Selected:
    candidate: Candidate
    image: Image.Image  # downscaled RGB copy
    detail: float
    hash: int
    kind: str = "unknown"
    split: str = "train"
    file: str = ""


@dataclass
class Selection:
    kept: list[Selected] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # package, path, reason


def select(
    candidates: Sequence[Candidate], max_side: int, log: Callable[[str], None] = lambda _: None
) -> Selection:
    """Apply rules 4-8 to candidates that passed rules 1-3 and read the kept images' pixels."""
    result = Selection()
    groups: dict[tuple[str, str], list[Candidate]] = defaultdict(list)
    for c in candidates:
        if min(c.width, c.height) < MIN_SHORT_SIDE:
            result.skipped.append((c.package, c.source_path, f"too small ({c.width}x{c.height})"))
        else:
            groups[(c.package, c.work)].append(c)
    representatives = []
    for (_, _work), members in sorted(groups.items()):
        members.sort(key=lambda c: (-c.width * c.height, work_of(c.rel_path)[1], c.source_path))
        representatives.append(members[0])
        for other in members[1:]:
            reason = f"other version of {members[0].source_path}"
            result.skipped.append((other.package, other.source_path, reason))
    representatives.sort(key=lambda c: (-c.width * c.height, c.key))
    for i, c in enumerate(representatives, 1):
        with Image.open(c.path) as raw:
            rgb, transparent = to_rgb(raw)
        if transparent > MAX_TRANSPARENT_FRACTION:
            reason = f"transparent ({transparent:.0%} of pixels)"
        else:
            detail = detail_fraction(rgb)
            reason = f"too flat (detail {detail:.3f})" if detail < MIN_DETAIL_FRACTION else ""
        if not reason:
            h = dhash(rgb)
            twin = next((s for s in result.kept if hamming(s.hash, h) <= DHASH_MAX_DISTANCE), None)
            if twin is not None:
                distance = hamming(twin.hash, h)
                reason = f"near-duplicate of {twin.candidate.source_path} ({distance} bits)"
        if reason:
            result.skipped.append((c.package, c.source_path, reason))
            log(f"  [{i}/{len(representatives)}] skip {c.short}/{c.rel_path}: {reason}")
            continue
        small = downscale(rgb, max_side)
        kind = KINDS.get(f"{c.short}/{c.work}", "unknown")
        result.kept.append(Selected(c, small, detail, h, kind=kind))
        log(
            f"  [{i}/{len(representatives)}] keep {c.short}/{c.rel_path} {c.width}x{c.height}"
            f" -> {small.width}x{small.height} ({kind}, detail {detail:.2f})"
        )
    return result


def output_name(short: str, work: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{short}_{work}".replace("/", "_")) + ".jpg"


def split_order_key(key: str) -> str:
    return hashlib.sha256(f"{SPLIT_SALT}:{key}".encode()).hexdigest()


def assign_splits(
    items: Sequence[tuple[str, str]], fraction: float = HELDOUT_FRACTION
) -> dict[str, str]:
    """Held-out split of whole images. items: (key, stratum) pairs; returns key -> split."""
    strata: dict[str, list[str]] = defaultdict(list)
    for key, stratum in items:
        strata[stratum].append(key)
    total = round(fraction * len(items))
    quotas = {s: fraction * len(keys) for s, keys in strata.items()}
    counts = {s: math.floor(q) for s, q in quotas.items()}
    by_remainder = sorted(strata, key=lambda s: (-(quotas[s] - counts[s]), s))
    for s in by_remainder[: max(0, total - sum(counts.values()))]:
        counts[s] += 1
    split = {}
    for s, keys in strata.items():
        ordered = sorted(keys, key=split_order_key)
        for i, key in enumerate(ordered):
            split[key] = "heldout" if i < counts[s] else "train"
    return split


# --------------------------------------------------------------------------- licences


@dataclass(frozen=True)
class Statement:
    """A licence statement for the files matching any of patterns."""

    patterns: tuple[str, ...]
    licence: str
    copyright: str
    where: str  # what was matched, for the manifest's licence_source


def _fields(paragraph: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    name = None
    for line in paragraph.splitlines():
        if line[:1] in (" ", "\t") and name:
            fields[name] += "\n" + line.strip()
        elif ":" in line:
            name, value = line.split(":", 1)
            name = name.strip().lower()
            fields[name] = value.strip()
    return fields


def parse_dep5(text: str) -> list[Statement]:
    """Files stanzas of a machine-readable debian/copyright; [] if the file is free-form."""
    if not re.match(r"format:\s*\S*copyright-format", text.lstrip(), re.IGNORECASE):
        return []
    statements = []
    for paragraph in re.split(r"\n\s*\n", text):
        fields = _fields(paragraph)
        if "files" not in fields or "license" not in fields:
            continue
        patterns = tuple(fields["files"].split())
        licence = fields["license"].splitlines()[0].strip()
        holders = "; ".join(h.strip() for h in fields.get("copyright", "").splitlines() if h)
        where = "debian/copyright Files: " + " ".join(patterns)
        statements.append(Statement(patterns, licence, holders, where))
    return statements


def normalise_licence(text: str) -> str:
    """Short SPDX-like name of a Creative Commons statement; the text itself otherwise."""
    rules = (
        (r"Attribution-Share\s?Alike\s+(\d\.\d)", "CC-BY-SA-{}"),
        (r"CC[ -]BY[ -]SA[ -](\d\.\d)", "CC-BY-SA-{}"),
        (r"Attribution\s+(\d\.\d)", "CC-BY-{}"),
        (r"CC[ -]BY[ -](\d\.\d)", "CC-BY-{}"),
    )
    for pattern, template in rules:
        match = re.search(pattern, text, re.IGNORECASE)
        if match:
            return template.format(match.group(1))
    return text.strip().rstrip(".")


def parse_image_authors(text: str, where: str) -> list[Statement]:
    """GNOME-style lists: `- pattern:` lines, then `Copyright ...` lines, then a licence line."""
    statements: list[Statement] = []
    patterns: list[str] = []
    holders: list[str] = []
    for line in text.splitlines():
        s = line.strip()
        item = re.fullmatch(r"-?\s*([\w.*+-]*[.*][\w.*+-]*):?", s)
        if item:
            if not patterns:
                holders = []
            patterns.append(item.group(1))
        elif s.lower().startswith("copyright") and patterns:
            holders.append(re.sub(r"^copyright\s*(©|\(c\))?\s*", "", s, flags=re.IGNORECASE))
        elif re.search(r"licen[cs]", s, re.IGNORECASE) and patterns:
            licence = normalise_licence(s)
            label = f"{where}: " + " ".join(patterns)
            statements.append(Statement(tuple(patterns), licence, "; ".join(holders), label))
            patterns, holders = [], []
    return statements


def match_dep5(statements: Sequence[Statement], source_path: str) -> Statement | None:
    """Last stanza whose pattern matches a trailing part of the path (DEP-5: last match wins)."""
    parts = source_path.split("/")
    tails = ["/".join(parts[i:]) for i in range(len(parts))]
    found = None
    for statement in statements:
        if any(fnmatch.fnmatchcase(t, p) for p in statement.patterns for t in tails):
            found = statement
    return found


def match_name(statements: Sequence[Statement], source_path: str) -> Statement | None:
    """First statement whose pattern matches the file name, ignoring case."""
    name = source_path.rsplit("/", 1)[-1].lower()
    for statement in statements:
        if any(fnmatch.fnmatchcase(name, p.lower()) for p in statement.patterns):
            return statement
    return None


@dataclass(frozen=True)
class Licence:
    licence: str
    licence_source: str
    copyright: str
    upstream_licence: str = ""
    upstream_author: str = ""


def debian_licence(copyright_text: str, source_path: str, fallback: str) -> Licence:
    statements = parse_dep5(copyright_text)
    if statements:
        found = match_dep5(statements, source_path)
    else:
        found = match_name(parse_image_authors(copyright_text, "debian/copyright"), source_path)
    if found is None:
        return Licence(fallback, "debian/copyright (package level, no per-file statement)", "")
    return Licence(found.licence, found.where, found.copyright)


def kde_metadata(folder: Path) -> tuple[str, str]:
    """(licence, author) of a KDE wallpaper package folder, '' where absent."""
    if (folder / "metadata.json").is_file():
        plugin = json.loads((folder / "metadata.json").read_text("utf-8")).get("KPlugin", {})
        authors = ", ".join(a.get("Name", "") for a in plugin.get("Authors", []))
        return plugin.get("License", ""), authors
    if (folder / "metadata.desktop").is_file():
        fields = {}
        for line in (folder / "metadata.desktop").read_text("utf-8").splitlines():
            key, _, value = line.partition("=")
            fields[key.strip()] = value.strip()
        return fields.get("X-KDE-PluginInfo-License", ""), fields.get("X-KDE-PluginInfo-Author", "")
    return "", ""


def package_licence(root: Path, spec: PackageSpec, source_path: str) -> Licence:
    doc = root / "usr/share/doc" / spec.name
    text = (doc / "copyright").read_text("utf-8", errors="replace")
    licence = debian_licence(text, source_path, spec.fallback_licence)
    rel = source_path.removeprefix(spec.image_root + "/")
    if "/contents/" in rel:
        upstream, author = kde_metadata(root / spec.image_root / rel.split("/contents/", 1)[0])
        if upstream or author:
            return replace(licence, upstream_licence=upstream, upstream_author=author)
    if (doc / "AUTHORS").is_file():
        text = (doc / "AUTHORS").read_text("utf-8", errors="replace")
        found = match_name(parse_image_authors(text, "AUTHORS"), source_path)
        if found:
            return replace(licence, upstream_licence=found.licence, upstream_author=found.copyright)
    return licence


# --------------------------------------------------------------------------- manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(rows: Iterable[dict[str, str]], path: Path) -> None:
    rows = sorted(rows, key=lambda r: r["file"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: row[k] for k in MANIFEST_FIELDS} for row in rows)
    tmp.replace(path)


def read_manifest(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetError(f"no manifest at {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(MANIFEST_FIELDS) - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(f"{path}: manifest lacks columns {sorted(missing)}")
        return list(reader)


def verify(out: Path, rows: Sequence[dict[str, str]]) -> list[str]:
    """Problems found in out against the manifest rows; [] when the folder matches."""
    problems = []
    listed = set()
    for row in rows:
        rel = row["file"]
        listed.add(rel)
        path = out / rel
        if rel.split("/", 1)[0] != row["split"]:
            problems.append(f"{rel}: not in the folder of its split {row['split']!r}")
        if not path.is_file():
            problems.append(f"{rel}: missing")
            continue
        with Image.open(path) as image:
            size = image.size
        if size != (int(row["width"]), int(row["height"])):
            expected = f"{row['width']}x{row['height']}"
            problems.append(f"{rel}: size {size[0]}x{size[1]}, manifest {expected}")
        if sha256_file(path) != row["sha256"]:
            problems.append(f"{rel}: SHA-256 differs from the manifest")
    for split in ("train", "heldout"):
        for path in sorted((out / split).glob("*")) if (out / split).is_dir() else ():
            if path.as_posix().removeprefix(out.as_posix() + "/") not in listed:
                problems.append(f"{split}/{path.name}: not in the manifest")
    return problems


# --------------------------------------------------------------------------- packages


def _run(command: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise DatasetError(f"`{' '.join(command)}` failed: " + " | ".join(message[-3:]))
    return result.stdout


def fetch(spec: PackageSpec, debs: Path) -> Path:
    """The package's .deb in debs, downloaded with apt-get download unless already there."""
    found = sorted(debs.glob(f"{spec.name}_*.deb"))
    if found:
        return found[-1]
    if shutil.which("apt-get") is None:
        raise DatasetError(
            f"apt-get not found and no {spec.name}_*.deb in {debs}: on a machine without apt, "
            f"download the .deb files named in docs/dataset.md into {debs} and run again"
        )
    debs.mkdir(parents=True, exist_ok=True)
    try:
        _run(["apt-get", "download", spec.name], cwd=debs)
    except DatasetError as error:
        raise DatasetError(f"{error} (has `apt-get update` been run?)") from None
    found = sorted(debs.glob(f"{spec.name}_*.deb"))
    if not found:
        raise DatasetError(f"apt-get download {spec.name} left no .deb in {debs}")
    return found[-1]


def unpack(deb: Path, dest: Path) -> tuple[Path, str]:
    """Extract deb into dest/NAME_VERSION with dpkg -x (once); returns the folder and version."""
    if shutil.which("dpkg-deb") is None:
        raise DatasetError("dpkg-deb not found: it is needed to unpack the .deb files")
    version = _run(["dpkg-deb", "--field", str(deb), "Version"]).strip()
    root = dest / deb.stem
    if not (root / ".unpacked").is_file():
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        _run(["dpkg-deb", "-x", str(deb), str(root)])
        (root / ".unpacked").write_text(version + "\n")
    return root, version


def scan(spec: PackageSpec, root: Path, version: str, skipped: list) -> list[Candidate]:
    """Rules 1-3 over every file below the package's image root."""
    base = root / spec.image_root
    if not base.is_dir():
        raise DatasetError(f"{spec.name}: no {spec.image_root} in the package")
    candidates = []
    for path in sorted(p for p in base.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(base).as_posix()
        source_path = f"{spec.image_root}/{rel}"
        reason = skip_reason_by_name(rel, path.is_symlink())
        if reason:
            skipped.append((spec.name, source_path, reason))
        if reason is not None:
            continue
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientation: a quarter turn
                width, height = height, width
        candidates.append(
            Candidate(spec.name, spec.short, version, path, source_path, rel, width, height)
        )
    return candidates


# --------------------------------------------------------------------------- build


def build(out: Path, work: Path, max_side: int, manifest: Path | None) -> list[dict[str, str]]:
    start = time.monotonic()
    roots, candidates, skipped = {}, [], []
    for spec in PACKAGES:
        deb = fetch(spec, work / "debs")
        root, version = unpack(deb, work / "unpacked")
        roots[spec.name] = root
        found = scan(spec, root, version, skipped)
        print(f"{spec.name} {version}: {len(found)} raster candidates ({deb.name})", flush=True)
        candidates += found
    if manifest is not None and manifest.is_file():
        recorded = {(r["source_package"], r["package_version"]) for r in read_manifest(manifest)}
        for package, version in sorted(recorded):
            current = next((c.version for c in candidates if c.package == package), version)
            if current != version:
                print(f"warning: {manifest} was built from {package} {version}, not {current}")
    print(f"selecting from {len(candidates)} candidates", flush=True)
    selection = select(candidates, max_side, log=lambda m: print(m, flush=True))
    kept = selection.kept
    splits = assign_splits([(s.candidate.key, f"{s.candidate.package}/{s.kind}") for s in kept])
    rows = []
    for split in ("train", "heldout"):
        (out / split).mkdir(parents=True, exist_ok=True)
    names = set()
    for s in kept:
        c = s.candidate
        s.split = splits[c.key]
        name = output_name(c.short, c.work)
        if name in names:
            raise DatasetError(f"two kept images would both be written as {name}")
        names.add(name)
        s.file = f"{s.split}/{name}"
        data = encode_jpeg(s.image)
        tmp = out / (s.file + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(out / s.file)
        spec = next(p for p in PACKAGES if p.name == c.package)
        licence = package_licence(roots[c.package], spec, c.source_path)
        rows.append(
            {
                "file": s.file,
                "split": s.split,
                "source_package": c.package,
                "package_version": c.version,
                "source_path": c.source_path,
                "kind": s.kind,
                "licence": licence.licence,
                "licence_source": licence.licence_source,
                "copyright": licence.copyright,
                "upstream_licence": licence.upstream_licence,
                "upstream_author": licence.upstream_author,
                "width": str(s.image.width),
                "height": str(s.image.height),
                "original_width": str(c.width),
                "original_height": str(c.height),
                "detail": f"{s.detail:.3f}",
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    written = {row["file"] for row in rows}
    for split in ("train", "heldout"):
        for path in sorted((out / split).glob("*.jpg")):
            if f"{split}/{path.name}" not in written:
                print(f"removing stale {split}/{path.name}", flush=True)
                path.unlink()
    write_manifest(rows, out / "manifest.csv")
    if manifest is not None:
        write_manifest(rows, manifest)
    with open(out / "skipped.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["source_package", "source_path", "reason"])
        writer.writerows(sorted(skipped + selection.skipped))
    reasons = Counter(reason.split(" (")[0].split(" of ")[0] for *_, reason in skipped)
    reasons.update(reason.split(" (")[0].split(" of ")[0] for *_, reason in selection.skipped)
    print("skipped: " + ", ".join(f"{n} {reason}" for reason, n in reasons.most_common()))
    licences = out / "licences"
    licences.mkdir(exist_ok=True)
    for spec in PACKAGES:
        for doc in ("copyright", "AUTHORS"):
            source = roots[spec.name] / "usr/share/doc" / spec.name / doc
            if source.is_file():
                shutil.copyfile(source, licences / f"{spec.name}.{doc}")
    summarise(rows, out, time.monotonic() - start)
    return rows


def summarise(rows: Sequence[dict[str, str]], out: Path, seconds: float) -> None:
    table: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        table[(row["source_package"], row["kind"])][row["split"] == "heldout"] += 1
    print(f"\n{'package':30s} {'kind':13s} {'train':>5s} {'heldout':>7s}")
    for (package, kind), (train, heldout) in sorted(table.items()):
        print(f"{package:30s} {kind:13s} {train:5d} {heldout:7d}")
    n_held = sum(row["split"] == "heldout" for row in rows)
    size = sum((out / row["file"]).stat().st_size for row in rows)
    print(
        f"{len(rows)} images ({len(rows) - n_held} train, {n_held} held-out), "
        f"{size / 1e6:.1f} MB in {out}, {seconds:.0f} s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--max-side", type=int, default=1536, help="longest side of the copies")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="downloads and unpacking")
    parser.add_argument(
        "--manifest",
        type=Path,
        default=DEFAULT_MANIFEST,
        help="manifest to write (build) or to check against (--verify); default %(default)s",
    )
    parser.add_argument("--verify", action="store_true", help="check --out against the manifest")
    args = parser.parse_args(argv)
    try:
        if args.verify:
            rows = read_manifest(args.manifest)
            problems = verify(args.out, rows)
            for problem in problems:
                print(f"  {problem}")
            status = "FAILED" if problems else "ok"
            print(f"verify {args.out} against {args.manifest}: {len(rows)} files, {status}")
            return 1 if problems else 0
        if args.max_side < 64:
            parser.error("--max-side must be at least 64")
        out = args.out.resolve()
        if out.is_relative_to(REPO) and not out.is_relative_to(REPO / "data"):
            parser.error("--out must be outside the repository or under its git-ignored data/")
        build(args.out, args.work, args.max_side, args.manifest)
        problems = verify(args.out, read_manifest(args.out / "manifest.csv"))
        if problems:
            raise DatasetError(f"the folder just written fails verification: {problems[0]}")
        return 0
    except DatasetError as error:
        print(f"build_dataset: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
