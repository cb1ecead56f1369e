"""Our AUC/ACC equal medmnist.Evaluator's on the same scores, for every task type."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from medmnist import Evaluator

from medformer.data.synthetic import write_synthetic_npz
from medformer.eval.metrics import medmnist_metrics
from medformer.models.heads import logits_to_scores
from medformer.objectives.losses import task_loss


def evaluator_scores(flag, split, root, scores):
    ev = Evaluator(flag, split, root=str(root))
    return ev.labels, ev.evaluate(scores)


@pytest.mark.parametrize("flag", ["pneumoniamnist", "breastmnist", "retinamnist", "adrenalmnist3d"])
def test_equals_evaluator_on_real_files(shared_root, flag):
    rng = np.random.default_rng(0)
    labels = np.load(shared_root / f"{flag}.npz")["test_labels"]
    info_task = {"retinamnist": "ordinal-regression"}.get(flag, "binary-class")
    n = len(labels)
    # informative but imperfect scores in each head's layout
    if info_task == "binary-class":
        logits = torch.tensor(labels[:, 0] * 1.5 + rng.normal(size=n), dtype=torch.float32).reshape(-1, 1)
    else:
        logits = torch.tensor((labels[:, :1] > np.arange(4)) * 2.0 + rng.normal(size=(n, 4)), dtype=torch.float32)
    scores = logits_to_scores(logits, info_task).numpy()
    ev_labels, (ev_auc, ev_acc) = evaluator_scores(flag, "test", shared_root, scores)
    ours = medmnist_metrics(labels, scores, info_task)
    assert ours["auc"] == ev_auc and ours["acc"] == ev_acc
    assert 0.5 < ours["auc"] < 1.0


@pytest.mark.parametrize("flag,task", [("pathmnist", "multi-class"), ("chestmnist", "multi-label, binary-class"),
                                       ("nodulemnist3d", "binary-class"), ("retinamnist", "ordinal-regression")])
def test_equals_evaluator_every_task_type(tmp_path, flag, task):
    write_synthetic_npz(tmp_path, flag, n=(8, 8, 60), seed=1)
    labels = np.load(tmp_path / f"{flag}.npz")["test_labels"]
    rng = np.random.default_rng(1)
    width = {"multi-class": 9, "multi-label, binary-class": 14, "binary-class": 1, "ordinal-regression": 4}[task]
    scores = logits_to_scores(torch.tensor(rng.normal(size=(len(labels), width)), dtype=torch.float32), task).numpy()
    _, (ev_auc, ev_acc) = evaluator_scores(flag, "test", tmp_path, scores)
    ours = medmnist_metrics(labels, scores, task)
    assert ours["auc"] == pytest.approx(ev_auc, abs=0) and ours["acc"] == ev_acc
    assert set(ours) == {"auc", "acc", "f1", "balanced_acc", "mcc"}


def test_ordinal_scores_are_probabilities_and_loss_orders_grades():
    logits = torch.tensor([[5.0, 5.0, -5.0, -5.0], [-5.0, -5.0, -5.0, -5.0]])
    probs = logits_to_scores(logits, "ordinal-regression")
    torch.testing.assert_close(probs.sum(1), torch.ones(2), atol=1e-4, rtol=0)
    assert probs.argmax(1).tolist() == [2, 0]
    good = task_loss(logits, torch.tensor([2, 0]), "ordinal-regression")
    bad = task_loss(logits, torch.tensor([0, 4]), "ordinal-regression")
    assert good < bad


def test_extra_metrics_on_perfect_predictions():
    labels = np.array([[0], [1], [1], [0]])
    m = medmnist_metrics(labels, np.array([0.1, 0.9, 0.8, 0.2]), "binary-class")
    assert m == {"auc": 1.0, "acc": 1.0, "f1": 1.0, "balanced_acc": 1.0, "mcc": 1.0}
