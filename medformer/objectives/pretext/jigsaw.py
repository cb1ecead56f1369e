"""Jigsaw puzzles (Noroozi & Favaro 2016): which permutation of a fixed set shuffled the tiles
(grid x grid tiles of an image, grid^3 sub-volumes of a volume)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import Tensor, nn

from ...config.pretrain import JigsawConfig
from .base import TransformPrediction, classifier
from .tiles import gather_rows, merge_tiles, split_tiles

PERMUTATION_SEED = 2016  # the permutation set is part of the task: the same in every run


def permutation_set(n_tiles: int, n: int, seed: int = PERMUTATION_SEED) -> np.ndarray:
    """[min(n, n_tiles!), n_tiles]: every permutation when there are at most n, else n chosen
    greedily for the largest minimum Hamming distance among random candidates (Noroozi's recipe)."""
    if math.factorial(n_tiles) <= n:
        return np.array(list(itertools.permutations(range(n_tiles))))
    rng = np.random.default_rng(seed)
    candidates = np.stack([rng.permutation(n_tiles) for _ in range(max(1000, 20 * n))])
    chosen = [0]
    distance = (candidates != candidates[0]).sum(1)
    for _ in range(n - 1):
        best = int(distance.argmax())
        chosen.append(best)
        distance = np.minimum(distance, (candidates != candidates[best]).sum(1))
    return candidates[chosen]


class JigsawPuzzle(TransformPrediction):
    name = "jigsaw"
    loss_name = "jigsaw/ce"

    def __init__(self, cfg: JigsawConfig, model: nn.Module):
        super().__init__()
        width = int(model.embed_dim)
        self.grid = cfg.grid
        for dim, n_dims in (("2d", 2), ("3d", 3)):
            perms = torch.from_numpy(permutation_set(cfg.grid**n_dims, cfg.n_permutations))
            self.register_buffer(f"perms_{dim}", perms, persistent=False)
        self.heads = nn.ModuleDict({dim: classifier(width, cfg.head_hidden_dim or width, len(self.permutations(dim)))
                                    for dim in ("2d", "3d")})

    def permutations(self, dim: str) -> Tensor:
        return getattr(self, f"perms_{dim}")

    def n_classes(self, dim: str) -> int:
        return len(self.permutations(dim))

    def transform(self, dim: str, images: Tensor, labels: Tensor) -> Tensor:
        if images.shape[-1] % self.grid:
            raise ValueError(f"pretext.jigsaw.grid={self.grid} does not divide the image side {images.shape[-1]}")
        order = self.permutations(dim).to(images.device)[labels]
        return merge_tiles(gather_rows(split_tiles(images, self.grid), order), self.grid)
