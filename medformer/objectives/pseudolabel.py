"""Pseudo-label classification (RadiologyNET-style): cluster labels as one more task of the model.

A task latent and a K-way head named `pseudolabel` are added to the model; every view the
pretraining objective passes through the body is classified, from the same pass that feeds the
SSL terms (`encode_and_classify`), so adding it to SSL costs only the head.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.batch import Inputs
from ..errors import UserError
from .ssl.dist import world_size

TASK = "pseudolabel"
LOSS = "pseudolabel/ce"


def _upcast(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def as_task(inputs: Inputs, task: str) -> Inputs:
    """The same images with every row assigned to `task` (its latent and head)."""
    return dataclasses.replace(inputs, task=[task] * len(inputs))


class PseudoLabelTerm:
    """Cross-entropy on the `pseudolabel` head (label -1: ignored); adds that head to `model`."""

    def __init__(self, model: nn.Module, n_classes: int, label_smoothing: float = 0.0):
        if n_classes < 2:
            raise UserError(f"pseudo-label classification needs >= 2 classes, got {n_classes}")
        model.add_task(TASK, n_classes)
        self.n_classes = n_classes
        self.label_smoothing = label_smoothing
        self.last_accuracy = float("nan")  # head top-1 on the last batch's labeled rows, first view

    def loss(self, logits: list[Tensor], targets: Tensor) -> Tensor:
        """Cross-entropy averaged over the labeled rows of all processes and over the views
        (`logits`: one [B, K] tensor per view).

        Each process divides its sum by the global labeled count / world size, so the mean over
        processes (what DDP's gradient averaging computes) is the global-batch mean even when
        processes hold different numbers of labeled rows."""
        labeled = targets >= 0
        count = labeled.sum().float()
        if world_size() > 1:
            count = count.clone()
            torch.distributed.all_reduce(count)
            count = count / world_size()
        if labeled.any():
            predicted = logits[0].detach()[labeled].argmax(1)
            self.last_accuracy = float((predicted == targets[labeled]).float().mean())
        total = sum(
            F.cross_entropy(_upcast(view[labeled]), targets[labeled], label_smoothing=self.label_smoothing,
                            reduction="sum")
            for view in logits
        )
        count = torch.where(count > 0, count, torch.ones_like(count))  # no labeled row: loss 0, graph kept for DDP
        return total / (count * len(logits))
