"""Comparing inits on the same test images: a paired bootstrap over seeds and images, and a ranking
over datasets (Friedman test, Nemenyi critical difference), as benchmark papers report them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..data.domains import BINARY, MULTI_LABEL

Z_POWER = 1.959964 + 0.841621  # two-sided alpha 0.05, power 0.8


def _binary_auc(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Row-wise ROC AUC of [R, N] labels (0/1) and scores (ties: average ranks); nan if a class is absent."""
    ranks = stats.rankdata(s, axis=-1)
    pos = y.sum(-1)
    neg = y.shape[-1] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(-1) - pos * (pos + 1) / 2) / (pos * neg)


def fast_auc(labels: np.ndarray, scores: np.ndarray, task: str) -> np.ndarray:
    """medmnist's AUC (mean one-vs-rest for multi-class and ordinal, mean per label for multi-label)
    for [R, N] rows of resampled images at once: labels [R, N, L], scores [R, N, K]."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if task == BINARY:
        s = scores[..., -1] if scores.ndim == 3 else scores
        return _binary_auc(labels[..., 0].astype(float), s)
    if task == MULTI_LABEL:
        return np.mean([_binary_auc(labels[..., j].astype(float), scores[..., j]) for j in range(scores.shape[-1])], 0)
    y = labels[..., 0]
    return np.mean([_binary_auc((y == c).astype(float), scores[..., c]) for c in range(scores.shape[-1])], 0)


@dataclass
class PairedResult:
    delta: float  # mean over seeds of AUC(a) - AUC(b)
    ci_low: float
    ci_high: float
    p_value: float
    se: float
    seeds: int
    n_images: int

    @property
    def detectable(self) -> float:
        """The difference this comparison detects with 80% power at alpha 0.05 (2.8 standard errors)."""
        return Z_POWER * self.se

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def paired_seed_bootstrap(pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], task: str,
                          n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> PairedResult:
    """AUC(a) - AUC(b) over the seeds' (labels, scores_a, scores_b) of one test set.

    Each resample draws seeds with replacement and the test images with replacement (the same images
    for both inits and every seed, since they share the test set), so the interval holds both the
    seed-to-seed variance and the test-set sampling. p: twice the share of resamples on the far side
    of 0, at least 1 / resamples.
    """
    if not pairs:
        raise ValueError("paired_seed_bootstrap needs at least one seed")
    labels = np.asarray(pairs[0][0]).reshape(len(pairs[0][0]), -1)
    n = len(labels)
    for lab, a, b in pairs:
        if len(lab) != n or len(a) != n or len(b) != n or not np.array_equal(np.asarray(lab).reshape(n, -1), labels):
            raise ValueError("paired comparisons need the same test images, in the same order, for every seed")
    per_seed = np.array([fast_auc(labels[None], np.asarray(a)[None], task)[0] -
                         fast_auc(labels[None], np.asarray(b)[None], task)[0] for _, a, b in pairs])
    rng = np.random.default_rng(seed)
    deltas = np.zeros(n_resamples)
    chunk = max(1, 200_000 // max(n, 1))
    done = 0
    while done < n_resamples:
        r = min(chunk, n_resamples - done)
        idx = rng.integers(0, n, (r, n))
        which = rng.integers(0, len(pairs), (r, len(pairs)))
        d = np.stack([fast_auc(labels[idx], np.asarray(a)[idx], task) - fast_auc(labels[idx], np.asarray(b)[idx], task)
                      for _, a, b in pairs], 1)  # [r, seeds]
        deltas[done:done + r] = np.take_along_axis(d, which, 1).mean(1)
        done += r
    deltas = deltas[~np.isnan(deltas)]
    if not len(deltas):
        return PairedResult(float(np.mean(per_seed)), math.nan, math.nan, math.nan, math.nan, len(pairs), n)
    p = min(1.0, max(1 / len(deltas), 2 * min(np.mean(deltas <= 0), np.mean(deltas >= 0))))
    low, high = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    return PairedResult(float(np.mean(per_seed)), float(low), float(high), float(p), float(np.std(deltas, ddof=1)),
                        len(pairs), n)


@dataclass
class Ranking:
    inits: list[str]
    mean_rank: dict[str, float]  # 1 = best
    blocks: int
    statistic: float
    p_value: float
    critical_difference: float
    note: str = ""

    def differs(self, a: str, b: str) -> bool:
        return abs(self.mean_rank[a] - self.mean_rank[b]) > self.critical_difference


def friedman_nemenyi(table: dict[tuple, dict[str, float]], alpha: float = 0.05) -> Ranking:
    """Friedman test of the inits over blocks (dataset x fraction, one score per init, higher better)
    and the Nemenyi critical difference of mean ranks (Demsar 2006). Blocks lacking an init are left out."""
    inits = sorted({i for row in table.values() for i in row})
    blocks = [row for row in table.values() if all(i in row and not math.isnan(row[i]) for i in inits)]
    k, n = len(inits), len(blocks)
    if k < 2 or n < 2:
        return Ranking(inits, {}, n, math.nan, math.nan, math.nan,
                       f"not testable: {k} inits over {n} complete blocks (the ranking needs >= 2 of each)")
    ranks = np.array([stats.rankdata([-row[i] for i in inits]) for row in blocks])
    mean_rank = dict(zip(inits, ranks.mean(0).tolist(), strict=True))
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    cd = float(q * math.sqrt(k * (k + 1) / (6 * n)))
    if k < 3:
        # Friedman with two inits is a sign test over the blocks
        wins = int((ranks[:, 0] < ranks[:, 1]).sum())
        ties = int((ranks[:, 0] == ranks[:, 1]).sum())
        p = float(stats.binomtest(wins, n - ties).pvalue) if n - ties else 1.0
        return Ranking(inits, mean_rank, n, float(wins), p, cd, "two inits: sign test over the blocks")
    if np.all(ranks == (k + 1) / 2):
        return Ranking(inits, mean_rank, n, 0.0, 1.0, cd, "every init tied in every block")
    res = stats.friedmanchisquare(*ranks.T)
    return Ranking(inits, mean_rank, n, float(res.statistic), float(res.pvalue), cd)
