"""Pseudo-labels as training targets: a `medformer pseudolabel` run's labels aligned to the
pretraining set, class-balanced sampling, and DeepCluster-style re-clustering between epochs."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate.utils import broadcast
from scipy.optimize import linear_sum_assignment
from torch.utils.data import ConcatDataset, Dataset

from ..data.loaders import EpochConcat, SeededTransform
from ..data.samplers import EpochWeightedSampler
from ..errors import UserError
from .clustering import cluster_grid
from .features import embed, fuse

log = logging.getLogger(__name__)

UNLABELED = -1  # dropped by the entropy filter, or not in the clustered pool
DICOM = "dicom"  # source of DICOM samples in label-table keys


class PseudoLabelError(UserError):
    """A labels folder that cannot be used for this pretraining run."""


def read_label_table(labels_dir: str | Path) -> dict[tuple[str, object], int]:
    """Sample key -> pseudo-label, from a `medformer pseudolabel` run: (MedMNIST flag, index in its
    train split) for a MedMNIST pool, ("dicom", sample id) for a DICOM folder."""
    folder = Path(labels_dir)
    path = folder / "labels.csv" if folder.is_dir() else folder
    if not path.is_file():
        raise PseudoLabelError(f"no pseudo-labels at {path}: run `medformer pseudolabel --config ...` first "
                               "and set pseudolabel.labels to its output_dir")
    run_config = path.parent / "config.yaml"
    if run_config.is_file():
        split = ((yaml.safe_load(run_config.read_text()) or {}).get("data") or {}).get("split", "train")
        if split != "train":
            raise PseudoLabelError(f"{path} labels the {split!r} split; pretraining reads train splits: "
                                   "cluster with data.split=train")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = set(rows[0]) if rows else set()
    if {"source", "source_index", "label"} <= columns:
        return {(r["source"], int(r["source_index"])): int(r["label"]) for r in rows}
    if {"sample_id", "label"} <= columns:
        return {(DICOM, r["sample_id"]): int(r["label"]) for r in rows}
    raise PseudoLabelError(f"{path} has neither source/source_index nor sample_id columns next to label: "
                           "it is not a labels file of `medformer pseudolabel`")


def sample_keys(part: Dataset) -> list[tuple[str, object]]:
    """The label-table keys of a pretraining part's samples, in order."""
    base = part.base if isinstance(part, SeededTransform) else part
    if hasattr(base, "records"):  # an ingested DICOM cache
        return [(DICOM, r.sample_id) for r in base.records]
    return [(base.flag, int(i)) for i in base.indices]


def align_labels(dataset: EpochConcat, table: dict[tuple[str, object], int]) -> np.ndarray:
    """One pseudo-label per sample of `dataset` (UNLABELED where the table has none)."""
    labels = [table.get(key, UNLABELED) for part in dataset.datasets for key in sample_keys(part)]
    out = np.asarray(labels, dtype=np.int64)
    if not (out >= 0).any():
        pool = sorted({str(source) for source, _ in table})
        parts = [part.base.info.flag for part in dataset.datasets]
        raise PseudoLabelError(f"no pretraining sample has a pseudo-label: the labels cover {pool}, pretraining reads "
                               f"{parts} (for DICOM set data.dicom_cache to the labels run's dicom_cache)")
    return out


class PseudoLabeled(Dataset):
    """Adds `pseudolabel` to every item of `base`; `labels` may be replaced between epochs."""

    def __init__(self, base: EpochConcat, labels: np.ndarray):
        if len(labels) != len(base):
            raise ValueError(f"{len(labels)} pseudo-labels for {len(base)} samples")
        self.base = base
        self.labels = labels

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        return {**self.base[i], "pseudolabel": int(self.labels[i])}


class BalancedSampler(EpochWeightedSampler):
    """Each class drawn equally often, len(dataset) samples per epoch with replacement.

    Unlabeled samples are drawn with the mean labeled weight when `keep_unlabeled` (they still
    feed an SSL objective), else never.
    """

    def __init__(self, dataset: PseudoLabeled, seed: int, keep_unlabeled: bool):
        super().__init__(dataset, seed)
        self.keep_unlabeled = keep_unlabeled

    def weights(self) -> torch.Tensor:
        labels = torch.as_tensor(self.dataset.labels)
        labeled = labels >= 0
        counts = torch.bincount(labels[labeled])
        w = torch.zeros(len(labels), dtype=torch.float64)
        w[labeled] = 1.0 / counts[labels[labeled]].double()
        if self.keep_unlabeled and (~labeled).any():
            w[~labeled] = w[labeled].mean()
        return w


def class_counts(labels: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(labels[labels >= 0], return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def match_to_previous(new: np.ndarray, old: np.ndarray, n_outputs: int) -> np.ndarray:
    """Renumber `new` clusters (ids < n_outputs) to agree most with `old` (Hungarian matching on
    the overlap), so the classification head keeps its meaning across re-clusterings instead of
    being re-initialised as in DeepCluster."""
    n_new = int(new.max()) + 1
    both = old >= 0
    overlap = np.zeros((n_new, n_outputs), dtype=np.int64)
    np.add.at(overlap, (new[both], old[both]), 1)
    rows, cols = linear_sum_assignment(-overlap)
    mapping = np.empty(n_new, dtype=np.int64)
    mapping[rows] = cols
    return mapping[new]


def embed_pretraining_set(model: torch.nn.Module, dataset: EpochConcat, batch_size: int) -> np.ndarray:
    """Encoder features of every pretraining sample without augmentation."""
    return embed(model, ConcatDataset([p.base for p in dataset.datasets]), batch_size)


def recluster(features: np.ndarray, k: int, previous: np.ndarray, n_outputs: int, seed: int) -> np.ndarray:
    """k-means (as `medformer pseudolabel` clusters) renumbered to match the previous labels."""
    new = cluster_grid(fuse([features]), [k], seed)[k]["labels"]
    return match_to_previous(new, previous, n_outputs)


class Reclustering:
    """DeepCluster-style iteration: every `every` epochs, embed the pretraining set with the current
    encoder, re-run k-means and replace the labels. The main process clusters and broadcasts; the
    labels of each re-clustering are saved in `<output_dir>/pseudolabels/` so a resumed run reuses
    them instead of clustering again with later weights."""

    def __init__(self, dataset: PseudoLabeled, every: int, k: int, n_outputs: int, seed: int,
                 batch_size: int, output_dir: Path, accelerator):
        self.dataset = dataset
        self.every = every
        self.k = k
        self.n_outputs = n_outputs
        self.seed = seed
        self.batch_size = batch_size
        self.folder = Path(output_dir) / "pseudolabels"
        self.acc = accelerator
        self.applied_epoch = 0  # epoch of the labels in use (0: the labels file)
        self.history: list[dict] = []

    def labels_file(self, epoch: int) -> Path:
        return self.folder / f"epoch_{epoch:04d}.npy"

    def __call__(self, epoch: int, model: torch.nn.Module) -> None:
        due = (epoch // self.every) * self.every if self.every else 0
        if due == 0 or due == self.applied_epoch:
            return
        labels = torch.zeros(len(self.dataset), dtype=torch.long, device=self.acc.device)
        if self.acc.is_main_process:
            path = self.labels_file(due)
            if path.is_file():
                new = np.load(path)
            else:
                base = self.dataset.base
                new = recluster(embed_pretraining_set(model, base, self.batch_size), self.k,
                                self.dataset.labels, self.n_outputs, self.seed + due)
                self.folder.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npy")
                np.save(tmp, new)
                tmp.replace(path)
            changed = float((new != self.dataset.labels).mean())
            self.history.append({"epoch": due, "changed_fraction": changed, "counts": class_counts(new)})
            log.info("re-clustered at epoch %d: %.1f%% of the labels changed", due, 100 * changed)
            labels.copy_(torch.as_tensor(new))
        if self.acc.num_processes > 1:
            labels = broadcast(labels, from_process=0)
        self.dataset.labels = labels.cpu().numpy()
        self.applied_epoch = due
