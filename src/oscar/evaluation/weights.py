"""Find the standard pretrained weight files that LPIPS, DISTS and FID need. Never downloads.

Each network loads the file its reference implementation uses, under that file's usual name
(key: file name — what it is):

- ``alexnet``: ``alexnet-owt-7be5be79.pth`` — torchvision AlexNet, ImageNet (LPIPS-Alex)
- ``vgg16``: ``vgg16-397923af.pth`` — torchvision VGG16, ImageNet (LPIPS-VGG, DISTS)
- ``lpips_alex``: ``lpips_alex.pth`` — LPIPS v0.1 linear layers (``lpips/weights/v0.1/alex.pth``)
- ``lpips_vgg``: ``lpips_vgg.pth`` — LPIPS v0.1 linear layers (``lpips/weights/v0.1/vgg.pth``)
- ``dists``: ``dists_weights.pt`` — DISTS alpha/beta (``DISTS_pytorch/weights.pt``)
- ``inception``: ``pt_inception-2015-12-05-6726825d.pth`` — pytorch-fid's FID Inception

Search order: the ``--weights-dir`` folder, ``$TORCH_HOME/hub/checkpoints``, ``$TORCH_HOME``,
``$XDG_CACHE_HOME/torch/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``, where
torchvision and pytorch-fid keep their downloads). The LPIPS and DISTS files are also found inside
an installed ``lpips`` or ``DISTS_pytorch`` package under their original names, since those
packages ship them. Files are read with ``torch.load(..., weights_only=True)`` only.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from oscar.errors import ModelError


@dataclass(frozen=True)
class WeightFile:
    """A standard weight file: the name we look for, accepted variants, and where it comes from."""

    key: str
    filename: str
    description: str
    patterns: tuple[str, ...] = ()  # other accepted names (globs), e.g. other torchvision hashes
    package: tuple[str, str] | None = None  # (installed package, path inside it)


WEIGHT_FILES: dict[str, WeightFile] = {
    f.key: f
    for f in (
        WeightFile(
            "alexnet",
            "alexnet-owt-7be5be79.pth",
            "torchvision AlexNet ImageNet weights",
            ("alexnet-*.pth",),
        ),
        WeightFile(
            "vgg16", "vgg16-397923af.pth", "torchvision VGG16 ImageNet weights", ("vgg16-*.pth",)
        ),
        WeightFile(
            "lpips_alex",
            "lpips_alex.pth",
            "LPIPS v0.1 AlexNet linear layers (lpips/weights/v0.1/alex.pth)",
            package=("lpips", "weights/v0.1/alex.pth"),
        ),
        WeightFile(
            "lpips_vgg",
            "lpips_vgg.pth",
            "LPIPS v0.1 VGG linear layers (lpips/weights/v0.1/vgg.pth)",
            package=("lpips", "weights/v0.1/vgg.pth"),
        ),
        WeightFile(
            "dists",
            "dists_weights.pt",
            "DISTS alpha/beta weights (DISTS_pytorch/weights.pt)",
            package=("DISTS_pytorch", "weights.pt"),
        ),
        WeightFile(
            "inception",
            "pt_inception-2015-12-05-6726825d.pth",
            "pytorch-fid FID Inception weights",
            ("pt_inception-2015-12-05-*.pth",),
        ),
    )
}


def search_dirs(weights_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for weight files, in order (existing or not)."""
    dirs: list[Path] = []
    if weights_dir is not None:
        dirs.append(Path(weights_dir))
    torch_home = os.environ.get("TORCH_HOME")
    if torch_home:
        dirs += [Path(torch_home) / "hub" / "checkpoints", Path(torch_home)]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    dirs.append(cache / "torch" / "hub" / "checkpoints")
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _package_file(package: str, inner: str) -> Path | None:
    """A file inside an installed package, located without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / inner
        if path.is_file():
            return path
    return None


def find_weight(key: str, weights_dir: str | Path | None = None) -> Path | None:
    """Path of the weight file ``key`` (see :data:`WEIGHT_FILES`), or None when not found."""
    spec = WEIGHT_FILES[key]
    for folder in search_dirs(weights_dir):
        exact = folder / spec.filename
        if exact.is_file():
            return exact
        for pattern in spec.patterns:
            matches = sorted(p for p in folder.glob(pattern) if p.is_file())
            if matches:
                return matches[0]
    if spec.package is not None:
        return _package_file(*spec.package)
    return None


def missing_message(what: str, keys: list[str], weights_dir: str | Path | None = None) -> str:
    """One line: ``what`` is skipped, which files are missing, and where to put them."""
    names = ", ".join(f"{WEIGHT_FILES[k].filename} ({WEIGHT_FILES[k].description})" for k in keys)
    where = weights_dir if weights_dir is not None else "--weights-dir DIR"
    default_cache = search_dirs(None)[-1]
    return (
        f"{what} skipped: missing {names}; put the file(s) in {where} "
        f"or $TORCH_HOME/hub/checkpoints or {default_cache}"
    )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pth/.pt file, read with ``weights_only=True`` (no pickled code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ModelError(f"{path}: cannot read weight file: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state dict of tensors")
    return dict(state)


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into ``module`` strictly (BatchNorm counters may be absent)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        shown = ", ".join(missing[:3]) + (" …" if len(missing) > 3 else "")
        raise ModelError(f"{path}: {len(missing)} expected tensors missing ({shown})")
    for key, value in own.items():
        if key in state and tuple(state[key].shape) != tuple(value.shape):
            raise ModelError(
                f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)}"
            )
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
