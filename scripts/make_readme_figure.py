"""Make the README's picture: the sample image, our decodes at three levels, and AVIF at the
bytes of our middle level. Re-run it whenever the embedded model or the sample changes.

    python scripts/make_readme_figure.py                  # writes docs/images/readme-figure.png
    python scripts/make_readme_figure.py --model DIR --image photo.png --levels 1,3,7

Every panel is the same crop of the image at full resolution (no resampling); captions give the
file's measured bytes and bpp. AVIF (libavif through imagecodecs, the `oscar eval` baseline) is
set to the quality whose file is closest to our middle level's bytes. Needs the [eval] extras.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import oscar

ROOT = Path(__file__).resolve().parents[1]
CAPTION = 34  # pixels under each panel


def _font(size: int):
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def panel(rgb: np.ndarray, box: tuple[int, int, int, int], lines: list[str]) -> Image.Image:
    top, left, h, w = box
    crop = Image.fromarray(rgb[top : top + h, left : left + w])
    out = Image.new("RGB", (w, h + CAPTION), "white")
    out.paste(crop, (0, 0))
    draw = ImageDraw.Draw(out)
    font = _font(12)
    for i, line in enumerate(lines):
        draw.text((4, h + 3 + 15 * i), line, fill="black", font=font)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory (default: embedded)")
    parser.add_argument("--image", default=None, help="image (default: the packaged sample)")
    parser.add_argument("--levels", default="1,3,7", help="three levels, low to high")
    parser.add_argument("--crop", default="96,192,320,320", help="TOP,LEFT,HEIGHT,WIDTH")
    parser.add_argument("-o", "--output", default=str(ROOT / "docs/images/readme-figure.png"))
    args = parser.parse_args(argv)

    from oscar import OscarCodec
    from oscar.evaluation.baselines import EncodingCache, get_baselines, match_rate

    codec = OscarCodec.from_pretrained(args.model, device="cpu")
    path = Path(args.image) if args.image else oscar.sample_image_path()
    rgb = np.asarray(Image.open(path).convert("RGB"))
    pixels = rgb.shape[0] * rgb.shape[1]
    box = tuple(int(v) for v in args.crop.split(","))
    levels = [int(v) for v in args.levels.split(",")]
    panels = [panel(rgb, box, ["original", f"{path.name}, {rgb.shape[1]}×{rgb.shape[0]}"])]
    sizes = {}
    for level in levels:
        data = codec.compress(rgb, level)
        sizes[level] = len(data)
        decoded = codec.decompress(data)
        bpp = len(data) * 8 / pixels
        caption = [f"oscar level {level}", f"{len(data)} B, {bpp:.3f} bpp"]
        panels.append(panel(decoded, box, caption))
    (avif,) = get_baselines("avif")
    middle = levels[len(levels) // 2]
    match = match_rate(EncodingCache(avif, rgb, pixels), sizes[middle] * 8 / pixels)
    decoded = avif.decode(match.encoding.data)
    size = len(match.encoding.data)
    panels.append(
        panel(decoded, box, [f"AVIF {avif.setting(match.encoding.quality)}", f"{size} B, "
                             f"{size * 8 / pixels:.3f} bpp (≈ level {middle})"])
    )  # fmt: skip
    width = sum(p.width for p in panels) + 4 * (len(panels) - 1)
    figure = Image.new("RGB", (width, panels[0].height), "white")
    x = 0
    for p in panels:
        figure.paste(p, (x, 0))
        x += p.width + 4
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB): levels {levels}, AVIF {size} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
