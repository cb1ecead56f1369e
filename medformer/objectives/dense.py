"""Objectives of the dense/continuous tasks, in the engine's shape: forward(batch) -> {name: loss}."""

from __future__ import annotations

import torch
from torch import nn

from ..models.dense_heads import regression_loss, segmentation_loss


class RegressionObjective(nn.Module):
    """MSE of an `AuxRegressor`; batch: {"inputs": Inputs with extra["aux"], "targets": [B]}."""

    def __init__(self, model: nn.Module, name: str = "regression"):
        super().__init__()
        self.model = model
        self.name = name

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return {self.name: regression_loss(self.model(batch["inputs"]), batch["targets"])}


class SegmentationObjective(nn.Module):
    """CE + soft Dice of a `SegmentationModel`; batch: {"inputs": Inputs, "masks": [B, H, W]}."""

    def __init__(self, model: nn.Module, name: str = "segmentation", dice_weight: float = 1.0):
        super().__init__()
        self.model = model
        self.name = name
        self.dice_weight = dice_weight

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return {self.name: segmentation_loss(self.model(batch["inputs"]), batch["masks"], self.dice_weight)}
