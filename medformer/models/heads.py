"""Task heads and the conversion of their logits into MedMNIST-style scores; the loss of each task type."""

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


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """Per-pixel cross-entropy plus soft Dice over the foreground classes; masks [B, *spatial] class ids."""
    logits = logits.float()
    masks = masks.long()
    ce = F.cross_entropy(logits, masks)
    probs = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(masks, logits.shape[1]).movedim(-1, 1)[:, 1:].float()
    dims = (0, *range(2, logits.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce + dice_weight * (1 - dice.mean())


def task_loss(
    logits: torch.Tensor, target: torch.Tensor, task: str, class_weight: torch.Tensor | None = None,
    target_scale: float = 1.0,
) -> torch.Tensor:
    """Loss of one task's logits: CE, BCE (binary, multi-label), cumulative-BCE (ordinal), CE + soft
    Dice (segmentation), or MSE in units of `target_scale` (regression: the training targets' sd).

    `class_weight` ([K] per class; [L] positive weights for multi-label) weighs each sample by its
    class; the mean is then over the batch's weights, as `F.cross_entropy(weight=...)` does.
    """
    logits = logits.float()
    if task == SEGMENTATION:
        return segmentation_loss(logits, target)
    if task == REGRESSION:
        return F.mse_loss(logits.reshape(-1) / target_scale, target.float().reshape(-1) / target_scale)
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
