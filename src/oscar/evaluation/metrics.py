"""Image metrics on 8-bit images: PSNR, MS-SSIM, and the suite that also runs LPIPS and DISTS.

Every metric compares the untouched original (after the input policy of ``oscar.io``: RGB, 8-bit)
with the reconstruction as a user would save it (uint8, rounded). Greyscale reconstructions are
compared as RGB with equal channels, as the original is.

- ``psnr``: RGB PSNR, 10·log10(255² / MSE) with the MSE over all pixels and channels. Identical
  images give +inf (written as null in JSON/CSV).
- ``ms_ssim``: MS-SSIM as pytorch-msssim defines it (data range 255, 11-tap Gaussian window
  σ = 1.5, five scales with the standard weights; computed in float64, checked against
  pytorch-msssim in the tests) when the shorter side is above 160 px, pytorch-msssim's minimum.
  Smaller images use the largest number of scales M that fits (shorter side > 10·2^(M-1)), with
  the first M standard weights renormalised to sum to one; the number of scales used is noted in
  the record. Below 11 px it is not defined (None).
- ``colour_shift``: colour fidelity, which MS-SSIM (computed per channel on normalised local
  statistics) barely sees: the largest absolute difference between the original's and the
  reconstruction's mean R, G or B value, in 8-bit levels (0 is perfect). A cast of 5 levels over
  a whole image is plainly visible while PSNR and MS-SSIM move little.
- ``lpips_alex``, ``lpips_vgg``, ``dists``: see :mod:`oscar.evaluation.perceptual` (full
  resolution). Images too small for a network give None with a note.
- ``fid``, ``kid``, ``fid_whole``: data-set metrics, see :mod:`oscar.evaluation.fid`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from oscar.errors import ConfigError
from oscar.evaluation import fid as fidlib
from oscar.evaluation.perceptual import PERCEPTUAL_NAMES, load_perceptual, unavailable_reason

log = logging.getLogger(__name__)

PER_IMAGE_METRICS = ("psnr", "ms_ssim", "colour_shift", "lpips_alex", "lpips_vgg", "dists")
DATASET_METRICS = ("fid", "kid", "fid_whole")
ALL_METRICS = PER_IMAGE_METRICS + DATASET_METRICS
DEFAULT_METRICS = (
    "psnr",
    "ms_ssim",
    "colour_shift",
    "lpips_alex",
    "lpips_vgg",
    "dists",
    "fid",
    "kid",
)
HIGHER_IS_BETTER = {"psnr": True, "ms_ssim": True}  # every other metric: lower is better
LABELS = {
    "psnr": "PSNR (dB)",
    "ms_ssim": "MS-SSIM",
    "colour_shift": "colour shift (largest channel-mean error, 8-bit levels)",
    "lpips_alex": "LPIPS-Alex",
    "lpips_vgg": "LPIPS-VGG",
    "dists": "DISTS",
    "fid": "FID (patches)",
    "kid": "KID (patches)",
    "fid_whole": "FID (whole images, original OSCAR protocol)",
}
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_WINDOW = 11


def higher_is_better(metric: str) -> bool:
    return HIGHER_IS_BETTER.get(metric, False)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def psnr(reference: np.ndarray, reconstruction: np.ndarray) -> float:
    """RGB PSNR in dB of two uint8 images (H, W, 3) (or (H, W)); +inf when identical."""
    a = _as_rgb(reference).astype(np.float64)
    b = _as_rgb(reconstruction).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def colour_shift(reference: np.ndarray, reconstruction: np.ndarray) -> float:
    """Largest |mean(original channel) − mean(reconstruction channel)| over R, G, B, in 8-bit
    levels (module docstring)."""
    a = _as_rgb(reference).reshape(-1, 3).astype(np.float64).mean(axis=0)
    b = _as_rgb(reconstruction).reshape(-1, 3).astype(np.float64).mean(axis=0)
    return float(np.abs(a - b).max())


def ms_ssim_scales(height: int, width: int) -> int:
    """Scales MS-SSIM can use on an image of this size (0: too small for even one)."""
    side = min(height, width)
    scales = 0
    for m in range(1, len(MS_SSIM_WEIGHTS) + 1):
        if side > (MS_SSIM_WINDOW - 1) * 2 ** (m - 1):
            scales = m
    return scales


def _gauss_window(size: int = MS_SSIM_WINDOW, sigma: float = 1.5) -> np.ndarray:
    """pytorch-msssim's own 1-D Gaussian window (float32 as it makes it; its rounding moves
    MS-SSIM by ~1e-7), used in float64."""
    from pytorch_msssim.ssim import _fspecial_gauss_1d  # lazy: optional (MS-SSIM only)

    return _fspecial_gauss_1d(size, sigma).double().numpy().ravel()


def _filter_valid(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of (C, H, W) along H then W (no padding, as pytorch-msssim)."""
    n = len(g)
    h, w = a.shape[1] - n + 1, a.shape[2] - n + 1
    out = sum(g[k] * a[:, k : k + h, :] for k in range(n))
    return sum(g[k] * out[:, :, k : k + w] for k in range(n))


def _ssim_cs(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean SSIM and contrast-structure term, (C,) each; data range 255."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = _filter_valid(x, g), _filter_valid(y, g)
    s11 = _filter_valid(x * x, g) - mu1**2
    s22 = _filter_valid(y * y, g) - mu2**2
    s12 = _filter_valid(x * y, g) - mu1 * mu2
    cs = (2 * s12 + c2) / (s11 + s22 + c2)
    ssim = (2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1) * cs
    return ssim.reshape(len(x), -1).mean(1), cs.reshape(len(x), -1).mean(1)


def _avg_pool2(a: np.ndarray) -> np.ndarray:
    """avg_pool2d(kernel 2, padding = size % 2, zeros counted), as pytorch-msssim pools."""
    ph, pw = a.shape[1] % 2, a.shape[2] % 2
    a = np.pad(a, ((0, 0), (ph, ph), (pw, pw)))
    h, w = a.shape[1] // 2, a.shape[2] // 2
    return a[:, : 2 * h, : 2 * w].reshape(len(a), h, 2, w, 2).mean(axis=(2, 4))


def ms_ssim(reference: np.ndarray, reconstruction: np.ndarray) -> tuple[float | None, int]:
    """(MS-SSIM, scales used) of two uint8 images; (None, 0) below 11 px.

    The definition of pytorch-msssim's ``ms_ssim`` (window, constants, pooling, ReLU on the
    terms, per-channel product then channel mean), computed in float64 with numpy: a test checks
    it equals ``pytorch_msssim.ms_ssim`` on float64 inputs. (On CPU this is ~10× faster than
    torch's grouped convolutions, and float64 avoids the ~1e-5 cancellation error of float32.)
    Images with a shorter side of 160 px or less use fewer scales (module docstring).
    """
    x = _as_rgb(reference).astype(np.float64).transpose(2, 0, 1)
    y = _as_rgb(reconstruction).astype(np.float64).transpose(2, 0, 1)
    scales = ms_ssim_scales(x.shape[1], x.shape[2])
    if scales == 0:
        return None, 0
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales])
    if scales < len(MS_SSIM_WEIGHTS):  # the standard five sum to 1.0001 and are used as they are
        weights = weights / weights.sum()
    g = _gauss_window()
    terms = []
    for i in range(scales):
        ssim, cs = _ssim_cs(x, y, g)
        if i < scales - 1:
            terms.append(np.maximum(cs, 0))
            x, y = _avg_pool2(x), _avg_pool2(y)
    terms.append(np.maximum(ssim, 0))
    per_channel = np.prod(np.stack(terms) ** weights[:, None], axis=0)
    return float(per_channel.mean()), scales


@dataclass
class FeatureSet:
    """Inception features of one group of images (originals, or one codec at one setting)."""

    patches: list[np.ndarray] = field(default_factory=list)
    whole: list[np.ndarray] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        """Features as float64 arrays (N, 2048): ``patches`` and ``whole``."""
        return {
            "patches": _stack(self.patches),
            "whole": _stack(self.whole),
        }


def _stack(chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(chunks).astype(np.float64) if chunks else np.zeros((0, 2048))


class MetricSuite:
    """The metrics asked for, with their networks loaded once.

    ``skipped`` maps each metric that cannot run to its one-line reason (missing weight file);
    ``active`` lists the metrics that run. Per-image metrics come from :meth:`image_metrics`,
    FID features from :meth:`features`, and the data-set metrics from :meth:`dataset_metrics`.
    """

    def __init__(
        self,
        names: tuple[str, ...] | list[str] = DEFAULT_METRICS,
        weights_dir: str | Path | None = None,
        device: torch.device | None = None,
        fid_patch: int = 256,
        fid_shifted: bool = True,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
    ) -> None:
        unknown = [n for n in names if n not in ALL_METRICS]
        if unknown:
            raise ConfigError(f"unknown metrics {unknown}; choose from {', '.join(ALL_METRICS)}")
        self.names = tuple(dict.fromkeys(names))
        self.device = device or torch.device("cpu")
        self.fid_patch = fid_patch
        self.fid_shifted = fid_shifted
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.skipped: dict[str, str] = {}
        self.nets: dict[str, torch.nn.Module] = {}
        for name in self.names:
            if name in PERCEPTUAL_NAMES:
                net = load_perceptual(name, weights_dir)
                if net is None:
                    self.skipped[name] = str(unavailable_reason(name, weights_dir))
                else:
                    self.nets[name] = net.to(self.device)
        self.inception: fidlib.FIDInceptionV3 | None = None
        if any(n in DATASET_METRICS for n in self.names):
            self.inception = fidlib.load_inception(weights_dir)
            if self.inception is None:
                reason = str(fidlib.inception_unavailable_reason(weights_dir))
                for n in self.names:
                    if n in DATASET_METRICS:
                        self.skipped[n] = reason
            else:
                self.inception.to(self.device)

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n not in self.skipped)

    @property
    def per_image(self) -> tuple[str, ...]:
        return tuple(n for n in self.active if n in PER_IMAGE_METRICS)

    @property
    def dataset(self) -> tuple[str, ...]:
        return tuple(n for n in self.active if n in DATASET_METRICS)

    def skip_lines(self) -> list[str]:
        """One line per distinct reason (LPIPS-VGG and DISTS may share a missing file)."""
        return list(dict.fromkeys(self.skipped.values()))

    @torch.inference_mode()
    def image_metrics(
        self, reference: np.ndarray, reconstruction: np.ndarray
    ) -> tuple[dict[str, float | None], list[str]]:
        """Per-image metrics and notes (e.g. MS-SSIM scales used, image too small)."""
        values: dict[str, float | None] = {}
        notes: list[str] = []
        ref, rec = _as_rgb(reference), _as_rgb(reconstruction)
        for name in self.per_image:
            if name == "psnr":
                values[name] = psnr(ref, rec)
            elif name == "colour_shift":
                values[name] = colour_shift(ref, rec)
            elif name == "ms_ssim":
                value, scales = ms_ssim(ref, rec)
                values[name] = value
                if scales < len(MS_SSIM_WEIGHTS):
                    notes.append(
                        f"ms_ssim on {scales} scale(s)" if scales else "ms_ssim: image < 11 px"
                    )
            else:
                x = _to_unit_tensor(rec, self.device)
                y = _to_unit_tensor(ref, self.device)
                try:
                    values[name] = float(self.nets[name](x, y)[0])
                except RuntimeError as exc:  # input smaller than the network's receptive field
                    values[name] = None
                    notes.append(f"{name}: image too small ({str(exc).splitlines()[0][:80]})")
        return values, notes

    def features(self, image: np.ndarray) -> FeatureSet:
        """Inception features of one image: its patches and (if asked) the whole image."""
        out = FeatureSet()
        if self.inception is None or not self.dataset:
            return out
        rgb = _as_rgb(image)
        if "fid" in self.dataset or "kid" in self.dataset:
            tiles = list(fidlib.iter_patches(rgb, self.fid_patch, self.fid_shifted))
            if tiles:
                out.patches.append(fidlib.inception_features(self.inception, tiles, self.device))
        if "fid_whole" in self.dataset:
            out.whole.append(fidlib.inception_features(self.inception, [rgb], self.device))
        return out

    def dataset_metrics(
        self, real: dict[str, np.ndarray], fake: dict[str, np.ndarray]
    ) -> tuple[dict[str, float | None], list[str]]:
        """FID / KID / whole-image FID of one group against the originals, with notes."""
        values: dict[str, float | None] = {}
        notes: list[str] = []
        for name in self.dataset:
            key = "whole" if name == "fid_whole" else "patches"
            a, b = real[key], fake[key]
            if min(len(a), len(b)) < 2:
                values[name] = None
                notes.append(f"{name}: {min(len(a), len(b))} sample(s), needs at least 2")
                continue
            if name == "kid":
                values[name] = fidlib.kernel_inception_distance(
                    a, b, self.kid_subsets, self.kid_subset_size
                )
            else:
                values[name] = fidlib.frechet_distance(a, b)
            notes.append(f"{name} on {len(b)} samples")
        return values, notes


def _to_unit_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (H, W, 3) → (1, 3, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1)[None]
    return (x.to(device, torch.float32) / 127.5) - 1.0
