"""Sampling a pool of training datasets: balanced draws, and batches of one dataset each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate.data_loader import prepare_data_loader, skip_first_batches
from torch.utils.data import ConcatDataset, TensorDataset

from medformer.data.loaders import train_loader
from medformer.data.samplers import DatasetBalancedSampler


def test_each_dataset_is_drawn_equally_often_and_the_draw_is_seeded_per_epoch():
    sizes = [4708, 546, 1080]  # pneumonia, breast, retina train splits: 86/10/20 % of a plain shuffle
    pool = ConcatDataset([TensorDataset(torch.zeros(n)) for n in sizes])
    sampler = DatasetBalancedSampler(pool, seed=0)
    first = list(sampler)
    assert len(first) == sum(sizes)
    part = np.searchsorted(np.cumsum(sizes), first, side="right")
    share = np.bincount(part, minlength=3) / len(first)
    assert np.allclose(share, 1 / 3, atol=0.02), share
    small = np.array(first)[part == 1] - sizes[0]
    assert len(np.unique(small)) > 0.95 * sizes[1]  # the small set is cycled through, not a few images repeated
    assert list(sampler) == first  # a pure function of (seed, epoch): the same on every process and on resume
    sampler.set_epoch(1)
    assert list(sampler) != first


def _indexed_pool(sizes: list[int]) -> ConcatDataset:
    """Parts whose items are {"index": global index, "dataset": part name, "image": tensor}."""
    offsets = np.concatenate([[0], np.cumsum(sizes)])

    class Part(torch.utils.data.Dataset):
        def __init__(self, k: int):
            self.k = k

        def __len__(self) -> int:
            return sizes[self.k]

        def __getitem__(self, i: int) -> dict:
            return {"index": int(offsets[self.k] + i), "dataset": "pneumoniamnist", "image": torch.zeros(1, 2, 2)}

    return ConcatDataset([Part(k) for k in range(len(sizes))])


def _epoch(loader, epoch: int) -> list[list[int]]:
    loader.set_epoch(epoch)
    return [batch["index"].tolist() for batch in loader]


@pytest.mark.parametrize("balanced", [False, True])
def test_batches_by_dataset_hold_one_dataset_and_two_processes_see_the_global_batches_of_one(balanced):
    """Accelerate's sharding of the loader for process 0 and 1 of 2 (no process group needed)."""
    sizes = [300, 45, 90]
    pool = _indexed_pool(sizes)
    part_of = lambda i: int(np.searchsorted(np.cumsum(sizes), i, side="right"))  # noqa: E731

    def loader(batch_size: int, processes: int):
        sampler = DatasetBalancedSampler(pool, seed=5) if balanced else None
        return train_loader(pool, batch_size, seed=5, sampler=sampler, by_dataset=pool, num_processes=processes)

    one = prepare_data_loader(loader(16, 1), put_on_device=False, use_seedable_sampler=True)
    shards = [prepare_data_loader(loader(8, 2), num_processes=2, process_index=p, put_on_device=False,
                                  use_seedable_sampler=True) for p in (0, 1)]
    for epoch in (0, 1):
        global_batches = _epoch(one, epoch)
        assert len(global_batches) == len(one) == sum(sizes) // 16
        per_process = [_epoch(shard, epoch) for shard in shards]
        assert [a + b for a, b in zip(*per_process, strict=True)] == global_batches
        for batch in global_batches:
            assert len({part_of(i) for i in batch}) == 1  # one dataset per global batch
        parts = [part_of(b[0]) for b in global_batches]
        assert set(parts) == {0, 1, 2}
        if not balanced:  # each image once: parts in proportion to their size
            assert parts.count(0) >= 2 * parts.count(2) > 0
            seen = [i for b in global_batches for i in b]  # repeats only where a dataset's last batch is completed
            assert len(seen) - len(set(seen)) < len(sizes) * 16
    assert _epoch(one, 0) != _epoch(one, 1)


def test_batches_by_dataset_resume_mid_epoch():
    pool = _indexed_pool([120, 40])
    loader = prepare_data_loader(train_loader(pool, 8, seed=1, by_dataset=pool), put_on_device=False,
                                 use_seedable_sampler=True)
    full = _epoch(loader, 3)
    loader.set_epoch(3)
    rest = [b["index"].tolist() for b in skip_first_batches(loader, 5)]
    assert rest == full[5:]


def test_batches_by_dataset_refuse_a_pool_smaller_than_one_global_batch():
    pool = _indexed_pool([5, 6])
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train_loader(pool, 8, by_dataset=pool, num_processes=2)
