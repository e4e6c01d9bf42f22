"""Check the embedded model's codec targets from two `oscar eval` outputs (new model, old model).

    python scripts/codec_targets.py NEW_EVAL OLD_EVAL [--check]

Both evaluations must cover the same images (our codec's rows; the new one with the classical
baselines, matched per image, and `--downscaled always`). Prints markdown tables:

1. per level: mean measured bpp and PSNR of both models, the PSNR gain, MS-SSIM, and the largest
   colour shift (channel-mean error, 8-bit levels) over the images;
2. per level: on how many images our file wins on MS-SSIM against each classical codec at full
   size and 2x / 4x down-scaled (a win as the report's head-to-head table counts it: MS-SSIM at
   least as good and a file no larger), and against all of them at once.

Targets (exit 1 with --check when one is missed): at every level a PSNR gain of at least 3 dB at
an equal or lower mean bpp; PSNR and MS-SSIM rising with the level; no image with a colour shift
over 4 at levels 3 to 7. The MS-SSIM wins are reported, not checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from oscar.evaluation.head_to_head import head_to_head, outcome
from oscar.evaluation.records import ImageRecord

MIN_GAIN_DB = 3.0
MAX_COLOUR_SHIFT = 4.0
COLOUR_LEVELS = range(3, 8)
WIN_LEVELS = range(0, 4)


def load(folder: Path) -> list[ImageRecord]:
    data = json.loads((folder / "per_image.json").read_text())
    return [ImageRecord.from_dict(r) for r in data]


def ours_by_level(records: list[ImageRecord]) -> dict[int, dict[str, ImageRecord]]:
    out: dict[int, dict[str, ImageRecord]] = defaultdict(dict)
    for r in records:
        if r.kind == "oscar":
            out[r.level][r.image] = r
    return out


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("new", type=Path)
    p.add_argument("old", type=Path)
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = p.parse_args(argv)
    new_records = load(args.new)
    new, old = ours_by_level(new_records), ours_by_level(load(args.old))
    missed = []

    print(
        "| level | old bpp | old PSNR | new bpp | new PSNR | gain | new MS-SSIM "
        "| largest colour shift |"
    )
    print("|---|---|---|---|---|---|---|---|")
    previous = None
    for level in sorted(new):
        images = sorted(new[level])
        if sorted(old.get(level, {})) != images:
            print(f"level {level}: the two evaluations cover different images", file=sys.stderr)
            return 2
        n, o = new[level], old[level]
        bpp_n, bpp_o = mean(n[i].bpp for i in images), mean(o[i].bpp for i in images)
        psnr_n = mean(n[i].metrics["psnr"] for i in images)
        psnr_o = mean(o[i].metrics["psnr"] for i in images)
        msssim = mean(n[i].metrics["ms_ssim"] for i in images)
        shift, worst = max((n[i].metrics["colour_shift"], i) for i in images)
        gain = psnr_n - psnr_o
        print(
            f"| {level} | {bpp_o:.4f} | {psnr_o:.2f} | {bpp_n:.4f} | {psnr_n:.2f} | {gain:+.2f} "
            f"| {msssim:.4f} | {shift:.2f} ({worst}) |"
        )
        if gain < MIN_GAIN_DB or bpp_n > bpp_o:
            missed.append(f"level {level}: gain {gain:+.2f} dB at {bpp_n:.4f} vs {bpp_o:.4f} bpp")
        if previous is not None and (psnr_n <= previous[0] or msssim <= previous[1]):
            missed.append(f"level {level}: PSNR or MS-SSIM not above level {level - 1}'s")
        previous = (psnr_n, msssim)
        if level in COLOUR_LEVELS:
            for i in images:
                if n[i].metrics["colour_shift"] > MAX_COLOUR_SHIFT:
                    missed.append(
                        f"level {level}: colour shift {n[i].metrics['colour_shift']:.2f} on {i}"
                    )

    # Wins as the report's head-to-head table counts them (oscar.evaluation.head_to_head).
    counts = {
        (row.level, row.codec): row
        for row in head_to_head(new_records, ["ms_ssim"])
        if row.level in WIN_LEVELS
    }
    codecs = sorted({codec for _, codec in counts})
    if codecs:
        matched = defaultdict(list)  # (level, image) -> baseline records
        for r in new_records:
            if r.kind == "matched":
                matched[(r.level, r.image)].append(r)
        print()
        print("MS-SSIM wins (images where our file wins / images), per classical codec:")
        print()
        print("| level | " + " | ".join(codecs) + " | all at once |")
        print("|---|" + "---|" * (len(codecs) + 1))
        for level in WIN_LEVELS:
            if level not in new:
                continue
            cells = [
                f"{counts[level, c].wins}/{counts[level, c].images}"
                if (level, c) in counts
                else "–"
                for c in codecs
            ]
            every = sum(
                all(outcome(ours, r, "ms_ssim") == "win" for r in matched[(level, image)])
                for image, ours in new[level].items()
            )
            print(f"| {level} | " + " | ".join(cells) + f" | {every}/{len(new[level])} |")

    print()
    if missed:
        print("missed:\n- " + "\n- ".join(missed))
    else:
        print("every checked target is met")
    return 1 if (missed and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
