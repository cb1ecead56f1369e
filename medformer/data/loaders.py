"""Datasets and loaders for runs: seeded augmentation, label fractions, multi-dataset mixing."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from ..config import AugmentConfig, ConfigError, DataConfig
from .bank import ImageBank, keep_batch, use_bank
from .batch import collate
from .derived import DerivedDataset
from .dicom import DicomDataset, DicomIndex
from .domains import dataset_info
from .medmnist import DataError, MedMNISTDataset, stratified_fraction
from .samplers import DatasetBatchSampler
from .shards import ShardDataset, shard_parts
from .transforms import eval_transform, train_transform


class SeededTransform(Dataset):
    """Applies `transform` with an RNG seeded by (seed, epoch, dataset, index).

    Augmentations then do not depend on which process or worker loads a sample, nor on
    whether the run was resumed: 1-process, 2-process and resumed runs see the same views.
    """

    def __init__(self, base: Dataset, transform: Callable | None, seed: int):
        self.base = base
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self._salt = zlib.crc32(str(getattr(getattr(base, "info", None), "flag", "")).encode())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        if self.transform is not None:
            # torch.manual_seed/fork_rng cost ~1 ms each (stack capture); the generator is cheap
            generator = torch.default_generator
            saved = generator.get_state()
            generator.manual_seed(hash((self.seed, self.epoch, self._salt, i)) % 2**63)
            try:
                item["image"] = self.transform(item["image"])
            finally:
                generator.set_state(saved)
        return item


class EpochConcat(ConcatDataset):
    """ConcatDataset that forwards set_epoch to its parts (one shuffled index over all datasets)."""

    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)


def medmnist_split(
    data: DataConfig, flag: str, split: str, seed: int = 0, fraction: float = 1.0
) -> MedMNISTDataset | DerivedDataset:
    """One split of one MedMNIST dataset, optionally a stratified label fraction / size cap.

    A derived flag (medformer.data.derived) reads its source's file, subsets it the same way
    (stratified by the source's labels) and serves the derived targets."""
    info = dataset_info(flag)
    source = info.source or flag
    ds = MedMNISTDataset(source, split, size=data.size, root=data.root, download=data.download, verify_md5=data.verify_md5)
    if fraction < 1.0:
        ds = ds.subset(stratified_fraction(ds.labels, fraction, seed))
    if data.max_train_samples and split == "train":
        ds = ds.subset(range(min(len(ds), data.max_train_samples)))
    return DerivedDataset(ds, info) if info.source else ds


def train_dataset(
    data: DataConfig, make_transform: Callable[[str], Callable | None], seed: int
) -> EpochConcat:
    """Train splits of all configured datasets (then the 2D and 3D samples of `data.dicom_cache` and
    of each shard set in `data.shards`), each with its dim's transform, concatenated. Segmentation and regression parts are only
    normalized: the augmentations move pixels (masks) or change what is measured (foreground)."""
    shards = shard_parts(data.shards)
    in_shards = check_sharded_flags(data, shards)
    parts = []
    for flag in data.datasets:
        if flag in in_shards:
            continue
        info = dataset_info(flag)
        base = medmnist_split(data, flag, "train", seed=seed, fraction=data.label_fraction)
        transform = eval_transform() if info.is_dense else make_transform(info.dim)
        parts.append(SeededTransform(base, transform, seed))
    if data.dicom_cache:
        parts += [SeededTransform(base, make_transform(base.dim), seed) for base in dicom_parts(data.dicom_cache)]
    parts += [SeededTransform(base, make_transform(base.dim), seed) for base in shards]
    if not parts:
        raise ConfigError("no training data: set data.datasets (MedMNIST flags), data.dicom_cache and/or data.shards")
    return EpochConcat(parts)


def check_sharded_flags(data: DataConfig, shards: list[ShardDataset]) -> set[str]:
    """The datasets whose train split the shard sets hold. Their labeled rows train the heads of
    data.datasets, so each must be one of those, and label fractions cannot subset them."""
    sharded = {flag for part in shards if part.labeled for flag in part.datasets}
    if sharded and data.label_fraction < 1.0:
        raise ConfigError(f"data.label_fraction={data.label_fraction} cannot subset the shard sets' "
                          f"{', '.join(sorted(sharded))}: write shards of the subset, or use the npz files")
    stray = sorted(sharded - set(data.datasets)) if data.datasets else []
    if stray:
        raise ConfigError(f"data.shards hold labeled {stray[0]} images, but {stray[0]} is not in data.datasets "
                          f"({', '.join(data.datasets)}): add it, or leave data.datasets empty to pretrain on the shards")
    return sharded


def dicom_parts(cache_dir: str) -> list[Dataset]:
    """The 2D and 3D datasets of an ingested DICOM cache (the dims it holds)."""
    try:
        index = DicomIndex.load(cache_dir)
    except DataError:
        raise DataError(f"data.dicom_cache={cache_dir} is not an ingested DICOM cache: run `medformer pseudolabel` "
                        "with data.dicom_dir=<folder> and use its <output_dir>/dicom_cache") from None
    return [DicomDataset(cache_dir, dim) for dim in ("2d", "3d") if any(r.dim == dim for r in index.records)]


def train_loader(
    dataset: Dataset, batch_size: int, num_workers: int = 0, seed: int = 0, sampler: Sampler | None = None,
    by_dataset: ConcatDataset | None = None, num_processes: int = 1, collate_fn: Callable = collate,
) -> DataLoader:
    """Shuffled (seeded) unless a sampler is given; incomplete last batches dropped.

    With `by_dataset` (the concatenated training datasets that `dataset` indexes), every global
    batch over `num_processes` holds one dataset (DatasetBatchSampler, drawing from `sampler`).
    """
    common = dict(collate_fn=collate_fn, num_workers=num_workers, persistent_workers=False,
                  pin_memory=torch.cuda.is_available() and collate_fn is collate)
    if by_dataset is not None:
        batches = DatasetBatchSampler(by_dataset, batch_size, num_processes, seed, sampler)
        return DataLoader(dataset, batch_sampler=batches, **common)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True,
                      generator=generator, **common)


def train_batches(
    data: DataConfig, dataset: Dataset, parts: EpochConcat, batch_size: int, seed: int, sampler: Sampler | None,
    num_processes: int, device: torch.device, on_device: Callable[[dict], dict],
) -> tuple[DataLoader, Callable[[dict], dict] | None]:
    """The training loader, and the batch transform the Trainer applies on the device (or None).

    Where the training images fit in memory (data.augment_on, data.in_memory_gb) they are held there
    as an ImageBank and `on_device` augments each batch; else `dataset` (the per-sample path, with
    its transforms) streams through DataLoader workers. `dataset` is `parts` or wraps it
    (pseudo-labels, whose `labels` the bank then reads).
    """
    by_dataset = parts if data.batch_by_dataset else None
    if use_bank(data, parts):
        bank = ImageBank(parts, seed, device, pseudolabels=None if dataset is parts else dataset)
        return train_loader(bank, batch_size, 0, seed, sampler, by_dataset, num_processes, keep_batch), on_device
    return train_loader(dataset, batch_size, data.num_workers, seed, sampler, by_dataset, num_processes), None


def eval_loaders(
    data: DataConfig, split: str, batch_size: int, transform: Callable, flags: list[str] | None = None
) -> dict[str, DataLoader]:
    """One unshuffled loader per dataset for a split (per-task metrics)."""
    loaders = {}
    for flag in flags or data.datasets:
        ds = SeededTransform(medmnist_split(data, flag, split), transform, 0)
        loaders[flag] = DataLoader(
            ds, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=data.num_workers
        )
    return loaders


def augment_factory(augment: AugmentConfig) -> Callable[[str], Callable]:
    return lambda dim: train_transform(augment, dim)
