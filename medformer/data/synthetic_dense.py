"""Synthetic data for the dense/continuous downstream tasks (segmentation, regression with aux inputs).

Images are noisy backgrounds with bright disks; segmentation masks mark the disks, and the
regression target (a stand-in for bone age) grows with the disk area and shifts with a binary
auxiliary input (a stand-in for sex), so a model must use both to fit it.
"""

from __future__ import annotations

import numpy as np
import torch

from .batch import Inputs, make_inputs


def _disks(n: int, size: int, rng: np.random.Generator, max_disks: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks [n, size, size] bool and the radius of the first disk [n]."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=bool)
    radius = rng.uniform(size * 0.1, size * 0.3, n)
    for i in range(n):
        for j in range(rng.integers(1, max_disks + 1)):
            r = radius[i] if j == 0 else rng.uniform(size * 0.08, size * 0.2)
            cy, cx = rng.uniform(r, size - r, 2)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    return masks, radius


def _images(masks: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Normalized [n, 1, H, W] images: disks brighter than a noisy background."""
    img = 0.3 + 0.4 * masks + rng.normal(0, 0.12, masks.shape)
    return torch.from_numpy(((img - 0.5) / 0.5)[:, None]).float()


def synthetic_segmentation(n: int, size: int = 28, seed: int = 0, max_disks: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [n, 1, size, size] and binary masks [n, size, size] (long)."""
    rng = np.random.default_rng(seed)
    masks, _ = _disks(n, size, rng, max_disks)
    return _images(masks, rng), torch.from_numpy(masks.astype(np.int64))


def synthetic_regression(n: int, size: int = 28, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images [n, 1, size, size], aux [n, 1] in {0, 1}, targets [n]: scaled disk area + 1.0 * aux."""
    rng = np.random.default_rng(seed)
    masks, _ = _disks(n, size, rng, max_disks=1)
    aux = rng.integers(0, 2, n).astype(np.float32)
    area = masks.reshape(n, -1).mean(1)
    target = (area - area.mean()) / (area.std() + 1e-8) + 1.0 * (aux - 0.5)
    return _images(masks, rng), torch.from_numpy(aux[:, None]), torch.from_numpy(target.astype(np.float32))


def dense_inputs(images: torch.Tensor, flag: str, aux: torch.Tensor | None = None) -> Inputs:
    """Inputs of one registered dataset `flag` (its domain) for a stacked image batch."""
    inputs = make_inputs(list(images), [flag] * len(images))
    if aux is not None:
        inputs.extra["aux"] = aux
    return inputs
