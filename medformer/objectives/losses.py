"""The loss of each task type (classification, ordinal, multi-label, segmentation, regression) on its
head's logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.domains import BINARY, MULTI_CLASS, MULTI_LABEL, ORDINAL, REGRESSION, SEGMENTATION


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

    `class_weight` ([K] per class, mean 1 over the training labels; [L] positive weights for
    multi-label) weighs each sample by its class, and the loss is the batch mean of the weighted
    terms. Not the mean over the batch's weights (`F.cross_entropy(weight=...)`): that normaliser
    depends on the batch, so the mean of 2 processes' losses would not be the 1-process loss.
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
        per_sample = F.cross_entropy(logits, labels, reduction="none")
    elif task == BINARY:
        per_sample = F.binary_cross_entropy_with_logits(logits.reshape(-1), labels.float(), reduction="none")
    elif task == ORDINAL:
        k = torch.arange(logits.shape[1], device=logits.device)
        cumulative_target = (labels.reshape(-1, 1) > k).float()
        per_sample = F.binary_cross_entropy_with_logits(logits, cumulative_target, reduction="none").mean(1)
    else:
        raise ValueError(f"unknown task type {task!r}")
    if class_weight is None:
        return per_sample.mean()
    return (per_sample * class_weight.to(logits.device)[labels]).mean()
