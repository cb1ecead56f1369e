"""Statistics across seeds, as RadiologyNET: Kruskal-Wallis over the inits, then pairwise
Mann-Whitney U tests with Bonferroni correction."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


@dataclass
class KruskalResult:
    statistic: float
    pvalue: float
    sizes: dict[str, int]
    note: str = ""


@dataclass
class PairResult:
    a: str
    b: str
    u: float
    pvalue: float
    p_bonferroni: float


def _clean(groups: dict[str, Sequence[float]]) -> dict[str, list[float]]:
    """Drop nan values and empty groups."""
    out = {k: [float(v) for v in vs if not math.isnan(float(v))] for k, vs in groups.items()}
    return {k: v for k, v in out.items() if v}


def kruskal_wallis(groups: dict[str, Sequence[float]]) -> KruskalResult:
    """H test across groups; nan when fewer than two groups have values, p = 1 when all tie."""
    clean = _clean(groups)
    sizes = {k: len(v) for k, v in clean.items()}
    if len(clean) < 2:
        return KruskalResult(math.nan, math.nan, sizes, "fewer than two groups with results")
    if len({v for vs in clean.values() for v in vs}) == 1:  # scipy gives nan or raises here
        return KruskalResult(math.nan, 1.0, sizes, "all values identical")
    res = stats.kruskal(*clean.values())
    return KruskalResult(float(res.statistic), float(res.pvalue), sizes)


def bonferroni(pvalues: Sequence[float]) -> list[float]:
    """p * number of tests, capped at 1 (nan stays nan)."""
    m = len(pvalues)
    return [p if math.isnan(p) else min(1.0, p * m) for p in pvalues]


def pairwise_mann_whitney(groups: dict[str, Sequence[float]]) -> list[PairResult]:
    """Two-sided Mann-Whitney U for every pair of groups with values, Bonferroni-corrected."""
    clean = _clean(groups)
    pairs = list(itertools.combinations(clean, 2))
    raw = []
    for a, b in pairs:
        if len(set(clean[a]) | set(clean[b])) == 1:
            raw.append((math.nan, 1.0))  # all tied
            continue
        res = stats.mannwhitneyu(clean[a], clean[b], alternative="two-sided")
        raw.append((float(res.statistic), float(res.pvalue)))
    corrected = bonferroni([p for _, p in raw])
    return [PairResult(a, b, u, p, pc) for (a, b), (u, p), pc in zip(pairs, raw, corrected, strict=True)]


def min_attainable_p(n_a: int, n_b: int) -> float:
    """Smallest two-sided exact Mann-Whitney p for groups of these sizes (2 / C(n_a + n_b, n_a))."""
    return min(1.0, 2 / math.comb(n_a + n_b, n_a)) if n_a and n_b else math.nan
