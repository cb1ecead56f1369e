"""Segmentation and regression tasks derived from a dataset's own images (no extra annotation).

A derived dataset reads the images of its `source` (a MedMNIST or registered same-format dataset)
and measures its targets from them: the foreground mask is the image, smoothed by a Gaussian of
`sigma` pixels, above a fixed intensity `threshold` (in [0, 1]); the regression target is that
foreground's share of the image in percent. They give real images a dense and a continuous task
whose truth is known exactly, for tests and for comparing heads.

Registered here: `breastmnist_seg` / `breastmnist_fgarea` (2D ultrasound, threshold 0.4 after
smoothing: 37% foreground on average, sd 17%), `adrenalmnist3d_seg` / `adrenalmnist3d_fgvolume`
(3D, the gland's shape: 1.6% of the volume). `register_derived` adds more (tests use it on
synthetic files).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .domains import REGRESSION, SEGMENTATION, DatasetInfo, dataset_info, register_dataset


@dataclass(frozen=True)
class Derivation:
    """How a derived dataset's targets come from its source's images."""

    threshold: float = 0.4  # foreground: smoothed intensity (0-1) above this
    sigma: float = 1.0  # Gaussian smoothing in pixels before thresholding (0: none)


_DERIVATIONS: dict[str, Derivation] = {}


def register_derived(flag: str, source: str, task: str, derivation: Derivation = Derivation()) -> DatasetInfo:
    """Declare `flag`: a segmentation (2 classes: background, foreground) or regression (foreground
    percent) task on the images of `source`, in its domain."""
    if task not in (SEGMENTATION, REGRESSION):
        raise ValueError(f"derived tasks are {SEGMENTATION} or {REGRESSION}, got {task!r}")
    src = dataset_info(source)
    info = DatasetInfo(flag, src.dim, src.modality, src.body_part, task, 2 if task == SEGMENTATION else 1,
                       src.n_channels, source=source)
    register_dataset(info)
    _DERIVATIONS[flag] = derivation
    return info


def derivation(flag: str) -> Derivation:
    return _DERIVATIONS[flag]


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def smooth(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [N, *spatial] float images (2D or 3D), edges replicated."""
    if sigma <= 0:
        return images
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    x = images[:, None]
    spatial = images.ndim - 1
    conv = F.conv2d if spatial == 2 else F.conv3d
    for axis in range(spatial):
        shape = [1, 1] + [1] * spatial
        shape[2 + axis] = len(k)
        pad = [0, 0] * spatial
        pad[2 * (spatial - 1 - axis)] = pad[2 * (spatial - 1 - axis) + 1] = r
        x = conv(F.pad(x, pad, mode="replicate"), k.reshape(shape))
    return x[:, 0]


def foreground(images: np.ndarray, info: DatasetInfo, how: Derivation) -> torch.Tensor:
    """Masks [N, *spatial] (long 0/1) of uint8 images in the official layout (RGB: channel mean)."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32)) / 255.0
    if info.dim == "2d" and x.ndim == 4:
        x = x.mean(-1)
    return (smooth(x, how.sigma) > how.threshold).long()


def targets_of(images: np.ndarray, info: DatasetInfo) -> torch.Tensor:
    """Masks [N, *spatial] for segmentation; foreground percent [N] (float) for regression."""
    masks = foreground(images, info, derivation(info.flag))
    if info.task == SEGMENTATION:
        return masks
    return masks.flatten(1).float().mean(1) * 100.0


class DerivedDataset(Dataset):
    """A source dataset's items with the derived task's targets as labels."""

    def __init__(self, base: Any, info: DatasetInfo):
        self.base = base  # a MedMNISTDataset (or a subset view of one) of info.source
        self.info = info
        self.flag = info.flag
        self.targets = targets_of(base.images[base.indices], info)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        item["label"] = self.targets[i]
        item["dataset"] = self.info.flag
        return item


def regression_stats(datasets: list[Dataset]) -> dict[str, tuple[float, float]]:
    """{flag: (mean, sd)} of the training targets of each regression part (sd 1 when constant)."""
    out = {}
    for part in datasets:
        base = getattr(part, "base", part)
        if isinstance(base, DerivedDataset) and base.info.task == REGRESSION:
            t = base.targets.double()
            sd = float(t.std()) if len(t) > 1 else 0.0
            out[base.info.flag] = (float(t.mean()), sd if sd > 0 else 1.0)
    return out


register_derived("breastmnist_seg", "breastmnist", SEGMENTATION)
register_derived("breastmnist_fgarea", "breastmnist", REGRESSION)
register_derived("adrenalmnist3d_seg", "adrenalmnist3d", SEGMENTATION, Derivation(threshold=0.5, sigma=0.0))
register_derived("adrenalmnist3d_fgvolume", "adrenalmnist3d", REGRESSION, Derivation(threshold=0.5, sigma=0.0))
