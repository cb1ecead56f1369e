"""Evaluate a model with task heads on per-dataset loaders (distributed-safe)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from ..data.domains import dataset_info
from ..models.heads import logits_to_scores
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


def evaluate_tasks(model: nn.Module, loaders: dict, accelerator: Accelerator,
                   on_predictions: Callable[[str, np.ndarray, np.ndarray], None] | None = None,
                   ) -> dict[str, dict[str, float]]:
    """{task: {auc, acc, f1, balanced_acc, mcc}} for each task's loader; `on_predictions(task, scores,
    labels)` sees each task's per-sample predictions (e.g. to save them)."""
    out = {}
    for task, loader in loaders.items():
        scores, labels = predict(model, loader, accelerator, task)
        out[task] = medmnist_metrics(labels, scores, dataset_info(task).task)
        if on_predictions is not None:
            on_predictions(task, scores, labels)
    return out
