"""Schema of a pseudo-label clustering run (`medformer pseudolabel`): the pool of images, the encoder,
the grid of k and how clusters are kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .dicom import DicomConfig


@dataclass
class PseudoLabelDataConfig:
    datasets: list[str] = field(default_factory=list)  # MedMNIST flags to pool
    root: str | None = None
    size: int = 28
    split: Literal["train", "val", "test"] = "train"
    max_samples_per_dataset: int | None = None  # random subset per dataset (seeded)
    verify_md5: bool = True
    dicom_dir: str | None = None  # instead of datasets: a DICOM folder tree
    dicom_cache_dir: str | None = None  # default <output_dir>/dicom_cache
    dicom: DicomConfig = field(default_factory=DicomConfig)


@dataclass
class PseudoLabelConfig:
    data: PseudoLabelDataConfig = field(default_factory=PseudoLabelDataConfig)
    encoder: str = "scratch"  # checkpoint (.safetensors or run folder), scratch (random init), pixels
    model_name: str = "medformer_small"
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {depth: 1}
    batch_size: int = 256
    use_tags: bool = True  # DICOM only: fuse header-tag features with the embeddings
    tag_weight: float = 1.0
    pca_components: int | None = None
    ks: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6, 8, 10, 12, 16])
    k: int | None = None  # force k instead of the elbow
    entropy_threshold: float = 0.9
    entropy_attribute: str | None = None  # default: dataset (MedMNIST) or modality (DICOM)
    tsne_points: int = 2000
    seed: int = 0
    output_dir: str = "runs/pseudolabel"
