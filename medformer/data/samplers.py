"""Samplers that re-weight the training set: a fresh weighted draw every epoch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import ConcatDataset, Sampler


class EpochWeightedSampler(Sampler[int]):
    """Draws len(dataset) indices per epoch with replacement, in proportion to `weights()`.

    The draw depends only on (seed, epoch), so every process and a resumed run see the same order
    (Accelerate shards the batches between processes).
    """

    def __init__(self, dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def weights(self) -> torch.Tensor:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        yield from torch.multinomial(self.weights(), len(self), replacement=True, generator=generator).tolist()


class DatasetBalancedSampler(EpochWeightedSampler):
    """Each part of a ConcatDataset (one per training dataset) drawn equally often, so a small
    dataset in a pool is not drowned by a large one."""

    dataset: ConcatDataset

    def weights(self) -> torch.Tensor:
        return torch.cat([torch.full((len(part),), 1.0 / len(part), dtype=torch.float64)
                          for part in self.dataset.datasets if len(part)])
