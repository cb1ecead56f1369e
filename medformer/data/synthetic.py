"""Synthetic npz files in the exact official MedMNIST format, with a signal a small model can learn.

Each class (or label) owns one cell of a regular grid over the image (or volume) and brightens it
above the noise: multi-class/binary brighten their class cell, multi-label every positive label's
cell, ordinal grade k the first k cells (more "lesion" for a higher grade).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from medformer.data.domains import (
    BINARY,
    CLASSIFICATION_TASKS,
    MULTI_LABEL,
    ORDINAL,
    DatasetInfo,
    dataset_info,
    register_dataset,
)
from medformer.data.medmnist import (
    SPLITS,
    DataError,
    expected_image_shape,
    npz_filename,
)

_BACKGROUND, _NOISE, _SIGNAL = 60.0, 20.0, 120.0


def synthetic_info(
    flag: str,
    dim: str,
    task: str,
    n_classes: int,
    n_channels: int,
    modality: str = "synthetic",
    body_part: str = "phantom",
) -> DatasetInfo:
    """Declare (register) and return a custom dataset for synthetic files."""
    if task not in CLASSIFICATION_TASKS:
        raise DataError(f"unknown task type {task!r}; use one of {', '.join(CLASSIFICATION_TASKS)}")
    if dim not in ("2d", "3d"):
        raise DataError(f"dim must be '2d' or '3d', got {dim!r}")
    if n_classes < 2 or (task == BINARY and n_classes != 2):
        raise DataError(f"{task} needs n_classes >= 2 (exactly 2 for binary), got {n_classes}")
    allowed = (1,) if dim == "3d" else (1, 3)
    if n_channels not in allowed:
        raise DataError(f"{dim} MedMNIST-format images have {allowed} channel(s), got {n_channels}")
    info = DatasetInfo(flag, dim, modality, body_part, task, n_classes, n_channels)
    register_dataset(info)
    return info


def _region_masks(n_regions: int, spatial: tuple[int, ...]) -> np.ndarray:
    """[n_regions, *spatial] bool: one disjoint grid cell per region."""
    cells = math.ceil(n_regions ** (1 / len(spatial)) - 1e-9)
    side = spatial[0] // cells
    masks = np.zeros((n_regions, *spatial), dtype=bool)
    for r in range(n_regions):
        coords = np.unravel_index(r, (cells,) * len(spatial))
        masks[(r, *(slice(c * side, (c + 1) * side) for c in coords))] = True
    return masks


def _labels(info: DatasetInfo, n: int, rng: np.random.Generator) -> np.ndarray:
    """Official-format labels [n, L] uint8; every class (label) appears when n allows."""
    k = info.n_classes
    if info.task == MULTI_LABEL:
        labels = (rng.random((n, k)) < 0.3).astype(np.uint8)
        labels[np.arange(k) % n, np.arange(k)] = 1
        return labels
    return rng.permutation(np.arange(n) % k).astype(np.uint8)[:, None]


def _region_strength(info: DatasetInfo, labels: np.ndarray) -> np.ndarray:
    """[n, n_classes] 0/1: which regions each sample brightens."""
    k = info.n_classes
    if info.task == MULTI_LABEL:
        return labels.astype(np.float32)
    grade = labels[:, 0].astype(np.int64)
    if info.task == ORDINAL:
        return (np.arange(k)[None, :] < grade[:, None]).astype(np.float32)
    return np.eye(k, dtype=np.float32)[grade]


def _images(
    info: DatasetInfo, size: int, labels: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    shape = expected_image_shape(info, size)
    spatial = shape[:3] if info.dim == "3d" else shape[:2]
    n = len(labels)
    images = rng.normal(_BACKGROUND, _NOISE, size=(n, *shape)).astype(np.float32)
    strength = _region_strength(info, labels)
    masks = _region_masks(info.n_classes, spatial)
    for r, mask in enumerate(masks):
        amount = strength[:, r].reshape(n, *([1] * len(spatial)))
        bright = _SIGNAL * amount * mask
        images += bright if len(shape) == len(spatial) else bright[..., None]
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def write_synthetic_npz(
    root: str | os.PathLike,
    flag: str,
    size: int = 28,
    n: tuple[int, int, int] = (64, 16, 16),
    seed: int = 0,
    info: DatasetInfo | None = None,
) -> Path:
    """Write `{root}/{npz_filename(flag, size)}` with train/val/test splits of n samples each.

    Files under a real MedMNIST flag do not match the official md5: load them with
    verify_md5=False.
    """
    if info is not None:
        if info.flag != flag:
            raise DataError(
                f"info.flag {info.flag!r} differs from flag {flag!r}; pass the same name"
            )
        register_dataset(info)
    else:
        try:
            info = dataset_info(flag)
        except ValueError as err:
            raise DataError(str(err)) from None
    path = Path(root) / npz_filename(flag, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(SPLITS, n, strict=True):
        labels = _labels(info, count, rng)
        arrays[f"{split}_images"] = _images(info, size, labels, rng)
        arrays[f"{split}_labels"] = labels
    np.savez_compressed(path, **arrays)
    return path
