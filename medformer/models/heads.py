"""Task heads' widths and the conversion of their logits into MedMNIST-style scores (the losses
are in medformer.objectives.losses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.domains import BINARY, MULTI_CLASS, MULTI_LABEL, ORDINAL, REGRESSION, SEGMENTATION


def head_width(task: str, n_classes: int) -> int:
    """Logits a head emits: 1 for binary and regression, K-1 cumulative logits for ordinal, else K
    (per pixel for segmentation)."""
    if task in (BINARY, REGRESSION):
        return 1
    if task == ORDINAL:
        return n_classes - 1
    return n_classes


def logits_to_scores(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Scores in the layout medmnist.Evaluator expects.

    binary -> P(y=1) [N]; multi-class -> softmax [N, K]; multi-label -> sigmoid [N, L];
    ordinal -> class probabilities [N, K] from cumulative P(y > k); segmentation -> per-pixel softmax
    [N, K, *spatial]; regression -> the predicted values [N].
    """
    logits = logits.float()
    if task == REGRESSION:
        return logits.reshape(-1)
    if task == SEGMENTATION:
        return F.softmax(logits, dim=1)
    if task == BINARY:
        return torch.sigmoid(logits.reshape(-1))
    if task == MULTI_LABEL:
        return torch.sigmoid(logits)
    if task == ORDINAL:
        greater = torch.sigmoid(logits)  # P(y > k), k = 0..K-2
        ones = torch.ones_like(greater[:, :1])
        zeros = torch.zeros_like(greater[:, :1])
        cumulative = torch.cat([ones, greater, zeros], dim=1)
        return (cumulative[:, :-1] - cumulative[:, 1:]).clamp_min(0)
    if task == MULTI_CLASS:
        return F.softmax(logits, dim=-1)
    raise ValueError(f"unknown task type {task!r}")
