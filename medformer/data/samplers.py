"""Samplers of the training set: a fresh seeded draw every epoch, optionally batched by dataset."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

import torch
from torch.utils.data import ConcatDataset, Sampler

from ..errors import UserError


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

    def generator(self, salt: int = 0) -> torch.Generator:
        """This epoch's generator (another stream per `salt`)."""
        return torch.Generator().manual_seed(self.seed * 100_003 + self.epoch + salt)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        yield from torch.multinomial(self.weights(), len(self), replacement=True, generator=self.generator()).tolist()


class DatasetBalancedSampler(EpochWeightedSampler):
    """Each part of a ConcatDataset (one per training dataset) drawn equally often, so a small
    dataset in a pool is not drowned by a large one."""

    dataset: ConcatDataset

    def weights(self) -> torch.Tensor:
        return torch.cat([torch.full((len(part),), 1.0 / len(part), dtype=torch.float64)
                          for part in self.dataset.datasets if len(part)])


class EpochShuffleSampler(EpochWeightedSampler):
    """A seeded permutation of the dataset per epoch (each image once)."""

    def __iter__(self) -> Iterator[int]:
        yield from torch.randperm(len(self), generator=self.generator()).tolist()


class DatasetBatchSampler(Sampler[list[int]]):
    """Batches that each hold images of one part of a ConcatDataset (one training dataset).

    Per epoch, the order of `sampler` (a seeded permutation when None) is split by part, each
    part's list is cut into global batches of `batch_size * num_processes` (its last one completed
    from its start), the global batches are shuffled, and the usual len(sampler) // global size of
    them are kept. Each is yielded as `num_processes` consecutive per-process batches, which
    Accelerate deals out one per process: a global batch, and so synced BatchNorm statistics and
    gathered negatives, holds one dataset, and a 2-process run sees the global batches of a
    1-process run at twice the batch size.
    """

    drop_last = True  # read by Accelerate's batch sharding

    def __init__(self, parts: ConcatDataset, batch_size: int, num_processes: int = 1, seed: int = 0,
                 sampler: EpochWeightedSampler | None = None):
        if len(parts) < batch_size * num_processes:
            raise UserError(f"{len(parts)} training images are fewer than one global batch of "
                             f"{batch_size} x {num_processes} processes: lower train.batch_size")
        self.parts = parts
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.sampler = sampler or EpochShuffleSampler(parts, seed)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    @property
    def global_size(self) -> int:
        return self.batch_size * self.num_processes

    def __len__(self) -> int:
        return len(self.sampler) // self.global_size * self.num_processes

    def global_batches(self) -> list[list[int]]:
        """This epoch's global batches, each from one part."""
        by_part: list[list[int]] = [[] for _ in self.parts.cumulative_sizes]
        for i in self.sampler:
            by_part[bisect.bisect_right(self.parts.cumulative_sizes, i)].append(i)
        size = self.global_size
        batches = []
        for order in filter(None, by_part):
            padded = order * -(-size // len(order)) if len(order) < size else order
            padded = padded + padded[: -len(padded) % size]
            batches += [padded[k:k + size] for k in range(0, len(padded), size)]
        keep = torch.randperm(len(batches), generator=self.sampler.generator(salt=7))[: len(self.sampler) // size]
        return [batches[j] for j in keep.tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            for p in range(self.num_processes):
                yield batch[p * self.batch_size:(p + 1) * self.batch_size]
