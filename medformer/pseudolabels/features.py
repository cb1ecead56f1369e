"""Features for clustering: encoder embeddings, raw-pixel descriptors, and their concat fusion."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from ..config import ModelConfig
from ..data.batch import collate
from ..data.domains import DatasetInfo
from ..data.transforms import Normalize
from ..eval.probe import extract_features
from ..models.weights import load_encoder

log = logging.getLogger(__name__)

SCRATCH = ("scratch", "none", "")


def dataset_parts(dataset: Dataset) -> list[Dataset]:
    """The leaf datasets of Concat/Subset wrappers, in order."""
    if isinstance(dataset, ConcatDataset):
        return [leaf for d in dataset.datasets for leaf in dataset_parts(d)]
    if isinstance(dataset, Subset):
        return dataset_parts(dataset.dataset)
    return [dataset]


def dataset_domains(dataset: Dataset) -> tuple[list[DatasetInfo], list[tuple[str, str]]]:
    """Dataset infos (for heads and table latents) and extra per-item (modality, body part) pairs."""
    infos, domains = {}, []
    for part in dataset_parts(dataset):
        info = getattr(part, "info", None)
        if isinstance(info, DatasetInfo):
            infos[info.flag] = info
        domains.extend(getattr(part, "domains", []))
    return list(infos.values()), sorted(set(domains))


def _collate_for_encoding(samples: list[dict]) -> dict:
    """Items with [0, 1] images -> a batch normalized as in training (the eval transform)."""
    to_model = Normalize()
    samples = [
        {**{k: v for k, v in s.items() if k not in ("label", "task", "pseudolabel")}, "image": to_model(s["image"])}
        for s in samples
    ]
    return collate(samples)


def build_encoder(
    checkpoint: str | None,
    dataset: Dataset,
    model_name: str = "medformer_small",
    image_size: int = 28,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
) -> torch.nn.Module:
    """Model with the dataset's domains; checkpoint weights unless scratch (random init)."""
    infos, domains = dataset_domains(dataset)
    init = "scratch" if checkpoint is None or str(checkpoint).lower() in SCRATCH else str(checkpoint)
    model_cfg = ModelConfig(name=model_name, overrides=dict(overrides or {}))
    model, _ = load_encoder(init, model_cfg, infos, image_size, domains=domains, seed=seed)
    return model.eval()


@torch.no_grad()
def encoder_embeddings(
    checkpoint: str | None,
    dataset: Dataset,
    model_name: str = "medformer_small",
    batch_size: int = 256,
    image_size: int = 28,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """`model.encode` of every item, in dataset order: float32 [N, hidden]."""
    model = build_encoder(checkpoint, dataset, model_name, image_size, overrides, seed)
    return embed(model, dataset, batch_size)


def embed(model: torch.nn.Module, dataset: Dataset, batch_size: int = 256) -> np.ndarray:
    """`model.encode` (eval mode, on the model's device) of every [0, 1] item: float32 [N, hidden]."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate_for_encoding)
    return extract_features(model, loader)[0]


def _pixel_descriptor(image: torch.Tensor, side: int) -> torch.Tensor:
    """Gray thumbnail (3D: mean over depth) plus [is_3d, is_rgb] flags."""
    is_3d = image.ndim == 4
    gray = image.mean(0)
    if is_3d:
        gray = gray.mean(0)
    thumb = F.adaptive_avg_pool2d(gray[None, None], side).flatten()
    flags = torch.tensor([float(is_3d), float(image.shape[0] == 3 and not is_3d)])
    return torch.cat([thumb, flags])


def pixel_features(dataset: Dataset, side: int = 16) -> np.ndarray:
    """Raw-pixel baseline features: [N, side^2 + 2] thumbnails of every item."""
    rows: Iterable[torch.Tensor] = (_pixel_descriptor(dataset[i]["image"], side) for i in range(len(dataset)))
    return torch.stack(list(rows)).numpy().astype(np.float32)


def standardize(x: np.ndarray) -> np.ndarray:
    """Per column zero mean, unit variance (constant columns become 0)."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std(0)
    return ((x - x.mean(0)) / np.where(std > 0, std, 1.0)).astype(np.float32)


def fuse(parts: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray:
    """Concat fusion: standardize each part, weight it, concatenate.

    Each part is also divided by sqrt(its width) so that a 128-d embedding and a 20-column tag
    block carry the same total variance before weighting; otherwise width decides the mix.
    """
    if not parts:
        raise ValueError("fuse needs at least one feature block")
    weights = list(weights) if weights is not None else [1.0] * len(parts)
    if len(weights) != len(parts):
        raise ValueError(f"got {len(weights)} weights for {len(parts)} feature blocks")
    n = len(parts[0])
    blocks = []
    for part, weight in zip(parts, weights, strict=True):
        if len(part) != n:
            raise ValueError(f"feature blocks have different sample counts: {n} vs {len(part)}")
        if part.shape[1] == 0:
            continue
        blocks.append(standardize(part) * (weight / np.sqrt(part.shape[1])))
    return np.concatenate(blocks, axis=1).astype(np.float32)


def pca(x: np.ndarray, n_components: int, seed: int = 0) -> np.ndarray:
    """PCA projection to at most n_components (bounded by samples and features)."""
    from sklearn.decomposition import PCA

    k = max(1, min(n_components, x.shape[0], x.shape[1]))
    return PCA(n_components=k, random_state=seed).fit_transform(x).astype(np.float32)
