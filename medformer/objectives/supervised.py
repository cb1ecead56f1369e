"""Supervised (single- and multi-task) objective: one loss per task, by task type (classification,
segmentation, regression)."""

from __future__ import annotations

import torch
from torch import nn

from ..data.domains import dataset_info
from .losses import task_loss


class SupervisedObjective(nn.Module):
    """Wraps a model with task heads; returns {"<task>": loss} for the tasks in the batch."""

    def __init__(
        self, model: nn.Module, task_types: dict[str, str] | None = None,
        class_weights: dict[str, torch.Tensor] | None = None, logit_offsets: dict[str, torch.Tensor] | None = None,
        target_scales: dict[str, float] | None = None,
    ):
        super().__init__()
        self.model = model
        self.task_types = task_types or {}
        self.class_weights = class_weights or {}  # task -> per-class weights (class_balance.class_weights)
        self.logit_offsets = logit_offsets or {}  # task -> shift the loss adds to the logits (class_balance.prior_offset)
        self.target_scales = target_scales or {}  # regression task -> sd of its training targets (MSE in its units)

    def task_type(self, task: str) -> str:
        return self.task_types.get(task) or dataset_info(task).task

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        logits = self.model(batch["inputs"])
        return {
            task: task_loss(self._shifted(task, out), batch["targets"][task], self.task_type(task),
                            self.class_weights.get(task), self.target_scales.get(task, 1.0))
            for task, out in logits.items()
        }

    def _shifted(self, task: str, logits: torch.Tensor) -> torch.Tensor:
        offset = self.logit_offsets.get(task)
        return logits if offset is None else logits + offset.to(logits.device, logits.dtype)
