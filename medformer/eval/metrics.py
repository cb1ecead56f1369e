"""MedMNIST metrics (AUC, ACC exactly as medmnist.Evaluator) plus F1, balanced accuracy, MCC.

AUC/ACC call medmnist's own getAUC/getACC so the numbers are the Evaluator's by construction;
the extra metrics use scikit-learn on the same predictions.
"""

from __future__ import annotations

import math

import numpy as np
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import balanced_accuracy_score, f1_score, matthews_corrcoef

from ..data.domains import BINARY, MULTI_LABEL


def predictions(scores: np.ndarray, task: str, threshold: float = 0.5) -> np.ndarray:
    """Hard predictions from Evaluator-layout scores (same rule as getACC)."""
    scores = np.asarray(scores).squeeze()
    if task == MULTI_LABEL:
        return (scores > threshold).astype(int)
    if task == BINARY:
        if scores.ndim == 2:
            scores = scores[:, -1]
        return (scores > threshold).astype(int)
    return np.argmax(scores, axis=-1)


def auc(labels: np.ndarray, scores: np.ndarray, task: str) -> float:
    """medmnist AUC; nan when a class is absent from labels (AUC is undefined there)."""
    try:
        return float(getAUC(np.asarray(labels), np.asarray(scores), task))
    except ValueError:
        return math.nan


def acc(labels: np.ndarray, scores: np.ndarray, task: str) -> float:
    return float(getACC(np.asarray(labels), np.asarray(scores), task))


def medmnist_metrics(labels: np.ndarray, scores: np.ndarray, task: str) -> dict[str, float]:
    """{"auc", "acc", "f1", "balanced_acc", "mcc"} for one task's labels [N, L] and scores."""
    labels = np.asarray(labels)
    y_pred = predictions(scores, task)
    out = {"auc": auc(labels, scores, task), "acc": acc(labels, scores, task)}
    if task == MULTI_LABEL:
        y_true = labels.astype(int)
        out["f1"] = float(f1_score(y_true, y_pred, average="macro", zero_division=0))
        per_label = [balanced_accuracy_score(y_true[:, j], y_pred[:, j]) for j in range(y_true.shape[1])]
        out["balanced_acc"] = float(np.mean(per_label))
        out["mcc"] = float(np.mean([matthews_corrcoef(y_true[:, j], y_pred[:, j]) for j in range(y_true.shape[1])]))
        return out
    y_true = labels.reshape(-1).astype(int)
    average = "binary" if task == BINARY else "macro"
    out["f1"] = float(f1_score(y_true, y_pred, average=average, zero_division=0))
    out["balanced_acc"] = float(balanced_accuracy_score(y_true, y_pred))
    out["mcc"] = float(matthews_corrcoef(y_true, y_pred))
    return out
