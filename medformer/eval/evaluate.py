"""Evaluate a model with task heads on per-dataset loaders (distributed-safe): classification,
segmentation and regression tasks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from ..data.domains import SEGMENTATION, dataset_info
from ..models.heads import logits_to_scores
from .dense_metrics import dense_metrics
from .metrics import medmnist_metrics


@torch.no_grad()
def predict(model: nn.Module, loader, accelerator: Accelerator, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Scores (Evaluator layout) and labels [N, L] of one task over a whole loader, all processes."""
    was_training = model.training
    model.eval()
    task_type = dataset_info(task).task
    all_scores, all_labels = [], []
    for batch in loader:
        logits = model(batch["inputs"])[task]
        scores = logits_to_scores(logits, task_type)
        labels = batch["targets"][task]
        labels = labels.reshape(len(labels), -1)
        scores, labels = accelerator.gather_for_metrics((scores.contiguous(), labels.contiguous()))
        all_scores.append(scores.cpu())
        all_labels.append(labels.cpu())
    model.train(was_training)
    return torch.cat(all_scores).numpy(), torch.cat(all_labels).numpy()


@torch.no_grad()
def predict_dense(model: nn.Module, loader, accelerator: Accelerator, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and targets of a segmentation (class ids [N, *S]) or regression ([N]) task, all processes."""
    was_training = model.training
    model.eval()
    info = dataset_info(task)
    preds, targets = [], []
    for batch in loader:
        out = model(batch["inputs"])[task].float()
        pred = out.argmax(1) if info.task == SEGMENTATION else out.reshape(-1)
        target = batch["targets"][task]
        pred, target = accelerator.gather_for_metrics((pred.contiguous(), target.contiguous()))
        preds.append(pred.cpu())
        targets.append(target.cpu())
    model.train(was_training)
    return torch.cat(preds).numpy(), torch.cat(targets).numpy()


def evaluate_tasks(model: nn.Module, loaders: dict, accelerator: Accelerator,
                   on_predictions: Callable[[str, np.ndarray, np.ndarray], None] | None = None,
                   ) -> dict[str, dict[str, float]]:
    """{task: {auc, acc, f1, balanced_acc, mcc}} for each classification task's loader, {dice, iou} for
    segmentation, {mae, rmse, r2} for regression; `on_predictions(task, scores, labels)` sees each
    classification task's per-sample predictions (e.g. to save them)."""
    out = {}
    for task, loader in loaders.items():
        info = dataset_info(task)
        if info.is_dense:
            pred, target = predict_dense(model, loader, accelerator, task)
            out[task] = dense_metrics(pred, target, info.task, info.n_classes)
            continue
        scores, labels = predict(model, loader, accelerator, task)
        out[task] = medmnist_metrics(labels, scores, dataset_info(task).task)
        if on_predictions is not None:
            on_predictions(task, scores, labels)
    return out
