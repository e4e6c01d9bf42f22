"""FID and KID: the FID Inception network, patch extraction, and the two distances.

Protocol (the usual one for generative compression, HiFiC / MS-ILLM style): every image, original
and reconstruction alike, is cut into non-overlapping ``patch`` × ``patch`` tiles, and again on a
grid shifted by ``patch / 2`` in both directions; each tile is resized to 299×299 (bilinear) and
mapped to the 2048-d pool3 features of the FID Inception network; FID compares the Gaussian fits
of the original and the reconstructed tiles of the whole data set. Images smaller than a tile
contribute none. ``whole=True`` is the original OSCAR release's protocol instead: one feature
per whole image (resized to 299×299), labelled ``fid_whole``: with a few dozen images its
covariance is rank-deficient, so it is reported only for comparison with that release.

KID is the unbiased squared MMD with the cubic polynomial kernel k(x, y) = (x·y / d + 1)³,
averaged over random subsets (seeded, so runs repeat).

The network is :class:`FIDInceptionV3`, written here without torchvision with the module names
of torchvision's ``Inception3`` and pytorch-fid's FID patches (``count_include_pad=False``
average pooling, max pooling in the last block), so ``pt_inception-2015-12-05-6726825d.pth``
loads as is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from oscar.evaluation.weights import find_weight, load_into, load_state_dict, missing_message


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool ignores the zero padding (pytorch-fid's patch)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b1, b5, b3, self.branch_pool(_avg3(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            bd = layer(bd)
        bd = self.branch7x7dbl_5(bd)
        return torch.cat([b1, b7, bd, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """``max_pool=False``: pytorch-fid's FIDInceptionE_1; ``True``: FIDInceptionE_2."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        # the FID network max-pools in its last block (pytorch-fid's FIDInceptionE_2)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception network: (B, 3, H, W) in [0, 1] → (B, 2048) pool3 features.

    Inputs are resized to 299×299 (bilinear, no corner alignment) and scaled to [-1, 1], as
    pytorch-fid does. Module names follow torchvision's Inception3; the classifier ``fc`` of the
    weight file is not used.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x01, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def inception_unavailable_reason(weights_dir: str | Path | None = None) -> str | None:
    if find_weight("inception", weights_dir) is not None:
        return None
    return missing_message("FID/KID", ["inception"], weights_dir)


def load_inception(weights_dir: str | Path | None = None) -> FIDInceptionV3 | None:
    """The FID Inception network with pytorch-fid's weights (eval mode), or None if missing."""
    path = find_weight("inception", weights_dir)
    if path is None:
        return None
    model = FIDInceptionV3()
    load_into(model, load_state_dict(path), path)
    return model.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- patches
def patch_boxes(height: int, width: int, patch: int, shifted: bool = True) -> list[tuple[int, int]]:
    """Top-left corners of the ``patch``-sized tiles: the grid, then the grid shifted by p/2."""
    boxes = [
        (y, x)
        for y in range(0, height - patch + 1, patch)
        for x in range(0, width - patch + 1, patch)
    ]
    if shifted:
        half = patch // 2
        boxes += [
            (y, x)
            for y in range(half, height - patch + 1, patch)
            for x in range(half, width - patch + 1, patch)
        ]
    return boxes


def iter_patches(rgb: np.ndarray, patch: int, shifted: bool = True) -> Iterator[np.ndarray]:
    for y, x in patch_boxes(rgb.shape[0], rgb.shape[1], patch, shifted):
        yield rgb[y : y + patch, x : x + patch]


@torch.inference_mode()
def inception_features(
    model: FIDInceptionV3, images: list[np.ndarray], device: torch.device, batch: int = 16
) -> np.ndarray:
    """(N, 2048) float32 features of uint8 (H, W, 3) images (all the same size per batch)."""
    out = []
    for start in range(0, len(images), batch):
        chunk = np.stack(images[start : start + batch])
        x = torch.from_numpy(chunk).permute(0, 3, 1, 2).to(device, torch.float32) / 255.0
        out.append(model(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2048), np.float32)


# ----------------------------------------------------------------------------- distances
def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets (N, d) and (M, d); N, M ≥ 2.

    ||μ_a − μ_b||² + tr Σ_a + tr Σ_b − 2 tr (Σ_a Σ_b)^½. The last trace is the sum of the square
    roots of the eigenvalues of Σ_a Σ_b (similar to a positive semi-definite matrix), computed
    exactly without a d×d matrix square root: from the singular values of the N×M matrix
    A Bᵀ / √((N−1)(M−1)) (A, B centred features) when there are fewer samples than dimensions,
    else from the eigenvalues of Σ_a^½ Σ_b Σ_a^½. Same value as pytorch-fid's ``sqrtm`` route
    up to rounding, and fast for the few hundred patches of Kodak.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    n, m, d = len(a), len(b), a.shape[1]
    mu1, mu2 = a.mean(0), b.mean(0)
    ac, bc = a - mu1, b - mu2
    trace1 = float((ac**2).sum() / (n - 1))
    trace2 = float((bc**2).sum() / (m - 1))
    if min(n, m) <= d:
        k = ac @ bc.T / np.sqrt((n - 1) * (m - 1))
        trace_sqrt = float(np.linalg.svd(k, compute_uv=False).sum())
    else:
        s1 = ac.T @ ac / (n - 1)
        s2 = bc.T @ bc / (m - 1)
        w, v = np.linalg.eigh(s1)
        root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
        trace_sqrt = float(np.sqrt(np.clip(inner, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + trace1 + trace2 - 2 * trace_sqrt)


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> float:
    """KID: unbiased MMD² with the kernel (x·y/d + 1)³, mean over random subsets."""
    n = min(len(a), len(b), subset_size)
    if n < 2:
        raise ValueError("KID needs at least 2 samples per set")
    rng = np.random.default_rng(seed)
    d = a.shape[1]
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), n, replace=False)]
        y = b[rng.choice(len(b), n, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = (
            (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
            + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * kxy.mean()
        )
        values.append(mmd)
    return float(np.mean(values))
