"""Frozen-encoder evaluation: features of `model.encode`, a linear probe and a weighted kNN.

Scores come out in medmnist.Evaluator's layout (binary: P(y=1); multi-class/ordinal: class
probabilities; multi-label: per-label probabilities) and go through `medmnist_metrics`, so AUC
and ACC are the Evaluator's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..config import DataConfig, ModelConfig
from ..data.batch import collate
from ..data.domains import BINARY, MULTI_LABEL, dataset_info
from ..data.loaders import SeededTransform, eval_loaders, medmnist_split
from ..data.transforms import eval_transform
from ..errors import UserError
from ..models.weights import load_encoder, run_model_config
from .metrics import medmnist_metrics

logger = logging.getLogger(__name__)

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # inverse L2 strengths tried on the val split when C is None


@torch.no_grad()
def extract_features(model: nn.Module, loader, device: torch.device | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, D] float32, labels [N, L]) of `model.encode` over a single-task loader
    (labels [N, 0] when the batches carry none, e.g. an unlabeled clustering pool)."""
    was_training = model.training
    model.eval()
    if device is None:
        device = next(model.parameters()).device
    feats, labels = [], []
    try:
        for batch in loader:
            x = model.encode(batch["inputs"].to(device)).float().cpu()
            feats.append(x)
            (target,) = batch["targets"].values() if "targets" in batch else (torch.zeros(len(x), 0),)
            labels.append(target.reshape(len(target), -1).cpu())
    finally:
        model.train(was_training)
    if not feats:
        return np.zeros((0, 0), dtype=np.float32), np.zeros((0, 0), dtype=np.float32)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def _n_classes(task: str, labels: Sequence[np.ndarray], n_classes: int | None) -> int:
    if task == MULTI_LABEL:
        return labels[0].shape[1]
    if n_classes is not None:
        return n_classes
    return int(max(np.max(y) for y in labels)) + 1


def _to_evaluator_layout(class_scores: np.ndarray, task: str) -> np.ndarray:
    """[N, K] class (or label) scores -> the Evaluator's layout (binary: P(y=1) [N])."""
    return class_scores[:, 1] if task == BINARY else class_scores


def linear_probe_scores(
    train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, task: str,
    n_classes: int | None = None, C: float = 1.0, max_iter: int = 1000, test_labels: np.ndarray | None = None,
) -> np.ndarray:
    """Logistic regression on standardized features; scores of the test features.

    Multi-class and ordinal: one multinomial model over the classes; binary: P(y=1); multi-label:
    one-vs-rest, one binary model per label.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_feats)
    x_train, x_test = scaler.transform(train_feats), scaler.transform(test_feats)
    if task == MULTI_LABEL:
        clf = OneVsRestClassifier(LogisticRegression(C=C, max_iter=max_iter)).fit(x_train, train_labels.astype(int))
        return clf.predict_proba(x_test)
    y = train_labels.reshape(-1).astype(int)
    k = _n_classes(task, [y] if test_labels is None else [y, test_labels.reshape(-1)], n_classes)
    clf = LogisticRegression(C=C, max_iter=max_iter).fit(x_train, y)
    scores = np.zeros((len(x_test), k))
    scores[:, clf.classes_] = clf.predict_proba(x_test)  # classes absent from train keep score 0
    return _to_evaluator_layout(scores, task)


def linear_probe(
    train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, test_labels: np.ndarray,
    task: str, n_classes: int | None = None, C: float = 1.0, max_iter: int = 1000,
) -> dict[str, float]:
    """medmnist metrics (auc, acc, f1, balanced_acc, mcc) of a linear probe."""
    scores = linear_probe_scores(train_feats, train_labels, test_feats, task, n_classes, C, max_iter, test_labels)
    return medmnist_metrics(test_labels, scores, task)


def select_C(
    train_feats: np.ndarray, train_labels: np.ndarray, val_feats: np.ndarray, val_labels: np.ndarray,
    task: str, n_classes: int | None = None, grid: Sequence[float] = C_GRID,
) -> float:
    """The C of `grid` whose probe has the best val AUC (ties: the stronger regularization), so
    every encoder gets its own regularization and the test split stays unseen."""
    aucs = [linear_probe(train_feats, train_labels, val_feats, val_labels, task, n_classes, C=c)["auc"] for c in grid]
    return grid[int(np.argmax(aucs))]


@torch.no_grad()
def knn_scores(
    train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, task: str,
    k: int = 20, temperature: float = 0.07, n_classes: int | None = None, chunk: int = 1024,
    test_labels: np.ndarray | None = None,
) -> np.ndarray:
    """Cosine kNN with weights exp(sim / T) (Wu et al. 2018): class scores sum to 1 per query;
    multi-label: weighted mean of each label of the neighbours."""
    bank = F.normalize(torch.as_tensor(train_feats, dtype=torch.float32), dim=1)
    queries = F.normalize(torch.as_tensor(test_feats, dtype=torch.float32), dim=1)
    if task == MULTI_LABEL:
        targets = torch.as_tensor(train_labels, dtype=torch.float32)
    else:
        y = torch.as_tensor(train_labels.reshape(-1).astype(np.int64))
        labels = [train_labels.reshape(-1)] + ([] if test_labels is None else [test_labels.reshape(-1)])
        targets = F.one_hot(y, _n_classes(task, labels, n_classes)).float()
    k = min(k, len(bank))
    out = []
    for start in range(0, len(queries), chunk):
        sim, idx = (queries[start:start + chunk] @ bank.T).topk(k, dim=1)
        weights = (sim / temperature).softmax(dim=1)  # = exp(sim/T) / sum: numerically safe
        out.append(torch.einsum("qk,qkc->qc", weights, targets[idx]))
    return _to_evaluator_layout(torch.cat(out).numpy(), task)


def knn_eval(
    train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, test_labels: np.ndarray,
    task: str, k: int = 20, temperature: float = 0.07, n_classes: int | None = None,
) -> dict[str, float]:
    """medmnist metrics of the weighted kNN classifier."""
    scores = knn_scores(train_feats, train_labels, test_feats, task, k, temperature, n_classes, test_labels=test_labels)
    return medmnist_metrics(test_labels, scores, task)


class PixelEncoder(nn.Module):
    """The no-encoder baseline (`init="pixels"`): `encode` returns each image's pixels, flattened,
    so probes show what a linear model or kNN gets from the raw images alone."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)  # gives the module a device

    def encode(self, inputs) -> torch.Tensor:
        if len(inputs.groups) != 1:
            raise UserError("init=pixels needs images of one shape per batch; probe one dataset at a time")
        ((images, rows),) = inputs.groups
        return images.flatten(1)[torch.argsort(rows)]  # back to batch order


def run_probe(
    init: str,
    datasets: Sequence[str],
    root: str | None = None,
    model_cfg: ModelConfig | None = None,
    size: int = 28,
    splits: Sequence[str] = ("val", "test"),
    methods: Sequence[str] = ("linear", "knn"),
    batch_size: int = 256,
    max_train: int | None = None,
    label_fraction: float = 1.0,
    k: int = 20,
    temperature: float = 0.07,
    C: float | None = None,
    seed: int = 0,
    keep_scores: bool = False,
) -> dict:
    """Linear probe and kNN of a frozen encoder on each dataset's train split, scored on `splits`.

    `init`: "scratch" (random encoder: the baseline), "pixels" (no encoder: the flattened images),
    or a checkpoint file / run folder (its config.yaml supplies the model when `model_cfg` is
    None). `label_fraction` < 1 keeps a stratified subset (seeded by `seed`) of the train split,
    then `max_train` caps it. `C`: the probe's inverse L2 strength; None picks it from C_GRID on
    the val split. Returns
    {flag: {method: {split: metrics}}, "_init": {...load summary...}, "_linear_C": {flag: C}}, plus
    "_scores": {flag: {split: {"labels": [N, L], method: Evaluator-layout scores}}} with `keep_scores`
    (for paired comparisons of encoders on the same images).
    """

    bad = [m for m in methods if m not in ("linear", "knn")]
    if bad:
        raise UserError(f"unknown probe method {bad[0]!r}; use linear and/or knn")
    infos = [dataset_info(f) for f in datasets]
    if init == "pixels":
        model, summary = PixelEncoder(), {"init": init, "model": "pixels"}
    else:
        model_cfg = model_cfg or (run_model_config(init) if init != "scratch" else None) or ModelConfig()
        model, report = load_encoder(init, model_cfg, infos, size, seed=seed)
        summary = {"init": init, "model": model_cfg.name, **{k: len(v) for k, v in (report or {}).items()}}
    data = DataConfig(root=root, datasets=list(datasets), size=size, max_train_samples=max_train)
    results: dict = {"_init": summary, "_linear_C": {}, **({"_scores": {}} if keep_scores else {})}
    for info in infos:
        train = SeededTransform(medmnist_split(data, info.flag, "train", seed, label_fraction), eval_transform(), 0)
        feats = {"train": extract_features(model, DataLoader(train, batch_size=batch_size, collate_fn=collate))}
        choose_C = "linear" in methods and C is None
        for split in {*splits, *(["val"] if choose_C else [])}:
            loader = eval_loaders(data, split, batch_size, eval_transform(), [info.flag])[info.flag]
            feats[split] = extract_features(model, loader)
        (x_train, y_train) = feats["train"]
        n_classes = None if info.task == MULTI_LABEL else info.n_classes
        if "linear" in methods:
            c = select_C(x_train, y_train, *feats["val"], info.task, n_classes) if choose_C else C
            results["_linear_C"][info.flag] = c
        per_method: dict = {}
        for method in methods:
            per_method[method] = {}
            for split in splits:
                x, y = feats[split]
                if method == "linear":
                    scores = linear_probe_scores(x_train, y_train, x, info.task, n_classes, C=c, test_labels=y)
                else:
                    scores = knn_scores(x_train, y_train, x, info.task, k, temperature, n_classes, test_labels=y)
                per_method[method][split] = medmnist_metrics(y, scores, info.task)
                if keep_scores:
                    results["_scores"].setdefault(info.flag, {}).setdefault(split, {"labels": y})[method] = scores
        results[info.flag] = per_method
    return results


def summarize_test(results: dict, datasets: Sequence[str]) -> dict:
    """{flag: {method: {"auc", "acc"} (+ "C" for linear)}} of a `run_probe` result scored on test."""
    out = {}
    for flag in datasets:
        out[flag] = {m: {k: per_split["test"][k] for k in ("auc", "acc")} for m, per_split in results[flag].items()}
        if "linear" in out[flag]:
            out[flag]["linear"]["C"] = results["_linear_C"][flag]
    return out
