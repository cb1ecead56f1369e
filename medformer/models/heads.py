"""Task heads and the conversion of their logits into MedMNIST-style scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.domains import BINARY, MULTI_CLASS, MULTI_LABEL, ORDINAL


def head_width(task: str, n_classes: int) -> int:
    """Logits a head emits: 1 for binary, K-1 cumulative logits for ordinal, else K."""
    if task == BINARY:
        return 1
    if task == ORDINAL:
        return n_classes - 1
    return n_classes


def logits_to_scores(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Scores in the layout medmnist.Evaluator expects.

    binary -> P(y=1) [N]; multi-class -> softmax [N, K]; multi-label -> sigmoid [N, L];
    ordinal -> class probabilities [N, K] from cumulative P(y > k).
    """
    logits = logits.float()
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


def task_loss(logits: torch.Tensor, target: torch.Tensor, task: str, class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Loss of one task's logits: CE, BCE (binary, multi-label), or cumulative-BCE (ordinal).

    `class_weight` ([K] per class; [L] positive weights for multi-label) weighs each sample by its
    class; the mean is then over the batch's weights, as `F.cross_entropy(weight=...)` does.
    """
    logits = logits.float()
    if task == MULTI_LABEL:
        pos_weight = None if class_weight is None else class_weight.to(logits.device)
        return F.binary_cross_entropy_with_logits(logits, target.float(), pos_weight=pos_weight)
    labels = target.long().reshape(-1)
    if task == MULTI_CLASS:
        weight = None if class_weight is None else class_weight.to(logits.device)
        return F.cross_entropy(logits, labels, weight=weight)
    if task == BINARY:
        per_sample = F.binary_cross_entropy_with_logits(logits.reshape(-1), labels.float(), reduction="none")
    elif task == ORDINAL:
        k = torch.arange(logits.shape[1], device=logits.device)
        cumulative_target = (labels.reshape(-1, 1) > k).float()
        per_sample = F.binary_cross_entropy_with_logits(logits, cumulative_target, reduction="none").mean(1)
    else:
        raise ValueError(f"unknown task type {task!r}")
    if class_weight is None:
        return per_sample.mean()
    w = class_weight.to(logits.device)[labels]
    return (per_sample * w).sum() / w.sum().clamp_min(1e-12)
