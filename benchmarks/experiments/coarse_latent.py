"""How good is the coarse latent a model's hyper-coders rebuild, before the UNet?

    python benchmarks/experiments/coarse_latent.py HELDOUT_DIR MODEL_DIR [MODEL_DIR ...]

For four held-out photographs (their top-left 320x320, so every level's grid fits), per level:
z_t as the codec builds it (the hyper-coder's output rescaled to the transmitted channel RMS),
the relative squared error of latent channel 0 (for the block-PCA autoencoder: the 8x8 block
means), the cosine between z_t and the true latent in the UNet's (per-channel scaled) space and
in the unscaled one, and the PSNR of z_t decoded by the autoencoder alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from oscar.evaluation.metrics import psnr
from oscar.io import image_to_tensor, tensor_to_image
from oscar.store.pretrained import load_model
from oscar.training.losses import energy_space, global_cosine

IMAGES = (
    "gcompris_explore_farm_animals_resource_animals_cat",
    "plasma_ColorfulCups",
    "e_Red-Maple",
    "opencv_data_messi5",
)
LEVELS = (0, 1, 3, 5, 7)
SIDE = 320


@torch.no_grad()
def measure(model_dir: str, heldout: Path) -> dict[int, np.ndarray]:
    model = load_model(model_dir).model.eval()
    rows: dict[int, list] = {lv: [] for lv in LEVELS}
    for name in IMAGES:
        rgb = np.asarray(Image.open(heldout / f"{name}.jpg").convert("RGB"))[:SIDE, :SIDE]
        y = model.encode_latent(image_to_tensor(rgb))
        codes = model.side_info(y)
        for lv in LEVELS:
            z = model.to_noisy_latent(model.hyper_coder(lv)(y).y_tilde, codes)
            err0 = float(((z - y)[:, 0] ** 2).mean() / (y[:, 0] ** 2).mean())
            rec = tensor_to_image(model.decode_latent(z))
            cosines = (
                float(global_cosine(z, y)[0]),
                float(global_cosine(energy_space(model.vae, z), energy_space(model.vae, y))[0]),
            )
            rows[lv].append((err0, *cosines, psnr(rgb, rec)))
    return {lv: np.mean(r, axis=0) for lv, r in rows.items()}


def main() -> None:
    heldout = Path(sys.argv[1])
    for model_dir in sys.argv[2:]:
        print(model_dir)
        for lv, (err0, cos_scaled, cos_raw, db) in measure(model_dir, heldout).items():
            print(
                f"  level {lv}: channel-0 relative error {err0:.3f}, cosine scaled "
                f"{cos_scaled:.3f}, unscaled {cos_raw:.3f}, coarse-latent PSNR {db:.2f} dB"
            )


if __name__ == "__main__":
    main()
