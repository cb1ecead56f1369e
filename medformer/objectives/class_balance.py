"""Class weights from a training set's label counts, for losses on imbalanced tasks.

Weights are computed from the labels a run trains on (after its label fraction), never written
per dataset: a class seen n_c times of N gets (N / (K n_c)) ** power, so power 1 ("balanced")
gives every class the same total weight and power 0.5 ("sqrt") halves the imbalance in log scale;
then all are scaled so that their mean over the training labels is 1 (the loss keeps its scale).

Weights alone also move the predictions towards the rare classes (balanced accuracy up, accuracy
down). "balanced_prior" keeps the balanced gradients but not that shift: the loss reads the logits
plus `prior_offset`, the shift that the weights put on a loss-minimising logit, so the logits the
model emits (and that are evaluated) stay calibrated to the training prior.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import ConfigError
from ..data.domains import BINARY, MULTI_CLASS, MULTI_LABEL

CLASS_WEIGHTS = {"none": 0.0, "sqrt": 0.5, "balanced": 1.0, "balanced_prior": 1.0}
KEEPS_PRIOR = frozenset({"balanced_prior"})  # modes whose loss adds prior_offset to the logits


def class_weights(labels: np.ndarray, task: str, n_classes: int, mode: str) -> torch.Tensor | None:
    """Per-class weights [K] (per-label positive weights [L] for multi-label), or None for "none".

    Classes absent from `labels` get weight 0 (their loss term never occurs anyway).
    """
    if mode not in CLASS_WEIGHTS:
        raise ConfigError(f"class_weights must be one of {', '.join(CLASS_WEIGHTS)}, got {mode!r}")
    power = CLASS_WEIGHTS[mode]
    if power == 0.0:
        return None
    labels = np.asarray(labels)
    if task == MULTI_LABEL:
        # positives of label l weighed as (negatives / positives) ** power, as BCE's pos_weight
        pos = labels.reshape(len(labels), -1).sum(0).astype(np.float64)
        ratio = np.where(pos > 0, (len(labels) - pos) / np.maximum(pos, 1), 1.0)
        return torch.tensor(ratio**power, dtype=torch.float32)
    counts = np.bincount(labels.reshape(-1).astype(np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = (counts.sum() / (present.sum() * counts[present])) ** power
    weights /= (weights * counts).sum() / counts.sum()
    return torch.tensor(weights, dtype=torch.float32)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def prior_offset(labels: np.ndarray, task: str, n_classes: int, weights: torch.Tensor) -> torch.Tensor:
    """The logit shift that `weights` give a loss-minimising head at the training prior.

    Adding it to the logits inside the loss (and only there) leaves the emitted logits at the
    unweighted optimum. Exact for multi-class (log w), binary (log w1/w0) and multi-label (log
    pos_weight); for ordinal heads, the shift of each cumulative logit at the prior.
    """
    w = weights.double().numpy()
    if task in (MULTI_LABEL, MULTI_CLASS):
        return torch.tensor(np.log(np.maximum(w, 1e-12)), dtype=torch.float32)
    counts = np.bincount(np.asarray(labels).reshape(-1).astype(np.int64), minlength=n_classes).astype(np.float64)
    prior = counts / counts.sum()
    weighted = prior * w / (prior * w).sum()
    # binary (one logit: P(y > 0)) and ordinal (cumulative logits P(y > k), k < K - 1)
    k = 1 if task == BINARY else n_classes - 1
    above = lambda p: np.array([p[j + 1:].sum() for j in range(k)])  # noqa: E731
    return torch.tensor(_logit(above(weighted)) - _logit(above(prior)), dtype=torch.float32)
