"""Metrics of the dense / continuous downstream tasks: regression (MAE, RMSE, R2), segmentation (Dice, IoU)."""

from __future__ import annotations

import numpy as np
import torch

from ..data.domains import REGRESSION, SEGMENTATION


def regression_metrics(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> dict[str, float]:
    """{"mae", "rmse", "r2"} of predictions against targets (any matching shapes)."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    err = pred - target
    var = float(np.var(target))
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": float(1 - (err**2).mean() / var) if var > 0 else float("nan"),
    }


def segmentation_metrics(
    pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, n_classes: int, include_background: bool = False
) -> dict[str, float]:
    """Dice and IoU per class over the whole set (pixels pooled), and their mean over classes.

    `pred`, `target`: class ids [N, H, W]. A class absent from both pred and target gets nan
    and is left out of the means.
    """
    pred = np.asarray(pred).reshape(-1)
    target = np.asarray(target).reshape(-1)
    out: dict[str, float] = {}
    dices, ious = [], []
    for k in range(0 if include_background else 1, n_classes):
        p, t = pred == k, target == k
        inter = float(np.logical_and(p, t).sum())
        total = float(p.sum() + t.sum())
        union = total - inter
        dice = 2 * inter / total if total else float("nan")
        iou = inter / union if union else float("nan")
        out[f"dice/{k}"], out[f"iou/{k}"] = dice, iou
        dices.append(dice)
        ious.append(iou)
    out["dice"] = float(np.nanmean(dices)) if not np.all(np.isnan(dices)) else float("nan")
    out["iou"] = float(np.nanmean(ious)) if not np.all(np.isnan(ious)) else float("nan")
    if n_classes - (0 if include_background else 1) == 1:  # one foreground class: dice/1 is dice
        out = {"dice": out["dice"], "iou": out["iou"]}
    return out


def dense_metrics(pred: np.ndarray, target: np.ndarray, task: str, n_classes: int) -> dict[str, float]:
    """Segmentation {"dice", "iou"} (foreground classes, pixels pooled over the set) or regression
    {"mae", "rmse", "r2"}: what metrics.json holds for a dense task."""
    if task == SEGMENTATION:
        return segmentation_metrics(pred, target, n_classes)
    if task == REGRESSION:
        return regression_metrics(pred, target)
    raise ValueError(f"{task} is not a segmentation or regression task")
