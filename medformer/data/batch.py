"""Batches that mix datasets, 2D and 3D: what the model reads and what the losses compare to.

Images of different shapes cannot be stacked, so a batch holds one tensor per shape group
plus the batch rows it fills. After the Input Adaptformer every sample is a fixed number of
canonical tokens, and the rest of the model sees one ordinary [B, N, D] batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .domains import dataset_info


@dataclass
class Inputs:
    """Images of one batch, grouped by shape, with each sample's domain and task names."""

    groups: list[tuple[torch.Tensor, torch.Tensor]]  # (images [b, C, ...], batch rows [b])
    dim: list[str]
    modality: list[str]
    body_part: list[str]
    task: list[str]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. auxiliary scalars

    def __len__(self) -> int:
        return len(self.task)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Inputs:
        """Moved copy (Accelerate's send_to_device calls this)."""
        groups = [
            (x.to(device, non_blocking=non_blocking), r.to(device, non_blocking=non_blocking))
            for x, r in self.groups
        ]
        extra = {k: v.to(device, non_blocking=non_blocking) for k, v in self.extra.items()}
        return Inputs(groups, self.dim, self.modality, self.body_part, self.task, extra)

    def rows_of_task(self, task: str) -> torch.Tensor:
        """Batch rows whose task is `task`, ascending (the order of logits and targets)."""
        return torch.tensor([i for i, t in enumerate(self.task) if t == task], dtype=torch.long)

    def select(self, rows: torch.Tensor) -> Inputs:
        """Sub-batch of the given rows, in that order."""
        rows = rows.tolist()
        new_pos = {r: i for i, r in enumerate(rows)}
        groups = []
        for images, group_rows in self.groups:
            keep = [j for j, r in enumerate(group_rows.tolist()) if r in new_pos]
            if keep:
                keep_t = torch.tensor(keep, device=images.device)
                new_rows = torch.tensor([new_pos[group_rows[j].item()] for j in keep], device=group_rows.device)
                groups.append((images[keep_t], new_rows))
        pick = lambda xs: [xs[r] for r in rows]  # noqa: E731
        extra = {k: v[rows] for k, v in self.extra.items()}
        return Inputs(groups, pick(self.dim), pick(self.modality), pick(self.body_part), pick(self.task), extra)


def make_inputs(
    images: Sequence[torch.Tensor],
    datasets: Sequence[str],
    modality: Sequence[str] | None = None,
    body_part: Sequence[str] | None = None,
    task: Sequence[str] | None = None,
) -> Inputs:
    """Group per-sample images by shape; domains default to each dataset's table row."""
    infos = [dataset_info(d) for d in datasets]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        by_shape.setdefault(tuple(img.shape), []).append(i)
    groups = [
        (torch.stack([images[i] for i in rows]), torch.tensor(rows, dtype=torch.long))
        for rows in by_shape.values()
    ]
    return Inputs(
        groups=groups,
        dim=[info.dim for info in infos],
        modality=list(modality) if modality is not None else [info.modality for info in infos],
        body_part=list(body_part) if body_part is not None else [info.body_part for info in infos],
        task=list(task) if task is not None else list(datasets),
    )


def _per_sample(samples: list[dict], key: str) -> list[str] | None:
    """Each sample's own modality/body_part/task (DICOM items), else its dataset's (MedMNIST
    items); None when no sample has one (make_inputs then uses the dataset table)."""
    if not any(key in s for s in samples):
        return None
    fallback = lambda s: s["dataset"] if key == "task" else getattr(dataset_info(s["dataset"]), key)  # noqa: E731
    return [s[key] if key in s else fallback(s) for s in samples]


def collate(samples: list[dict]) -> dict:
    """Collate dataset items (image may be one tensor or a list of views) into a batch.

    Returns {"inputs": Inputs, or "views": [Inputs, ...] for multi-view samples,
    "targets": {task: labels of that task's rows, ascending}, "index", "dataset"}, plus
    "pseudolabels" [B] when items carry a cluster label.
    """
    datasets = [s["dataset"] for s in samples]
    modality, body_part, task = (_per_sample(samples, key) for key in ("modality", "body_part", "task"))
    task = task or datasets
    batch: dict = {
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        "dataset": datasets,
    }
    first = samples[0]["image"]
    if isinstance(first, (list, tuple)):
        batch["views"] = [
            make_inputs([s["image"][v] for s in samples], datasets, modality, body_part, task)
            for v in range(len(first))
        ]
    else:
        batch["inputs"] = make_inputs([s["image"] for s in samples], datasets, modality, body_part, task)
    if all("label" in s for s in samples):  # pretraining mixes labeled MedMNIST and unlabeled DICOM items
        batch["targets"] = {
            t: torch.stack([s["label"] for s, st in zip(samples, task, strict=True) if st == t])
            for t in dict.fromkeys(task)
        }
    if "pseudolabel" in samples[0]:
        batch["pseudolabels"] = torch.tensor([s["pseudolabel"] for s in samples], dtype=torch.long)
    if "aux" in samples[0]:
        aux = torch.stack([s["aux"] for s in samples])
        for inputs in batch.get("views", [batch.get("inputs")]):
            inputs.extra["aux"] = aux
    return batch
