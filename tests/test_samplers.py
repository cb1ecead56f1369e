"""Dataset-balanced sampling of a pool of training datasets."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import ConcatDataset, TensorDataset

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
