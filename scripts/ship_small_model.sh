#!/usr/bin/env bash
# Turn a finished training run into the embedded model and measure it.
#
#   scripts/ship_small_model.sh [RUN_DIR] [EVAL_DIR] [DATA_DIR]
#       defaults: runs/small-v2, results/small-v2, data/photos-v2
#
# The embedded model (version 2) comes from configs/train_small_v2.yaml, shipped with this script:
#
# 1. export the run's last stage's model with float16 weights into src/oscar/weights/small
#    (computation stays float32; the package ships the float16 files);
# 2. refit the entropy-coder priors on the exported weights (float16 rounding can move indices)
#    at the default encoder effort, on the training images;
# 3. make the evaluation copies: the data set rebuilt with its longest side at 768 px (one
#    Lanczos step from each source file, a Kodak-like size; at 1536 px the evaluation would take
#    hours on 2 cores);
# 4. evaluate on the held-out photographs against JPEG, WebP, AVIF and JPEG XL at matched measured
#    bpp, their 2x and 4x down-scaled variants at every level (real bytes; crops of every image in
#    the report), and the held-out illustrations apart;
# 5. copy the rate-distortion plot into docs/images/ and print the model card's tables
#    (scripts/model_card_tables.py).
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/small-v2}
out=${2:-results/small-v2}
data=${3:-data/photos-v2}
final=$(ls -d "$run"/[0-9][0-9]-*/model | tail -n 1)
oscar export "$final" -o src/oscar/weights/small --dtype float16 --force
oscar fit-priors src/oscar/weights/small "$data/train"
small="$data-768"
if [ ! -f "$small/manifest.csv" ]; then
    python scripts/build_dataset.py --out "$small" --max-side 768 --manifest "$small/manifest.csv"
fi
heldout() {  # the held-out files of one kind, from the manifest
    python - "$small" "$1" <<'EOF'
import csv, sys
folder, kind = sys.argv[1:]
for row in csv.DictReader(open(f"{folder}/manifest.csv")):
    if row["split"] == "heldout" and row["kind"] == kind:
        print(f"{folder}/{row['file']}")
EOF
}
common=(--model src/oscar/weights/small --baselines jpeg,webp,avif,jxl
    --metrics psnr,ms_ssim,colour_shift --downscaled always --no-sweep --force)
# shellcheck disable=SC2046  # one argument per file; the names have no spaces
oscar eval $(heldout photo) "${common[@]}" --crops 25 -o "$out/photos"
# shellcheck disable=SC2046
oscar eval $(heldout illustration) "${common[@]}" --crops 4 -o "$out/illustrations"
mkdir -p docs/images && cp "$out/photos/rd.png" docs/images/small-heldout-rd.png
python scripts/model_card_tables.py "$run" "$out/photos" src/oscar/weights/small
