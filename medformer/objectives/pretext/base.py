"""What every pretext term shares: its interface, per-sample random streams, small heads."""

from __future__ import annotations

import dataclasses
import zlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import ConfigError
from ...data.batch import Inputs
from ...data.transforms.sample_random import SampleRandom, sample_seeds
from ...models.stem_calls import merged_groups


class PretextTerm(nn.Module):
    """One pretext task: `forward(model, inputs, seeds)` -> its loss (a mean over the local rows,
    so the mean over processes is the global-batch loss).

    `seeds` [B] are the rows' random seeds (`row_seeds`): what a sample's corruption, mask or
    label is depends on (run seed, step, dataset, index) only, never on the batch or the process.
    The model is passed in, not held, so that it is registered once, by the pretraining objective.
    """

    name = "base"
    loss_name = "base/loss"
    needs_tokens = False  # True: reads the Medformer's body tokens (masked modelling, restoration)

    def __init__(self) -> None:
        super().__init__()
        self.last_embedding: Tensor | None = None
        self.salt = zlib.crc32(self.name.encode())  # independent streams per task

    def groups(self, inputs: Inputs, seeds: Tensor) -> list[tuple[str, Tensor, Tensor, SampleRandom]]:
        """(dim, images, batch rows, random streams of those rows), one entry per dim."""
        return [(dim, images, rows, SampleRandom(seeds[rows.to(seeds.device)].to(images.device)).fork(self.salt))
                for dim, (images, rows) in merged_groups(inputs).items()]


class TransformPrediction(PretextTerm):
    """Turn each image by one of a fixed list of transforms and predict which one from its
    embedding (`model.encode`: any encoder); one head per dim in `heads`."""

    heads: nn.ModuleDict

    def n_classes(self, dim: str) -> int:
        raise NotImplementedError

    def transform(self, dim: str, images: Tensor, labels: Tensor) -> Tensor:
        """`images` with transform labels[i] applied to row i."""
        raise NotImplementedError

    def forward(self, model: nn.Module, inputs: Inputs, seeds: Tensor) -> Tensor:
        groups, targets = [], []
        for dim, images, rows, rng in self.groups(inputs, seeds):
            require_cube(images, self.name)
            labels = rng.randint(self.n_classes(dim))[:, 0]
            groups.append((self.transform(dim, images, labels), rows))
            targets.append((dim, rows, labels))
        h = model.encode(with_groups(inputs, groups))
        self.last_embedding = h.detach()
        total = sum(F.cross_entropy(full_precision(self.heads[dim](h[rows.to(h.device)])), labels, reduction="sum")
                    for dim, rows, labels in targets)
        return total / len(inputs)


def full_precision(x: Tensor) -> Tensor:
    """Half-precision values as float32 for the loss (float32 and float64 stay as they are)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def with_groups(inputs: Inputs, groups: list[tuple[Tensor, Tensor]]) -> Inputs:
    """The same samples with other images (e.g. rotated, masked), one group per dim."""
    return dataclasses.replace(inputs, groups=groups)


def row_seeds(seed: int, step: int, datasets: list[str], index: Tensor) -> Tensor:
    """int64 seed per batch row from (run seed, step, dataset name, index in that dataset)."""
    salts = torch.tensor([zlib.crc32(d.encode()) for d in datasets], dtype=torch.long)
    out = torch.empty(len(datasets), dtype=torch.long)
    for salt in salts.unique().tolist():
        rows = (salts == salt).nonzero()[:, 0]
        out[rows] = sample_seeds(seed, step, salt, index.cpu()[rows])
    return out


def classifier(width: int, hidden: int, n_classes: int) -> nn.Module:
    """The pretext heads: a 2-layer MLP on the encoder's embedding."""
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, n_classes))


def require_medformer(model: nn.Module, task: str) -> None:
    if not hasattr(model, "input_adapt"):
        raise ConfigError(f"pretext task {task!r} reads patch tokens, which only the Medformer has: "
                          f"use a model.name=medformer_* or drop {task} from pretext.tasks")


def require_cube(images: Tensor, task: str) -> None:
    if len(set(images.shape[2:])) != 1:
        raise ValueError(f"pretext task {task!r} needs square images / cubic volumes, got {tuple(images.shape[2:])}")
