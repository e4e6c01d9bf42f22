"""Build the training set of the embedded model from Debian packages (second set: photos-v2).

    python scripts/build_dataset.py --out /work/data/photos-v2 [--max-side 1536] [--work DIR]
    python scripts/build_dataset.py --out /work/data/photos-v2 --verify

Sources (see docs/dataset.md): the wallpaper packages `mate-backgrounds`,
`plasma-workspace-wallpapers`, `ukui-wallpapers` and `gnome-backgrounds` (photographs and
illustrations, as in the first set), and the photographs of `enlightenment-data`,
`lomiri-wallpapers-16.04`, `lomiri-wallpapers-20.04`, `gcompris-qt-data`, `opencv-doc`,
`palapeli-data` and `libjxl-testdata`, fetched with `apt-get download` and unpacked with
`dpkg -x` into the work folder (default `~/.cache/oscar-dataset`); nothing is installed. A
second run reuses the `.deb` files and the unpacked trees found there. Images inside container
files are extracted by the readers below (`read_eet` for Enlightenment's `.edj`, `read_rcc` for
Qt's `.rcc`) into `WORK/extracted/`; their source path is `CONTAINER!/ENTRY`.

Images that ship inside Python packages (scikit-image, scikit-learn, matplotlib, Debian
`python3-*`) are kept for independent evaluation and are never a source here.

Selection rules, applied in this order to every file under each package's image folder; every
rule is deterministic and the reason for each skipped file is written to `OUT/skipped.csv`:

1. Raster only: `.jpg`, `.jpeg`, `.png`, `.webp` are candidates; `.svg`/`.svgz` are skipped
   (vector sources, and no SVG renderer is assumed).
2. Symbolic links are skipped (KDE ships one wallpaper under a dozen size names, all links).
3. Previews are skipped: files named `screenshot.*` or `thumbnail.*`, or inside `thumbnails/`.
4. Too small: shorter side below `MIN_SHORT_SIDE` (768 px), or the package's own
   `min_short_side` (320-512 px for the packages of small photographs).
4b. Reviewed packages (`reviewed=True`, all but the four wallpaper packages): only works that
   the `DECISIONS` table (made by looking at contact sheets of every candidate) marks as
   photographs are kept; every other file gets the table's reason (drawing, painting, digital
   art, cut-out, test pattern, text, other view or processed copy of a kept photograph).
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
   plain colours, simple gradients, and logos on plain backgrounds. Not applied to reviewed
   packages, whose photographs were chosen by eye (misty, dark and underwater ones stay).
8. Near-duplicates across names: a 16x16 difference hash (256 bits) of the luminance; going
   through the kept images from the largest down, an image whose hash is within
   `DHASH_MAX_DISTANCE` bits of an image already kept is skipped.

Kept images are converted to RGB (EXIF orientation applied; a non-sRGB ICC profile is converted
to sRGB, sRGB profiles are dropped; greyscale becomes three equal channels), downscaled with
Lanczos so that the longest side is at most `--max-side` (never upscaled), and written as JPEG,
quality 95, 4:4:4, without metadata, to `OUT/train/` or `OUT/heldout/`.

`kind` is `photo` or `illustration`: for the wallpaper packages from a table made by looking
at the images of the package versions named in docs/dataset.md (`KINDS`; a work missing from it
is `unknown`), for the reviewed packages always `photo`.

Held-out split (whole images, never crops), column `split_rule` of the manifest:
- reviewed packages: exactly the photographs listed in `HELDOUT_PHOTOS` (22, chosen to cover
  people, animals, food, saturated reds and blues, indoor, city and night); the build stops if
  one of them is not kept;
- wallpaper packages (unchanged from the first set): `HELDOUT_FRACTION` (12 %) of their kept
  images, rounded. Images are grouped by (package, kind); each group gets floor(fraction x size)
  held-out images and the remaining ones go to the groups with the largest remainders (ties by
  group name). Within a group the images whose SHA-256 of "oscar-heldout-v1:PACKAGE/SOURCE_PATH"
  is smallest are held out.

Licences: from each package's `usr/share/doc/PKG/copyright`. For a machine-readable (DEP-5) file
the last `Files:` stanza matching the file's path gives the licence and copyright holders: for
packages with a `source_map` the whole upstream path (package prefix replaced by the source-tree
prefix; for an rcc entry its resource path, for an Eet entry the .edj file; GCompris WebP files
are also tried under the JPEG/PNG/SVG names they were converted from), otherwise any trailing
part of the installed path (the first set's rule). For a free-form file an "Image Authors"
list (`- pattern:` lines followed by `Copyright ...` and `Licensed under ...`) is used where a
pattern matches the file name; otherwise the package-level licence is recorded and marked as
such. Upstream statements shipped
in the package are recorded beside it: a KDE wallpaper's `metadata.json`/`metadata.desktop`
(author, licence) and the image-authors list of `usr/share/doc/PKG/AUTHORS`.

Outputs: `OUT/train/*.jpg`, `OUT/heldout/*.jpg`, `OUT/manifest.csv` (also written to
`--manifest`, by default the repository's `datasets/photos-v2.csv`; `datasets/wallpapers.csv`
is the first set's record and is no longer written), `OUT/skipped.csv`, and the
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
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = REPO / "datasets" / "photos-v2.csv"
DEFAULT_WORK = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "oscar-dataset"


@dataclass(frozen=True)
class PackageSpec:
    name: str  # Debian package
    short: str  # prefix of the output file names
    image_root: str  # folder inside the package that holds the wallpapers
    fallback_licence: str  # package-level licence, used when no per-file statement matches
    # Images inside container files: "" (plain image files), "eet" (.edj) or "rcc" (Qt .rcc).
    container: str = ""
    # Smallest accepted shorter side (rule 4); None means MIN_SHORT_SIDE.
    min_short_side: int | None = None
    # Reviewed packages keep only the works that DECISIONS marks "photo" (rule 4b).
    reviewed: bool = False
    # (prefix in the package, prefix in the upstream source tree): when given, licences come
    # from the DEP-5 stanzas matching the file's upstream path exactly, not any trailing part.
    source_map: tuple[tuple[str, str], ...] = ()


PACKAGES: tuple[PackageSpec, ...] = (
    PackageSpec("mate-backgrounds", "mate", "usr/share/backgrounds/mate", "GPL-2+"),
    PackageSpec("plasma-workspace-wallpapers", "plasma", "usr/share/wallpapers", "GPL-2+"),
    PackageSpec("ukui-wallpapers", "ukui", "usr/share/backgrounds", "CC-BY-SA-3.0"),
    # The GNOME copyright file is free-form; its "Licenses:" section gives these two texts.
    PackageSpec(
        "gnome-backgrounds", "gnome", "usr/share/backgrounds/gnome", "GPL-2+; CC-BY-SA-3.0"
    ),
    # Added for the second training set: photographs only, chosen by eye (DECISIONS).
    PackageSpec(
        "enlightenment-data",
        "e",
        "usr/share/enlightenment/data/backgrounds",
        "BSD-2-clause",
        container="eet",
        reviewed=True,
        source_map=(("usr/share/enlightenment/", ""),),
    ),
    PackageSpec(
        "lomiri-wallpapers-16.04",
        "lomiri",
        "usr/share/backgrounds",
        "CC-BY-SA-4.0",
        reviewed=True,
        source_map=(("usr/share/backgrounds/", "16.04/"),),
    ),
    PackageSpec(
        "lomiri-wallpapers-20.04",
        "lomiri20",
        "usr/share/backgrounds",
        "CC-BY-SA-3.0",
        reviewed=True,
        source_map=(("usr/share/backgrounds/", "20.04/"),),
    ),
    PackageSpec(
        "gcompris-qt-data",
        "gcompris",
        "usr/share/gcompris-qt/rcc",
        "GPL-3+",
        container="rcc",
        min_short_side=360,
        reviewed=True,
        source_map=(("gcompris/", ""),),
    ),
    PackageSpec(
        "opencv-doc",
        "opencv",
        "usr/share/doc/opencv-doc/examples",
        "Apache-2.0 AND BSD-3-Clause",
        min_short_side=320,
        reviewed=True,
        source_map=(("usr/share/doc/opencv-doc/examples/", "samples/"),),
    ),
    PackageSpec(
        "palapeli-data",
        "palapeli",
        "usr/share/palapeli/collection",
        "GPL-2+",
        min_short_side=512,
        reviewed=True,
        source_map=(("usr/share/palapeli/", ""),),
    ),
    PackageSpec(
        "libjxl-testdata",
        "jxl",
        "usr/share/libjxl-testdata",
        "BSD-3-clause-Google",
        min_short_side=400,
        reviewed=True,
        source_map=(("usr/share/libjxl-testdata/", ""),),
    ),
)
SPECS = {spec.name: spec for spec in PACKAGES}
V1_PACKAGES = frozenset(spec.name for spec in PACKAGES[:4])

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

PHOTO = "photo"
_ART = "not a photograph: digital art"
_PAINTING = "not a photograph: painting"
_CUTOUT = "not a photograph: cut-out or composite on a plain or transparent background"
_DRAWING = "not a photograph: drawing"
_PATTERN = "not a photograph: test pattern, synthetic or rendered image"
_TEXT = "not a photograph of a scene: text or document"
_VARIANT = "processed or alternative copy of another kept photograph"
# Rule 4b, for the packages marked `reviewed`: decided by looking at every candidate of the
# package versions named in docs/dataset.md (contact sheets of all images that pass rules 1-4).
# Keys are "short/work"; the first matching fnmatch pattern wins; a work matching no pattern is
# skipped as "not reviewed". PHOTO keeps the work (kind "photo"); anything else is the reason
# written to skipped.csv.
DECISIONS: tuple[tuple[str, str], ...] = (
    # enlightenment-data: 3840x2160 JPEGs inside the .edj files
    *(
        (f"e/{name}", PHOTO)
        for name in (
            "Bamboo",
            "Foggy-Trees",
            "God-Rays",
            "Green-Maple",
            "Lichen-Branches",
            "Mountain",
            "Peaks",
            "Red-Maple",
            "Sea-of-Lanterns",
            "Snow-Trees",
            "Spruce-Needles",
            "Sunset-Clouds",
            "White-Flower",
            "Yellow-Flower",
        )
    ),
    ("e/Paper-Flower", "not a photograph: engraving-like greyscale artwork"),
    ("e/Dunes", _ART),
    ("e/Flat-Fan", _ART),
    ("e/Sunset-Hills", _ART),
    ("e/Squiggle*", _ART),
    ("e/Flat-Stone-Pattern", "not a photograph: small repeating texture tile"),
    # lomiri-wallpapers-16.04 and -20.04
    ("lomiri/umang_by_Abhishek_Mudgal", _ART),
    ("lomiri/*", PHOTO),
    ("lomiri20/Kleiber_by_Lukas_Baubkus", PHOTO),
    ("lomiri20/*", _ART),  # Fossa, Infinite-Sea (renders), Painting-Colors
    # gcompris-qt-data: images inside the activities' .rcc files
    ("gcompris/erase/resource/*", PHOTO),  # 33 animals, 1920x1080
    ("gcompris/clickgame/resource/sea*", PHOTO),  # underwater
    ("gcompris/explore_farm_animals/resource/animals/*", PHOTO),
    ("gcompris/explore_world_animals/resource/animals/*", PHOTO),
    ("gcompris/explore_monuments/resource/*", PHOTO),
    ("gcompris/explore_world_music/resource/music/*", PHOTO),  # musicians, instruments
    *(
        (f"gcompris/details/resource/image/{name}_background", _PAINTING)
        for name in (
            "PortraitOfPereTanguy",
            "Van_Gogh_The_Night_Cafe",
            "Eglise_dAuvers-sur-Oise",
            "VincentVanGoghBridge",
            "VincentVanGogh00*",
            "Gogh4",
        )
    ),
    (
        "gcompris/details/resource/image/TajMahal_background",
        "same photograph as explore_monuments/resource/wonders/tajMahal (cropped)",
    ),
    (
        "gcompris/details/resource/image/Neuschwanstein_background",
        "same photograph as explore_monuments/resource/germany/neuschwansteinCastle (cropped)",
    ),
    ("gcompris/details/resource/image/*_background", PHOTO),  # monuments
    ("gcompris/details/*", "puzzle piece cut from a picture"),
    ("gcompris/babyshapes/*", _CUTOUT),
    ("gcompris/categorization/*", _CUTOUT),
    ("gcompris/gravity/*", _CUTOUT),  # planets
    ("gcompris/solar_system/*", _CUTOUT),  # planets
    ("gcompris/lang/*", _DRAWING),
    ("gcompris/*", "not a photograph: activity graphics"),
    # opencv-doc: examples and their data
    *(
        (f"opencv/data/{name}", PHOTO)
        for name in (
            "aero1",
            "aero3",
            "aloeL",
            "apple",
            "baboon",
            "board",
            "building",
            "butterfly",
            "chicky_512",
            "ela_original",
            "fruits",
            "graf1",
            "home",
            "left",
            "leuvenA",
            "messi5",
            "orange",
            "rubberwhale1",
            "smarties",
            "squirrel_cls",
            "stuff",
        )
    ),
    ("opencv/data/aloeR", "other view of the stereo pair data/aloeL"),
    ("opencv/data/right", "other view of the stereo pair data/left"),
    ("opencv/data/leuvenB", "other view of data/leuvenA"),
    ("opencv/data/graf3", "other view of data/graf1"),
    ("opencv/data/rubberwhale2", "other frame of data/rubberwhale1"),
    ("opencv/data/ela_modified", _VARIANT),
    ("opencv/data/licenseplate_motion", "synthetic motion blur"),
    ("opencv/data/text_*", _TEXT),
    ("opencv/data/sudoku", _TEXT),
    ("opencv/data/starry_night", _PAINTING),
    ("opencv/data/pca_test1", "near-binary backlit silhouettes (shape-analysis test)"),
    ("opencv/data/Blender_Suzanne*", _PATTERN),
    ("opencv/text/scenetext0?", PHOTO),  # street scenes with signs
    ("opencv/text/*_mask", _PATTERN),
    ("opencv/text/scenetext_segmented_word*", "close crop of a sign (text detection sample)"),
    ("opencv/alphamat/input_images/plant", PHOTO),
    ("opencv/*", _PATTERN),  # charts, masks, logos, shapes, drawings, maps
    # palapeli-data: the five puzzle photographs (512x512 backgrounds are textures)
    ("palapeli/*", PHOTO),
    # libjxl-testdata
    ("jxl/jxl/flower/flower", PHOTO),
    ("jxl/jxl/hdr_room", PHOTO),
    ("jxl/external/wesaturate/500px/*_srgb8", PHOTO),
    ("jxl/external/wesaturate/500px/*", _VARIANT),  # alpha and greyscale versions
    ("jxl/jxl/flower/*", _VARIANT),  # re-encodings of flower.png
    ("jxl/*", _PATTERN),
)


def decision(short: str, work: str) -> str:
    """Rule 4b: PHOTO, or why a work of a reviewed package is skipped."""
    key = f"{short}/{work}"
    for pattern, verdict in DECISIONS:
        if fnmatch.fnmatchcase(key, pattern):
            return verdict
    return "not reviewed"


# Held-out photographs of the reviewed packages, chosen so that every category named after the
# key has examples; "short/work" keys as in DECISIONS. The wallpaper packages keep their
# hash-based held-out split (HELDOUT_FRACTION, per package and kind), as in the first set.
HELDOUT_PHOTOS: dict[str, str] = {
    "lomiri/Picture_0B_by_freespace": "food, saturated red (fig in a red bowl)",
    "lomiri/Wine_by_Jakkub_Mede": "indoor (room with a bottle of wine)",
    "lomiri/friends_by_Aitzol_Berasategi": "animals (two dogs at a door)",
    "palapeli/citrus-fruits": "food (citrus slices, backlit)",
    "palapeli/cincinnati-bridge": "city, night (lit bridge over a river)",
    "opencv/data/fruits": "food (fruit close-up)",
    "opencv/data/messi5": "people (footballer, stadium crowd)",
    "opencv/text/scenetext06": "city (street with shop front)",
    "jxl/jxl/hdr_room": "indoor (furnished room, windows)",
    "gcompris/explore_world_music/resource/music/mexico": "people (musicians, faces)",
    "gcompris/explore_world_music/resource/music/japan": "people, night (festival)",
    "gcompris/explore_world_music/resource/music/orchestra": "people, indoor (concert hall)",
    "gcompris/explore_farm_animals/resource/animals/cat": "animals, saturated red (kitten)",
    "gcompris/explore_world_animals/resource/animals/scarlet_macaw": "animals, red and blue",
    "gcompris/erase/resource/kingfisher": "animals, saturated blue and orange",
    "gcompris/erase/resource/red_panda": "animals (red panda, foliage)",
    "gcompris/erase/resource/swans": "animals, dark water",
    "gcompris/clickgame/resource/sea5": "saturated blue (underwater cave)",
    "gcompris/details/resource/image/OperaSidney_background": "city, night (harbour)",
    "gcompris/explore_monuments/resource/germany/brandenburgGate": "city, dusk, people",
    "e/Red-Maple": "saturated red (maple leaves)",
    "e/Snow-Trees": "blue shadows on snow",
}

# fmt: off
MANIFEST_FIELDS = (
    "file", "split", "source_package", "package_version", "source_path", "kind", "licence",
    "licence_source", "copyright", "upstream_licence", "upstream_author", "width", "height",
    "original_width", "original_height", "detail", "sha256", "split_rule",
)
# fmt: on


class DatasetError(Exception):
    """A problem the user can fix (missing tool, missing package, bad folder)."""


# --------------------------------------------------------------------------- containers

# Eet (Enlightenment's archive format, the .edj files), version-2 layout; all integers are
# 32-bit big-endian:
#   header:     magic 0x1ee70f42, number of directory entries N, number of dictionary entries
#   directory:  N entries of 6 integers: data offset, stored size, unpacked size, name offset,
#               name size (with its NUL), flags
#   dictionary: 5 integers per entry (hash, offset, size, prev, next): not needed here
# flags: bit 0 compressed, bit 1 ciphered, bit 2 alias, bits 3-6 compression method (0-9 zlib,
# 10-11 LZ4). Edje stores each image as entry "edje/images/N": a lossy image is a plain JPEG
# stream, or (with alpha) a 12-byte header (0xbeeff00d, colour JPEG size, alpha JPEG size) and
# the colour JPEG; a lossless one starts 0xac1dfeed (raw ARGB words), which is not read here.
EET_MAGIC = 0x1EE70F42
EET_COMPRESSED, EET_CIPHERED, EET_ALIAS = 0x1, 0x2, 0x4
EET_LOSSY_ALPHA = 0xBEEFF00D
JPEG_SOI = b"\xff\xd8\xff"


def read_eet(data: bytes) -> dict[str, bytes]:
    """Entries of an Eet file: name -> bytes (ciphered, alias and LZ4 entries are left out)."""
    if len(data) < 12 or struct.unpack_from(">I", data)[0] != EET_MAGIC:
        raise DatasetError("not an Eet file (magic 0x1ee70f42 expected)")
    count = struct.unpack_from(">I", data, 4)[0]
    if 12 + 24 * count > len(data):
        raise DatasetError("Eet directory runs past the end of the file")
    entries = {}
    for i in range(count):
        offset, size, _, name_at, name_size, flags = struct.unpack_from(">6I", data, 12 + 24 * i)
        if offset + size > len(data) or name_at + name_size > len(data):
            raise DatasetError(f"Eet entry {i} runs past the end of the file")
        name = data[name_at : name_at + name_size].split(b"\0", 1)[0].decode("utf-8", "replace")
        if flags & (EET_CIPHERED | EET_ALIAS):
            continue
        payload = data[offset : offset + size]
        if flags & EET_COMPRESSED:
            if (flags >> 3) & 0xF >= 10:  # LZ4: only Edje's own data uses it, never images
                continue
            payload = zlib.decompress(payload)
        entries[name] = payload
    return entries


def eet_image_jpeg(payload: bytes) -> bytes | None:
    """The colour JPEG of an Edje image entry, or None for a lossless (raw ARGB) image."""
    if payload.startswith(JPEG_SOI):
        return payload
    if len(payload) >= 12:
        for order in (">", "<"):
            magic, colour, _ = struct.unpack_from(order + "3I", payload)
            if magic == EET_LOSSY_ALPHA and payload[12:15] == JPEG_SOI:
                return payload[12 : 12 + colour]
    return None


# Qt resource files (.rcc, as written by Qt's rcc tool); integers are big-endian:
#   header: "qres", format version (1-3), tree offset, data offset, names offset
#           (version 3 adds a 4-byte flags word)
#   tree:   nodes of 14 bytes (version 1) or 22 bytes (2-3: plus 8 bytes modification time):
#           name offset (4), flags (2), then for a directory: child count (4), index of the
#           first child (4); for a file: country (2), language (2), data offset (4).
#           Node 0 is the root directory. flags: 1 zlib-compressed, 2 directory, 4 zstd.
#   names:  length in UTF-16 units (2), hash (4), UTF-16BE name
#   data:   size (4), then the bytes; a zlib-compressed entry starts with its unpacked size (4).
RCC_MAGIC = b"qres"
RCC_ZLIB, RCC_DIRECTORY, RCC_ZSTD = 0x1, 0x2, 0x4


def read_rcc(data: bytes) -> dict[str, bytes]:
    """Files of a Qt resource file: path (no leading slash) -> bytes (zstd entries left out)."""
    if len(data) < 20 or data[:4] != RCC_MAGIC:
        raise DatasetError("not a Qt resource file (magic 'qres' expected)")
    version, tree, base, names = struct.unpack_from(">4I", data, 4)
    if version not in (1, 2, 3):
        raise DatasetError(f"Qt resource format version {version} is not supported")
    node_size = 14 if version == 1 else 22
    files: dict[str, bytes] = {}

    def name_of(offset: int) -> str:
        (length,) = struct.unpack_from(">H", data, names + offset)
        start = names + offset + 6
        return data[start : start + 2 * length].decode("utf-16-be")

    pending = [(0, "")]  # (node index, path)
    seen = set()
    while pending:
        index, path = pending.pop()
        if index in seen:
            raise DatasetError("Qt resource tree has a cycle")
        seen.add(index)
        at = tree + index * node_size
        if at + node_size > len(data):
            raise DatasetError("Qt resource tree runs past the end of the file")
        name_offset, flags = struct.unpack_from(">IH", data, at)
        if index:
            path = f"{path}/{name_of(name_offset)}" if path else name_of(name_offset)
        if flags & RCC_DIRECTORY:
            count, first = struct.unpack_from(">II", data, at + 6)
            pending.extend((child, path) for child in range(first + count - 1, first - 1, -1))
            continue
        (offset,) = struct.unpack_from(">I", data, at + 10)
        (size,) = struct.unpack_from(">I", data, base + offset)
        payload = data[base + offset + 4 : base + offset + 4 + size]
        if flags & RCC_ZSTD:
            continue
        if flags & RCC_ZLIB:
            payload = zlib.decompress(payload[4:])
        files[path] = payload
    return dict(sorted(files.items()))


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
        spec = SPECS.get(c.package)
        min_side = spec.min_short_side if spec and spec.min_short_side else MIN_SHORT_SIDE
        verdict = decision(c.short, c.work) if spec and spec.reviewed else PHOTO
        if min(c.width, c.height) < min_side:
            result.skipped.append((c.package, c.source_path, f"too small ({c.width}x{c.height})"))
        elif verdict != PHOTO:
            result.skipped.append((c.package, c.source_path, verdict))
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
            # Photographs of the reviewed packages were chosen by eye: misty or dark ones stay.
            flat = detail < MIN_DETAIL_FRACTION and not getattr(SPECS.get(c.package), "reviewed", 0)
            reason = f"too flat (detail {detail:.3f})" if flat else ""
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
        reviewed = c.package in SPECS and SPECS[c.package].reviewed
        kind = PHOTO if reviewed else KINDS.get(f"{c.short}/{c.work}", "unknown")
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


SPLIT_RULE_HASH = f"hash ({HELDOUT_FRACTION:g} per package and kind)"
SPLIT_RULE_FIXED = "fixed held-out list"
SPLIT_RULE_REST = "not in the fixed held-out list"


def split_images(items: Sequence[tuple[str, str, bool]]) -> dict[str, tuple[str, str]]:
    """Split of every kept image: key -> (split, rule).

    items: (key, stratum, reviewed) with key "PACKAGE/SOURCE_PATH" and stratum "PACKAGE/KIND"
    for the wallpaper packages (hash rule, as in the first set) or "SHORT/WORK" for the reviewed
    packages (held out exactly when listed in HELDOUT_PHOTOS). Every listed work must be kept.
    """
    hashed = assign_splits([(key, stratum) for key, stratum, reviewed in items if not reviewed])
    result = {key: (split, SPLIT_RULE_HASH) for key, split in hashed.items()}
    listed = set()
    for key, work, reviewed in items:
        if reviewed:
            held = work in HELDOUT_PHOTOS
            if held:
                listed.add(work)
            result[key] = ("heldout", SPLIT_RULE_FIXED) if held else ("train", SPLIT_RULE_REST)
    missing = sorted(set(HELDOUT_PHOTOS) - listed)
    if missing:
        raise DatasetError(f"held-out photographs not among the kept images: {missing}")
    return result


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


ALTERNATIVE_SUFFIXES = (".jpg", ".jpeg", ".png", ".svg")


def match_upstream(statements: Sequence[Statement], path: str) -> tuple[Statement | None, str]:
    """Last stanza whose pattern matches the whole upstream path (DEP-5 semantics).

    Packages that convert images at build time (GCompris ships WebP made from JPEG/PNG/SVG
    sources) are matched under the source suffixes too; the first name whose stanza is more
    specific than `Files: *` wins. Returns the stanza and the name it matched."""
    stem = path.rsplit(".", 1)[0] if "." in path.rsplit("/", 1)[-1] else path
    names = [path] + [stem + s for s in ALTERNATIVE_SUFFIXES if stem + s != path]
    first = None
    for name in names:
        found = None
        for statement in statements:
            if any(fnmatch.fnmatchcase(name, p) for p in statement.patterns):
                found = statement
        if found is not None and found.patterns != ("*",):
            return found, name
        first = first or (found, name)
    return first or (None, path)


def upstream_path(spec: PackageSpec, source_path: str) -> str:
    """The file's path in the upstream source tree, through the package's source_map; for an
    image inside a container, the container (Eet) or the entry's resource path (rcc)."""
    path = source_path
    if "!/" in path:
        container, inner = path.split("!/", 1)
        path = inner if spec.container == "rcc" else container
    for prefix, replacement in spec.source_map:
        if path.startswith(prefix):
            return replacement + path[len(prefix) :]
    return path


def debian_licence(
    copyright_text: str, source_path: str, fallback: str, upstream: str | None = None
) -> Licence:
    statements = parse_dep5(copyright_text)
    if statements and upstream is not None:
        found, name = match_upstream(statements, upstream)
        if found is not None:
            where = found.where + ("" if name == upstream else f" (as {name})")
            return Licence(found.licence, where, found.copyright)
    elif statements:
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
    upstream = upstream_path(spec, source_path) if spec.source_map else None
    licence = debian_licence(text, source_path, spec.fallback_licence, upstream)
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


def _extract(dest: Path, data: bytes) -> Path:
    """Write data to dest once (the extracted copy of a container entry) and return dest."""
    if not dest.is_file() or dest.stat().st_size != len(data):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(dest)
    return dest


def container_files(
    spec: PackageSpec, base: Path, extracted: Path, skipped: list
) -> list[tuple[Path, str, str, bool]]:
    """(file on disk, path below the image root, source path, is_symlink) of the images held in
    the package's container files, extracted into `extracted`. Eet: the largest image entry of
    each .edj (the others are smaller copies of it); rcc: every file entry."""
    suffix = {"eet": ".edj", "rcc": ".rcc"}[spec.container]
    found = []
    for path in sorted(base.rglob("*" + suffix)):
        rel = path.relative_to(base).as_posix()
        data = path.read_bytes()
        if spec.container == "eet":
            images = {n: d for n, d in read_eet(data).items() if n.startswith("edje/images/")}
            if not images:
                skipped.append((spec.name, f"{spec.image_root}/{rel}", "no image entry"))
                continue
            ranked = sorted(images, key=lambda n: (-len(images[n]), n))
            for name in ranked[1:]:
                reason = f"smaller copy of {ranked[0]} in the same file"
                skipped.append((spec.name, f"{spec.image_root}/{rel}!/{name}", reason))
            source_path = f"{spec.image_root}/{rel}!/{ranked[0]}"
            jpeg = eet_image_jpeg(images[ranked[0]])
            if jpeg is None:
                work = rel.rsplit(".", 1)[0]
                verdict = decision(spec.short, work)
                reason = verdict if verdict != PHOTO else "lossless image entry (not read)"
                skipped.append((spec.name, source_path, reason))
                continue
            disk = _extract(extracted / rel / (ranked[0].replace("/", "_") + ".jpg"), jpeg)
            found.append((disk, rel, source_path, False))
        else:
            for name, payload in read_rcc(data).items():
                inner = name.removeprefix("gcompris/src/activities/")
                source_path = f"{spec.image_root}/{rel}!/{name}"
                if skip_reason_by_name(inner, False) is not None:
                    found.append((extracted / rel / name, inner, source_path, False))
                    continue
                found.append((_extract(extracted / rel / name, payload), inner, source_path, False))
    return found


def scan(
    spec: PackageSpec, root: Path, version: str, skipped: list, extracted: Path | None = None
) -> list[Candidate]:
    """Rules 1-3 over every file below the package's image root (or inside its containers)."""
    base = root / spec.image_root
    if not base.is_dir():
        raise DatasetError(f"{spec.name}: no {spec.image_root} in the package")
    if spec.container:
        extracted = extracted or root.parent.parent / "extracted" / root.name
        files = container_files(spec, base, extracted, skipped)
    else:
        files = [
            (p, p.relative_to(base).as_posix(), "", p.is_symlink())
            for p in sorted(p for p in base.rglob("*") if p.is_file() or p.is_symlink())
        ]
    candidates = []
    for path, rel, source_path, is_symlink in files:
        source_path = source_path or f"{spec.image_root}/{rel}"
        # An Eet entry has no file name of its own: the rules see the extracted JPEG's name.
        reason = skip_reason_by_name(path.name if spec.container == "eet" else rel, is_symlink)
        if reason:
            skipped.append((spec.name, source_path, reason))
        if reason is not None:
            continue
        try:
            with Image.open(path) as image:
                width, height = image.size
                if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF: a quarter turn
                    width, height = height, width
        except (OSError, SyntaxError, ValueError) as error:
            skipped.append((spec.name, source_path, f"unreadable ({error})"))
            continue
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
    splits = split_images(
        [
            (s.candidate.key, f"{s.candidate.package}/{s.kind}", False)
            if not SPECS[s.candidate.package].reviewed
            else (s.candidate.key, f"{s.candidate.short}/{s.candidate.work}", True)
            for s in kept
        ]
    )
    rows = []
    for split in ("train", "heldout"):
        (out / split).mkdir(parents=True, exist_ok=True)
    names = set()
    for s in kept:
        c = s.candidate
        s.split, rule = splits[c.key]
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
                "split_rule": rule,
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
