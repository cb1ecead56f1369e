"""Paired comparisons on the same test images (seeds and images resampled) and the ranking of inits
over datasets (Friedman, Nemenyi critical difference)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medformer.data.domains import BINARY, MULTI_CLASS, MULTI_LABEL, ORDINAL
from medformer.eval.compare import fast_auc, friedman_nemenyi, paired_seed_bootstrap
from medformer.eval.metrics import auc


@pytest.mark.parametrize("task,k", [(BINARY, 2), (MULTI_CLASS, 4), (ORDINAL, 5), (MULTI_LABEL, 3)])
def test_fast_auc_equals_medmnist_auc(task, k):
    rng = np.random.default_rng(1)
    n = 200
    if task == MULTI_LABEL:
        labels, scores = rng.integers(0, 2, (n, k)), rng.random((n, k))
    elif task == BINARY:
        labels, scores = rng.integers(0, 2, (n, 1)), np.round(rng.random(n), 2)  # ties too
    else:
        labels, scores = rng.integers(0, k, (n, 1)), rng.dirichlet(np.ones(k), n)
    assert fast_auc(labels[None], scores[None], task)[0] == pytest.approx(auc(labels, scores, task), abs=1e-12)


def _scorers(rng, n, gap, seeds):
    labels = rng.integers(0, 2, (n, 1))
    signal = labels[:, 0].astype(float)
    return [(labels, signal * (1.0 + gap) + rng.normal(0, 1.2, n), signal + rng.normal(0, 1.2, n))
            for _ in range(seeds)]


def test_paired_bootstrap_finds_a_real_gap_and_not_a_null_one():
    rng = np.random.default_rng(0)
    real = paired_seed_bootstrap(_scorers(rng, 800, 0.6, 3), BINARY, n_resamples=400)
    assert real.significant and real.delta > 0 and real.p_value < 0.05 and real.ci_low > 0
    false_positives = sum(paired_seed_bootstrap(_scorers(rng, 300, 0.0, 2), BINARY, n_resamples=200, seed=i).significant
                          for i in range(20))
    assert false_positives <= 3  # about 5% expected
    assert 0 < real.detectable < 0.1 and real.seeds == 3 and real.n_images == 800


def test_paired_bootstrap_needs_the_same_test_images():
    rng = np.random.default_rng(0)
    (labels, a, b), = _scorers(rng, 50, 0.1, 1)
    with pytest.raises(ValueError, match="same test images"):
        paired_seed_bootstrap([(labels, a, b), (labels[::-1], a, b)], BINARY)


def test_friedman_and_nemenyi_match_demsar_example():
    """Demsar (2006), table 6 order: four methods over blocks; the CD for k=4, N=14 at 0.05 is 1.25."""
    rng = np.random.default_rng(0)
    table = {(i,): {"a": 0.9 + rng.normal(0, 0.01), "b": 0.85 + rng.normal(0, 0.01), "c": 0.84 + rng.normal(0, 0.01),
                    "d": 0.7} for i in range(14)}
    rk = friedman_nemenyi(table)
    assert rk.critical_difference == pytest.approx(1.25, abs=0.01)
    assert rk.p_value < 1e-4 and rk.mean_rank["a"] == pytest.approx(1.0) and rk.mean_rank["d"] == pytest.approx(4.0)
    assert rk.differs("a", "d") and not rk.differs("b", "c")


def test_ranking_is_not_testable_with_one_block_or_one_init():
    assert "not testable" in friedman_nemenyi({("x",): {"a": 0.8, "b": 0.7}}).note
    assert "not testable" in friedman_nemenyi({("x",): {"a": 0.8}, ("y",): {"a": 0.7}}).note
    two = friedman_nemenyi({(i,): {"a": 0.8, "b": 0.7} for i in range(6)})
    assert "sign test" in two.note and two.p_value == pytest.approx(2 / 2**6) and not math.isnan(two.critical_difference)


def _study_rows(tmp_path, gap: float, seeds=(0, 1, 2), n=400):
    """results.csv-like rows of two inits on pneumoniamnist, with saved test predictions."""
    from medformer.eval.predictions import write_predictions

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (n, 1))
    rows = []
    for init, strength in (("good", 1.0 + gap), ("plain", 1.0)):
        for s in seeds:
            cell = f"{init}-s{s}"
            scores = 1 / (1 + np.exp(-(labels[:, 0] * strength + rng.normal(0, 1.0, n))))
            write_predictions(tmp_path / cell, "pneumoniamnist", "test", scores, labels)
            rows.append({"cell_id": cell, "init": init, "dataset": "pneumoniamnist", "model": "medformer_small",
                         "mode": "full", "fraction": 1.0, "seed": s, "status": "done",
                         "test_auc": auc(labels, scores, BINARY)})
    return rows


def test_recommendation_names_the_winner_only_when_the_evidence_says_so(tmp_path):
    from medformer.study.evidence import paired_comparisons, recommendations

    clear = _study_rows(tmp_path / "clear", gap=1.0)
    (rec,) = recommendations(clear, paired_comparisons(clear, tmp_path / "clear", n_resamples=300))
    assert rec.best == "good" and rec.tied == [] and rec.against.result.significant and rec.against.result.delta > 0
    tie = _study_rows(tmp_path / "tie", gap=0.0)
    (rec,) = recommendations(tie, paired_comparisons(tie, tmp_path / "tie", n_resamples=300))
    assert rec.tied and not rec.against.result.significant
    alone = [r for r in clear if r["init"] == "good"]
    (rec,) = recommendations(alone, paired_comparisons(alone, tmp_path / "clear"))
    assert rec.against is None and "not testable" in rec.note
