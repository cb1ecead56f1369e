"""Schema of a shard-writing run (`medformer shards`): which images become shards, and where."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .loader import ranged


@dataclass
class ShardsConfig:
    # medmnist: the `split` of each of `datasets` (official npz files, labels kept); dicom_cache: every
    # sample of an ingested DICOM cache (`medformer pseudolabel` with data.dicom_dir), unlabeled
    source: Literal["medmnist", "dicom_cache"] = "medmnist"
    datasets: list[str] = field(default_factory=list)  # MedMNIST flags (source: medmnist)
    root: str | None = None  # npz folder; else $MEDMNIST_ROOT, ~/.medmnist
    size: int = ranged(28, ge=1)
    split: Literal["train", "val", "test"] = "train"
    verify_md5: bool = True
    download: bool = False
    dicom_cache: str | None = None  # an ingested cache folder (source: dicom_cache)
    samples_per_shard: int = ranged(20_000, ge=1)  # rows per Arrow file
    output_dir: str = "runs/shards"
