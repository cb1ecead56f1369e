"""Class weights from a training set's label counts, for losses on imbalanced tasks.

Weights are computed from the labels a run trains on (after its label fraction), never written
per dataset: a class seen n_c times of N gets (N / (K n_c)) ** power, so power 1 ("balanced")
gives every class the same total weight and power 0.5 ("sqrt") halves the imbalance in log scale.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import ConfigError
from ..data.domains import MULTI_LABEL

CLASS_WEIGHTS = {"none": 0.0, "sqrt": 0.5, "balanced": 1.0}


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
    return torch.tensor(weights, dtype=torch.float32)
