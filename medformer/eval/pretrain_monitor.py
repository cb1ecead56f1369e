"""What a pretraining run watches as it goes: the loss window, embedding collapse, online kNN."""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..config import DataConfig
from ..config.pretrain import MonitorConfig, PretrainConfig
from ..data.batch import collate
from ..data.domains import MULTI_LABEL, dataset_info
from ..data.loaders import SeededTransform, medmnist_split
from ..data.transforms import eval_transform
from ..objectives.pretrain import PretrainObjective
from ..objectives.ssl import CollapseDetector
from .probe import extract_features, knn_eval


class KnnProbe:
    """Online kNN of the current encoder: a labeled train subset as bank, val samples as queries."""

    def __init__(self, data: DataConfig, monitor: MonitorConfig, batch_size: int):
        self.flag = monitor.knn_dataset or data.datasets[0]
        self.info = dataset_info(self.flag)
        self.monitor = monitor
        self.bank = self._loader(medmnist_split(data, self.flag, "train"), monitor.knn_bank_size, batch_size)
        self.queries = self._loader(medmnist_split(data, self.flag, "val"), monitor.knn_max_queries, batch_size)

    @staticmethod
    def _loader(ds, limit: int, batch_size: int) -> DataLoader:
        if limit and len(ds) > limit:
            ds = ds.subset(np.linspace(0, len(ds) - 1, limit).round().astype(np.int64))  # spread, deterministic
        return DataLoader(SeededTransform(ds, eval_transform(), 0), batch_size=batch_size, collate_fn=collate)

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        x_bank, y_bank = extract_features(model, self.bank)
        x_query, y_query = extract_features(model, self.queries)
        n_classes = None if self.info.task == MULTI_LABEL else self.info.n_classes
        metrics = knn_eval(x_bank, y_bank, x_query, y_query, self.info.task, self.monitor.knn_k,
                           self.monitor.knn_temperature, n_classes)
        return {f"knn/{self.flag}/{k}": v for k, v in metrics.items() if k in ("auc", "acc")}


class PretrainMonitor:
    """The Trainer's step callback: loss window, collapse detector, online kNN.

    Collapse statistics and kNN run on the main process (every rank calls this).
    """

    def __init__(self, cfg: PretrainConfig, accelerator: Accelerator, knn: KnnProbe | None = None):
        self.cfg = cfg
        self.acc = accelerator
        self.knn = knn
        self.detector = CollapseDetector(cfg.monitor.collapse_std, cfg.monitor.collapse_rank)
        self.window: deque[dict[str, float]] = deque(maxlen=max(1, cfg.monitor.every))
        self.embedding: dict[str, float] = {}
        self.embedding_step = -1
        self.objective: PretrainObjective | None = None
        self.knn_metrics: dict[str, float] = {}

    def global_losses(self, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """The step's loss terms averaged over processes (the objective's terms are the same on every
        rank, and their mean over ranks is the global-batch loss)."""
        keys = sorted(losses)
        values = torch.stack([losses[k].detach().float().reshape(()) for k in keys])
        if self.acc.num_processes > 1:
            values = self.acc.reduce(values, "mean")
        return dict(zip(keys, values.tolist(), strict=True))

    def recent_losses(self) -> dict[str, float]:
        """Mean of each loss term over the last `monitor.every` steps (averaged over processes)."""
        keys = {k for entry in self.window for k in entry}
        return {k: float(np.mean([e[k] for e in self.window if k in e])) for k in sorted(keys)}

    def update_embedding(self, step: int) -> dict[str, float]:
        """Collapse statistics of the last batch's embeddings (main process), once per step."""
        if self.objective is not None and self.objective.last_embeddings is not None and step != self.embedding_step:
            self.embedding = self.detector(self.objective.last_embeddings, step)
            self.embedding_step = step
        return self.embedding

    def __call__(self, step: int, objective: PretrainObjective) -> dict[str, float] | None:
        logs: dict[str, float] = {}
        self.objective = objective
        self.window.append(self.global_losses(objective.last_losses))
        if self.acc.is_main_process:
            if step % self.cfg.monitor.every == 0 or step == 1:
                logs.update(self.update_embedding(step))
                if objective.pseudolabel is not None:
                    logs["pseudolabel/train_acc"] = objective.last_accuracy
            every = self.cfg.monitor.knn_every
            if self.knn is not None and every and step % every == 0:
                self.knn_metrics = self.knn(objective.model)
                logs.update(self.knn_metrics)
        return logs or None
