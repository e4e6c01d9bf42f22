"""Random-weight stand-ins for the standard LPIPS / DISTS / FID weight files (test helper).

The files carry the same names and tensor keys as the real ones (torchvision's AlexNet and VGG16
with their classifiers, the LPIPS v0.1 linear layers, DISTS's alpha/beta, pytorch-fid's
Inception without BatchNorm counters), so loading them exercises the code real files go through.
"""

from __future__ import annotations

from pathlib import Path

import torch

from oscar.evaluation.backbones import AlexNetFeatures, VGG16Features
from oscar.evaluation.fid import FIDInceptionV3
from oscar.evaluation.weights import WEIGHT_FILES

_made: dict[str, Path] = {}


def _features(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def write_random_weights(folder: Path) -> Path:
    """Write every standard weight file with random values into ``folder`` (once per session)."""
    if "dir" in _made:
        return _made["dir"]
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        alex = _features(AlexNetFeatures())
        alex["classifier.1.weight"] = torch.randn(8, 4)  # present in the real file, ignored
        torch.save(alex, folder / WEIGHT_FILES["alexnet"].filename)
        vgg = _features(VGG16Features())
        vgg["classifier.0.weight"] = torch.randn(8, 4)
        torch.save(vgg, folder / WEIGHT_FILES["vgg16"].filename)
        for key, channels in (
            ("lpips_alex", (64, 192, 384, 256, 256)),
            ("lpips_vgg", (64, 128, 256, 512, 512)),
        ):
            lins = {
                f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) / c for k, c in enumerate(channels)
            }
            torch.save(lins, folder / WEIGHT_FILES[key].filename)
        dists = {
            "alpha": torch.normal(0.1, 0.01, (1, 1475, 1, 1)),
            "beta": torch.normal(0.1, 0.01, (1, 1475, 1, 1)),
        }
        torch.save(dists, folder / WEIGHT_FILES["dists"].filename)
        inception = FIDInceptionV3()
        for m in inception.modules():  # keep activations in a sane range with random weights
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.fill_(1.0)
        state = {k: v for k, v in inception.state_dict().items() if "num_batches" not in k}
        state["fc.weight"] = torch.randn(1008, 2048) * 0.01
        state["fc.bias"] = torch.zeros(1008)
        torch.save(state, folder / WEIGHT_FILES["inception"].filename)
    _made["dir"] = folder
    return folder
