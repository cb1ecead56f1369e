"""Training sets held in memory as uint8 tensors: batches gathered by index, augmented on their device.

`ImageBank` replaces the per-sample path (SeededTransform items, `collate`) for training sets that
fit in memory: the DataLoader hands it a whole batch of indices (`__getitems__`), it gathers the
uint8 images with one index per part, and `DeviceAugment` turns them into model inputs after they
reach the device (the batched transforms, with each sample's seed from (seed, epoch, part, row)).
Positions are those of the EpochConcat it was built from, so samplers, pseudo-labels and class
weights index it alike.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from ..config import ConfigError, DataConfig
from .batch import Inputs
from .dicom import DicomDataset
from .domains import MULTI_LABEL
from .medmnist import MedMNISTDataset
from .transforms.batched import as_unit_float
from .transforms.primitives import normalize
from .transforms.sample_random import SampleRandom, sample_seeds

logger = logging.getLogger(__name__)

BatchTransform = Callable[[Tensor, SampleRandom], Tensor]


@dataclass
class _Part:
    """One training dataset: images [N, C, ...] uint8, its labels and per-sample domains."""

    flag: str
    dim: str
    salt: int
    images: Tensor
    channels: Tensor | None  # per-sample channel count where a part mixes gray and RGB (DICOM)
    labels: Tensor | None  # long [N] or float [N, L] (multi-label)
    index: np.ndarray  # each sample's index in its source (the items' "index")
    modality: np.ndarray | str  # one per sample (DICOM) or one for the part
    body_part: np.ndarray | str
    task: str

    def domains(self, local: np.ndarray) -> dict[str, np.ndarray | str]:
        """Each batch row's metadata for the samples at `local` (a str broadcasts)."""
        pick = lambda v: v if isinstance(v, str) else v[local]  # noqa: E731
        return {"dim": self.dim, "dataset": self.flag, "task": self.task,
                "modality": pick(self.modality), "body_part": pick(self.body_part)}


def _medmnist_part(base: MedMNISTDataset, device: torch.device) -> _Part:
    images = torch.from_numpy(np.ascontiguousarray(base.images[base.indices]))
    if base.info.dim == "2d":
        images = images.permute(0, 3, 1, 2) if images.ndim == 4 else images[:, None]
    else:
        images = images[:, None]
    labels = torch.as_tensor(np.asarray(base.labels))
    labels = labels.float() if base.info.task == MULTI_LABEL else labels.reshape(len(labels), -1)[:, 0].long()
    info = base.info
    return _Part(info.flag, info.dim, _salt(info.flag), images.contiguous().to(device), None, labels.to(device),
                 base.indices.copy(), info.modality, info.body_part, info.flag)


def _dicom_part(base: DicomDataset, device: torch.device) -> _Part:
    rows = np.array([r.array_index for r in base.records], dtype=np.int64)
    images = torch.from_numpy(np.ascontiguousarray(base.images[rows]))
    images = images.permute(0, 3, 1, 2) if base.dim == "2d" else images[:, None]
    channels = torch.tensor([r.channels for r in base.records]) if base.dim == "2d" else None
    labels = None if base.labels is None else torch.as_tensor(base.labels).long().to(device)
    return _Part(base.info.flag, base.dim, _salt(base.info.flag), images.contiguous().to(device), channels, labels,
                 base.sample_indices.copy(), np.array([r.modality for r in base.records], dtype=object),
                 np.array([r.body_part for r in base.records], dtype=object), base.task)


def _salt(flag: str) -> int:
    return zlib.crc32(flag.encode())


def bank_bytes(parts: Sequence[Dataset]) -> int | None:
    """uint8 bytes the parts' images take in memory; None if a part cannot be held (not MedMNIST or DICOM)."""
    total = 0
    for part in parts:
        base = getattr(part, "base", part)
        if not isinstance(base, (MedMNISTDataset, DicomDataset)):
            return None
        total += len(base) * int(np.prod(base.images.shape[1:]))
    return total


class ImageBank(Dataset):
    """The training set of an EpochConcat in memory; `__getitems__` returns a whole batch."""

    def __init__(self, concat: ConcatDataset, seed: int, device: torch.device | str = "cpu",
                 pseudolabels: object | None = None):
        self.parts: list[_Part] = []
        for part in concat.datasets:
            base = getattr(part, "base", part)
            make = _medmnist_part if isinstance(base, MedMNISTDataset) else _dicom_part
            self.parts.append(make(base, torch.device(device)))
        self.cumulative = np.cumsum([0] + [len(p.images) for p in self.parts])
        self.seed = seed
        self.epoch = 0
        self.pseudolabels = pseudolabels  # an object whose .labels (by position) may change between epochs

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.cumulative[-1])

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])

    def __getitems__(self, positions: Sequence[int]) -> dict:
        pos = np.asarray(positions, dtype=np.int64)
        which = np.searchsorted(self.cumulative, pos, side="right") - 1
        n = len(pos)
        meta = {key: np.empty(n, dtype=object) for key in ("dim", "dataset", "task", "modality", "body_part")}
        groups: dict[tuple, list] = {}
        labels: dict[str, list[tuple[np.ndarray, Tensor]]] = {}
        index = np.zeros(n, dtype=np.int64)
        for k in np.unique(which):
            part = self.parts[k]
            batch_rows = np.nonzero(which == k)[0]
            local = pos[batch_rows] - self.cumulative[k]
            local_t = torch.from_numpy(local).to(part.images.device)
            seeds = sample_seeds(self.seed, self.epoch, part.salt, local_t)
            rows = torch.from_numpy(batch_rows).to(part.images.device)
            for sel, imgs in _by_channels(part, local, part.images[local_t]):
                groups.setdefault((part.dim, *imgs.shape[1:]), []).append((imgs, rows[sel], seeds[sel]))
            index[batch_rows] = part.index[local]
            for key, values in part.domains(local).items():
                meta[key][batch_rows] = values
            if part.labels is not None:
                labels.setdefault(part.task, []).append((batch_rows, part.labels[local_t]))
        raw = RawImages([(d[0], *map(torch.cat, zip(*g, strict=True))) for d, g in groups.items()],
                        *(meta[key].tolist() for key in ("dim", "modality", "body_part", "task")))
        datasets = meta["dataset"].tolist()
        batch = {"raw": raw, "index": torch.from_numpy(index), "dataset": datasets}
        if labels and sum(len(r) for parts in labels.values() for r, _ in parts) == n:
            batch["targets"] = _targets(labels)
        if self.pseudolabels is not None:
            batch["pseudolabels"] = torch.as_tensor(np.asarray(self.pseudolabels.labels)[pos], dtype=torch.long)
        return batch


def _by_channels(part: _Part, local: np.ndarray, images: Tensor):
    """(selection, images) per channel count: DICOM 2D parts mix gray and RGB samples."""
    if part.channels is None:
        return [(slice(None), images)]
    ch = part.channels[torch.from_numpy(local)]
    out = []
    for c in torch.unique(ch).tolist():
        sel = (ch == c).nonzero()[:, 0].to(images.device)
        out.append((sel, images[sel][:, :c]))
    return out


def _targets(labels: dict[str, list[tuple[np.ndarray, Tensor]]]) -> dict[str, Tensor]:
    """{task: labels of its rows in ascending batch order} (collate's layout)."""
    out = {}
    for t, parts in labels.items():
        rows = np.concatenate([r for r, _ in parts])
        values = torch.cat([v for _, v in parts])
        out[t] = values[torch.from_numpy(np.argsort(rows, kind="stable")).to(values.device)]
    return out


def keep_batch(batch: dict) -> dict:
    """The DataLoader's collate_fn for an ImageBank: `__getitems__` already made the batch."""
    return batch


@dataclass
class RawImages:
    """A batch's uint8 images by shape group (images, batch rows, per-sample seeds), before augmentation."""

    groups: list[tuple[str, Tensor, Tensor, Tensor]]  # (dim, images [b, C, ...], rows [b], seeds [b])
    dim: list[str]
    modality: list[str]
    body_part: list[str]
    task: list[str]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RawImages:
        """Moved copy (Accelerate's send_to_device calls this)."""
        moved = [(d, *(t.to(device, non_blocking=non_blocking) for t in g)) for d, *g in self.groups]
        return RawImages(moved, self.dim, self.modality, self.body_part, self.task)

    def inputs(self, transform: Callable[[str, Tensor, SampleRandom], Tensor]) -> Inputs:
        groups = [(transform(d, x, SampleRandom(seeds)), rows) for d, x, rows, seeds in self.groups]
        return Inputs(groups, self.dim, self.modality, self.body_part, self.task)


class DeviceAugment:
    """The Trainer's batch transform for ImageBank batches: "raw" -> "inputs" (one augmented copy,
    `transforms` by dim; None: normalize only) or "views" (`views` by dim, one transform per view)."""

    def __init__(self, transforms: dict[str, BatchTransform | None] | None = None,
                 views: dict[str, list[BatchTransform]] | None = None):
        self.transforms = transforms
        self.views = views

    def __call__(self, batch: dict) -> dict:
        if "raw" not in batch:
            return batch
        batch = dict(batch)
        raw: RawImages = batch.pop("raw")
        if self.views is not None:
            n = len(next(iter(self.views.values())))
            batch["views"] = [raw.inputs(lambda d, x, rng, v=v: self.views[d][v](x, rng.fork(v))) for v in range(n)]
        else:
            batch["inputs"] = raw.inputs(self._one)
        return batch

    def _one(self, dim: str, x: Tensor, rng: SampleRandom) -> Tensor:
        t = (self.transforms or {}).get(dim)
        return normalize(as_unit_float(x)) if t is None else t(x, rng)


def use_bank(data: DataConfig, concat: ConcatDataset) -> bool:
    """Whether the training set goes through an ImageBank (data.augment_on), with a one-line error when
    `device` was asked for and cannot be done."""
    size = bank_bytes(concat.datasets)
    fits = size is not None and size <= data.in_memory_gb * 2**30
    if data.augment_on == "device" and not fits:
        why = ("a training part is neither MedMNIST nor a DICOM cache" if size is None
               else f"the training images take {size / 2**30:.1f} GB, above data.in_memory_gb={data.in_memory_gb}")
        raise ConfigError(f"data.augment_on=device needs the training set in memory, but {why}: "
                          "raise data.in_memory_gb or use data.augment_on=loader")
    if data.augment_on == "auto" and not fits and size is not None:
        logger.info("training images take %.1f GB > data.in_memory_gb: streaming them through the DataLoader",
                    size / 2**30)
    return data.augment_on != "loader" and fits
