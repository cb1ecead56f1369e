"""Reading an ingested cache: its index (SampleRecord rows, DicomIndex) and a torch Dataset."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..domains import MULTI_CLASS, DatasetInfo, register_dataset
from ..medmnist import DataError


@dataclass
class SampleRecord:
    """One row of index.csv."""

    index: int
    sample_id: str
    path: str  # anonymised relative path: every component a salted hash (see _Anonymiser)
    dim: str
    modality: str
    body_part: str
    channels: int
    n_slices: int
    array_index: int  # row in images_{dim}.npy


@dataclass
class DicomIndex:
    """What an ingestion produced (or what its cache holds)."""

    cache_dir: Path
    records: list[SampleRecord]
    tag_features: np.ndarray
    tag_columns: list[str]
    skipped: list[tuple[str, str]]
    report: dict[str, Any]
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.records)

    def column(self, name: str) -> np.ndarray:
        """Per-sample values of an index.csv column, e.g. "modality"."""
        return np.array([getattr(r, name) for r in self.records])

    @classmethod
    def load(cls, cache_dir: str | os.PathLike) -> DicomIndex:
        cache_dir = Path(cache_dir)
        if not (cache_dir / "report.json").is_file():
            raise DataError(f"{cache_dir} holds no DICOM cache; run ingest_dicom first")
        with open(cache_dir / "index.csv", newline="") as fh:
            records = [_record_from_row(row) for row in csv.DictReader(fh)]
        with open(cache_dir / "skipped.csv", newline="") as fh:
            skipped = [(row["path"], row["reason"]) for row in csv.DictReader(fh)]
        return cls(
            cache_dir=cache_dir,
            records=records,
            tag_features=np.load(cache_dir / "tag_features.npy"),
            tag_columns=json.loads((cache_dir / "tag_columns.json").read_text()),
            skipped=skipped,
            report=json.loads((cache_dir / "report.json").read_text()),
            from_cache=True,
        )


def _record_from_row(row: dict[str, str]) -> SampleRecord:
    ints = ("index", "channels", "n_slices", "array_index")
    return SampleRecord(**{k: int(v) if k in ints else v for k, v in row.items()})


class DicomDataset(Dataset):
    """The 2D or 3D samples of an ingested DICOM cache, as MedMNIST-style dict items.

    `labels` (e.g. pseudo-labels) are indexed by global sample index (index.csv row) or, if
    their length equals this dataset's size, by position; samples labelled -1 are left out.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        dim: str = "2d",
        labels: np.ndarray | None = None,
        task: str = "dicom",
        transform: Any = None,
    ) -> None:
        if dim not in ("2d", "3d"):
            raise DataError(f"dim must be '2d' or '3d', got {dim!r}")
        self.cache_dir = Path(cache_dir)
        self.dim, self.task, self.transform = dim, task, transform
        index = DicomIndex.load(self.cache_dir)
        records = [r for r in index.records if r.dim == dim]
        self.labels = self._align_labels(labels, records, len(index.records))
        if self.labels is not None:
            keep = self.labels >= 0
            records = [r for r, k in zip(records, keep, strict=True) if k]
            self.labels = self.labels[keep]
        self.records = records
        self.sample_indices = np.array([r.index for r in records], dtype=np.int64)
        self.images = np.load(self.cache_dir / f"images_{dim}.npy", mmap_mode="r")
        n_classes = int(self.labels.max()) + 1 if self.labels is not None and len(self.labels) else 1
        self.info = DatasetInfo(f"dicom{dim}", dim, "mixed", "mixed", MULTI_CLASS, n_classes, 3 if dim == "2d" else 1)
        register_dataset(self.info)
        self.domains = sorted({(r.modality, r.body_part) for r in records})

    @staticmethod
    def _align_labels(labels: np.ndarray | None, records: list[SampleRecord], n_total: int) -> np.ndarray | None:
        if labels is None:
            return None
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if len(labels) == n_total:
            return labels[[r.index for r in records]]
        if len(labels) == len(records):
            return labels
        raise DataError(
            f"got {len(labels)} labels but the cache holds {n_total} samples ({len(records)} {records[0].dim if records else ''})"
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.records[i]
        x = torch.from_numpy(np.array(self.images[r.array_index], dtype=np.float32)).div_(255.0)
        x = x.permute(2, 0, 1)[: r.channels].contiguous() if self.dim == "2d" else x[None]
        if self.transform is not None:
            x = self.transform(x)
        item = {
            "image": x,
            "dataset": self.info.flag,
            "index": r.index,
            "modality": r.modality,
            "body_part": r.body_part,
            "task": self.task,
        }
        if self.labels is not None:
            item["label"] = torch.tensor(int(self.labels[i]), dtype=torch.long)
        return item
