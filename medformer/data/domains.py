"""The one table that declares every dataset's domain: dim, modality, body part, task.

Domain latents in the model are looked up by these names, so adding a dataset means adding a
row here (or registering one at run time for DICOM data) and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

# Task types use medmnist's own strings so metrics can be checked against medmnist.Evaluator.
MULTI_CLASS = "multi-class"
BINARY = "binary-class"
MULTI_LABEL = "multi-label, binary-class"
ORDINAL = "ordinal-regression"
CLASSIFICATION_TASKS = (MULTI_CLASS, BINARY, MULTI_LABEL, ORDINAL)
# dense and continuous targets: a class id per pixel/voxel (Dice), one value per image (MAE)
SEGMENTATION = "segmentation"
REGRESSION = "regression"
DENSE_TASKS = (SEGMENTATION, REGRESSION)
TASK_TYPES = (*CLASSIFICATION_TASKS, *DENSE_TASKS)

SIZES_2D = (28, 64, 128, 224)
SIZES_3D = (28, 64)


@dataclass(frozen=True)
class DatasetInfo:
    """Everything the model and the data layer need to know about one dataset."""

    flag: str
    dim: str  # "2d" or "3d"
    modality: str
    body_part: str
    task: str  # one of TASK_TYPES
    n_classes: int  # classes, labels for multi-label, mask classes (background included); 1 for regression
    n_channels: int
    source: str | None = None  # derived datasets: the dataset whose images they read (medformer.data.derived)

    @property
    def is_dense(self) -> bool:
        """Segmentation or regression (no class scores, no AUC)."""
        return self.task in DENSE_TASKS

    @property
    def sizes(self) -> tuple[int, ...]:
        return SIZES_2D if self.dim == "2d" else SIZES_3D

    @property
    def n_outputs(self) -> int:
        """Width of the task head: 1 logit for binary and regression, K-1 cumulative logits for ordinal."""
        if self.task in (BINARY, REGRESSION):
            return 1
        if self.task == ORDINAL:
            return self.n_classes - 1
        return self.n_classes


def _row(flag, dim, modality, body_part, task, n_classes, n_channels) -> DatasetInfo:
    return DatasetInfo(flag, dim, modality, body_part, task, n_classes, n_channels)


MEDMNIST: dict[str, DatasetInfo] = {
    d.flag: d
    for d in (
        _row("pathmnist", "2d", "pathology", "colon", MULTI_CLASS, 9, 3),
        _row("chestmnist", "2d", "xray", "chest", MULTI_LABEL, 14, 1),
        _row("dermamnist", "2d", "dermatoscopy", "skin", MULTI_CLASS, 7, 3),
        _row("octmnist", "2d", "oct", "retina", MULTI_CLASS, 4, 1),
        _row("pneumoniamnist", "2d", "xray", "chest", BINARY, 2, 1),
        _row("retinamnist", "2d", "fundus", "retina", ORDINAL, 5, 3),
        _row("breastmnist", "2d", "ultrasound", "breast", BINARY, 2, 1),
        _row("bloodmnist", "2d", "microscopy", "blood", MULTI_CLASS, 8, 3),
        _row("tissuemnist", "2d", "microscopy", "kidney", MULTI_CLASS, 8, 1),
        _row("organamnist", "2d", "ct", "abdomen", MULTI_CLASS, 11, 1),
        _row("organcmnist", "2d", "ct", "abdomen", MULTI_CLASS, 11, 1),
        _row("organsmnist", "2d", "ct", "abdomen", MULTI_CLASS, 11, 1),
        _row("organmnist3d", "3d", "ct", "abdomen", MULTI_CLASS, 11, 1),
        _row("nodulemnist3d", "3d", "ct", "chest", BINARY, 2, 1),
        _row("adrenalmnist3d", "3d", "ct", "abdomen", BINARY, 2, 1),
        _row("fracturemnist3d", "3d", "ct", "chest", MULTI_CLASS, 3, 1),
        _row("vesselmnist3d", "3d", "mra", "brain", BINARY, 2, 1),
        _row("synapsemnist3d", "3d", "electron_microscopy", "brain", BINARY, 2, 1),
    )
}

# Extra datasets (DICOM folders, user data) register here at run time.
_REGISTRY: dict[str, DatasetInfo] = dict(MEDMNIST)


def register_dataset(info: DatasetInfo) -> None:
    """Declare a non-MedMNIST dataset (e.g. a DICOM folder) so models and loaders know it."""
    if info.task not in TASK_TYPES:
        raise ValueError(f"unknown task type {info.task!r}; use one of {TASK_TYPES}")
    if info.dim not in ("2d", "3d"):
        raise ValueError(f"dim must be '2d' or '3d', got {info.dim!r}")
    _REGISTRY[info.flag] = info


def dataset_flags() -> list[str]:
    """Every known flag (MedMNIST, derived, registered at run time)."""
    return list(_REGISTRY)


def is_dense_task(flag: str) -> bool:
    return dataset_info(flag).is_dense


def dataset_info(flag: str) -> DatasetInfo:
    """Look a dataset up by flag; an unknown flag names every valid one."""
    try:
        return _REGISTRY[flag]
    except KeyError:
        valid = ", ".join(sorted(_REGISTRY))
        raise UserError(f"unknown dataset flag {flag!r}; valid flags: {valid}") from None
