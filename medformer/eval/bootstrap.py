"""Paired bootstrap of a metric difference between two scorers of the same test images: is
encoder A's probe better than encoder B's, beyond the luck of which images are in the test split?"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .metrics import auc

Metric = Callable[[np.ndarray, np.ndarray, str], float]


def paired_bootstrap(
    labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, task: str,
    metric: Metric = auc, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05,
) -> dict[str, float]:
    """metric(a) - metric(b) on the test set, a percentile (1 - alpha) interval over image
    resamples (the same images for both), and a two-sided p: twice the share of resamples
    on the far side of 0, at least 1 / resamples (no finer claim is possible). Resamples where
    the metric is undefined (a class missing) are skipped."""
    labels, scores_a, scores_b = map(np.asarray, (labels, scores_a, scores_b))
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(labels), len(labels))
        d = metric(labels[idx], scores_a[idx], task) - metric(labels[idx], scores_b[idx], task)
        if not math.isnan(d):
            deltas.append(d)
    delta = metric(labels, scores_a, task) - metric(labels, scores_b, task)
    if not deltas:
        return {"delta": delta, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "n_resamples": 0}
    d = np.asarray(deltas)
    p = min(1.0, max(1 / len(d), 2 * min(np.mean(d <= 0), np.mean(d >= 0))))
    low, high = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    return {"delta": float(delta), "ci_low": float(low), "ci_high": float(high), "p_value": float(p),
            "n_resamples": len(d)}
