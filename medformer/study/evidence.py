"""The study's evidence from the cells' saved test predictions: paired comparisons of the inits on
every test image (seeds combined), their ranking over datasets and label fractions, and the
recommendation computed from both."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import ttest_ind

from ..data.domains import dataset_info
from ..eval.compare import PairedResult, Ranking, friedman_nemenyi, paired_seed_bootstrap
from ..eval.predictions import read_predictions

Setting = tuple[str, str, str, float]  # dataset, model, mode, label fraction


@dataclass
class Comparison:
    setting: Setting
    a: str
    b: str
    result: PairedResult | None
    note: str = ""
    welch_p: float | None = None  # Welch's t-test of the two inits' per-seed test AUCs (unpaired, two-sided)


@dataclass
class Recommendation:
    setting: Setting
    best: str | None
    mean_auc: float
    against: Comparison | None  # best against the runner-up
    tied: list[str]  # inits the evidence cannot tell apart from the best
    note: str = ""


def _done_by_setting(rows: list[dict]) -> dict[Setting, dict[str, dict[int, dict]]]:
    out: dict[Setting, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r["status"] == "done" and not dataset_info(r["dataset"]).is_dense:  # AUC-based
            out[(r["dataset"], r["model"], r["mode"], float(r["fraction"]))][r["init"]][int(r["seed"])] = r
    return out


def _test_aucs(cells: dict[int, dict]) -> list[float]:
    return [v for v in (float(r["test_auc"]) for r in cells.values()) if not math.isnan(v)]


def _mean_auc(cells: dict[int, dict]) -> float:
    values = _test_aucs(cells)
    return float(np.mean(values)) if values else math.nan


def welch_p(cells_a: dict[int, dict], cells_b: dict[int, dict]) -> float | None:
    """Two-sided Welch t-test of the per-seed test AUCs (None under two seeds a side or no spread):
    the comparison over pretraining and fine-tuning seeds of the retired SSL seed summary, beside the
    paired bootstrap, which also uses every test image."""
    a, b = _test_aucs(cells_a), _test_aucs(cells_b)
    if min(len(a), len(b)) < 2 or np.std(a) + np.std(b) == 0:
        return None
    return float(ttest_ind(a, b, equal_var=False).pvalue)


def compare_pair(setting: Setting, a: str, b: str, cells_a: dict[int, dict], cells_b: dict[int, dict],
                 cells_root: Path, n_resamples: int) -> Comparison:
    seeds = sorted(set(cells_a) & set(cells_b))
    if not seeds:
        return Comparison(setting, a, b, None, "not testable: no seed finished for both")
    pairs = []
    for s in seeds:
        pa = read_predictions(cells_root / cells_a[s]["cell_id"], setting[0])
        pb = read_predictions(cells_root / cells_b[s]["cell_id"], setting[0])
        if pa is None or pb is None:
            return Comparison(setting, a, b, None, "not testable: a cell saved no test predictions (rerun it)")
        pairs.append((pa[0], pa[1], pb[1]))
    try:
        result = paired_seed_bootstrap(pairs, dataset_info(setting[0]).task, n_resamples=n_resamples)
    except ValueError as e:
        return Comparison(setting, a, b, None, f"not testable: {e}")
    note = "1 seed: the interval holds the test-set sampling only" if len(seeds) == 1 else ""
    return Comparison(setting, a, b, result, note, welch_p(cells_a, cells_b))


def paired_comparisons(rows: list[dict], cells_root: Path, n_resamples: int = 1000) -> list[Comparison]:
    """Every pair of inits in every setting, the better-scoring init first."""
    out = []
    for setting, by_init in sorted(_done_by_setting(rows).items()):
        ranked = sorted(by_init, key=lambda i: (-_mean_auc(by_init[i]), i))
        for a, b in itertools.combinations(ranked, 2):
            out.append(compare_pair(setting, a, b, by_init[a], by_init[b], cells_root, n_resamples))
    return out


def recommendations(rows: list[dict], comparisons: list[Comparison]) -> list[Recommendation]:
    """Per setting: the init with the best mean test AUC, and whether the evidence says it wins."""
    by_pair = {(c.setting, c.a, c.b): c for c in comparisons}
    out = []
    for setting, by_init in sorted(_done_by_setting(rows).items()):
        ranked = sorted(by_init, key=lambda i: (-_mean_auc(by_init[i]), i))
        best = ranked[0]
        if len(ranked) < 2:
            out.append(Recommendation(setting, best, _mean_auc(by_init[best]), None, [],
                                      "not testable: one init finished"))
            continue
        against = [by_pair[(setting, best, other)] for other in ranked[1:]]
        untested = [c for c in against if c.result is None]
        tied = [c.b for c in against if c.result is not None and not c.result.significant]
        note = untested[0].note if untested else ""
        out.append(Recommendation(setting, best, _mean_auc(by_init[best]), against[0], tied, note))
    return out


def ranking(rows: list[dict]) -> dict[tuple[str, str], Ranking]:
    """Friedman / Nemenyi ranking of the inits per (model, mode), blocks = (dataset, label fraction)."""
    tables: dict[tuple[str, str], dict[tuple, dict[str, float]]] = defaultdict(dict)
    for (dataset, model, mode, fraction), by_init in _done_by_setting(rows).items():
        tables[(model, mode)][(dataset, fraction)] = {i: _mean_auc(cells) for i, cells in by_init.items()}
    return {key: friedman_nemenyi(table) for key, table in sorted(tables.items())}
