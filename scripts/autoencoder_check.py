"""The autoencoder alone against the block-PCA floor of its latent width, per held-out image.

    python scripts/autoencoder_check.py --train data/photos-v2/train \\
        --heldout data/photos-v2/heldout --manifest datasets/photos-v2.csv \\
        --model embedded --model runs/small-v2/final [--check]

For every model: PSNR of its autoencoder's own reconstruction (no hyper-coding), the PSNR of the
block-PCA code of the same latent width (PCA fitted on fixed crops of --train), the margin, and
the largest channel-mean error (8-bit levels); photographs and illustrations summarised apart
when a manifest gives each file's kind. ``--check`` exits 1 unless, on the photographs, the mean
PSNR is >= 30 dB, the mean margin >= 1.5 dB, every margin > 0 and every channel-mean error
<= 3 levels (the targets of the embedded model; docs/model-card-small.md).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

from oscar.evaluation.autoencoder import evaluate_autoencoder, fit_floor
from oscar.store.pretrained import load_model, resolve_model_dir
from oscar.training.data import list_images

TARGETS = {"mean_psnr": 30.0, "mean_margin": 1.5, "min_margin": 0.0, "max_colour": 3.0}


def kinds(manifest: Path | None) -> dict[str, str]:
    if manifest is None:
        return {}
    with open(manifest, newline="") as f:
        return {Path(row["file"]).name: row.get("kind", "unknown") for row in csv.DictReader(f)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=Path, required=True, help="images the floor's PCA fits")
    parser.add_argument("--heldout", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, help="CSV with file and kind columns")
    parser.add_argument("--model", action="append", required=True, help="'embedded' or a dir")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)

    floor = fit_floor(list_images([args.train]))
    images = list_images([args.heldout])
    kind_of = kinds(args.manifest)
    failed = False
    for name in args.model:
        directory = resolve_model_dir(None if name == "embedded" else name)
        vae = load_model(directory).model.vae.eval()
        width = vae.config.latent_channels
        results = evaluate_autoencoder(vae, images, floor)
        print(f"\n## {name} ({type(vae).__name__}, {width} latent channels)\n")
        print("| image | kind | PSNR dB | floor dB | margin dB | channel-mean error |")
        print("|---|---|---|---|---|---|")
        for r in results:
            print(
                f"| {r.image} | {kind_of.get(r.image, '?')} | {r.psnr:.2f} | "
                f"{r.floor_psnr:.2f} | {r.margin:+.2f} | {r.channel_mean_error:.2f} |"
            )
        groups: dict[str, list] = {}
        for r in results:
            groups.setdefault(kind_of.get(r.image, "all"), []).append(r)
        print()
        for kind, rows in sorted(groups.items()):
            n = len(rows)
            summary = {
                "mean_psnr": sum(r.psnr for r in rows) / n,
                "mean_margin": sum(r.margin for r in rows) / n,
                "min_margin": min(r.margin for r in rows),
                "max_colour": max(r.channel_mean_error for r in rows),
            }
            print(
                f"{kind} ({n}): mean PSNR {summary['mean_psnr']:.2f} dB (floor "
                f"{sum(r.floor_psnr for r in rows) / n:.2f}), mean margin "
                f"{summary['mean_margin']:+.2f} dB, smallest {summary['min_margin']:+.2f} dB, "
                f"largest channel-mean error {summary['max_colour']:.2f}"
            )
            if kind in ("photo", "all"):
                missed = [
                    key
                    for key, target in TARGETS.items()
                    if (summary[key] > target if key == "max_colour" else summary[key] < target)
                    or (key == "min_margin" and summary[key] <= target)
                ]
                if missed:
                    failed = True
                    print(f"  targets missed: {', '.join(missed)}")
    return 1 if failed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
