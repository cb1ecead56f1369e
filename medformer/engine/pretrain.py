"""A pretraining run: config -> multi-view data -> model -> SSL and/or pseudo-label objective -> engine.

Writes into output_dir: config.yaml, TensorBoard logs, checkpoints (Trainer), and after every
epoch (and so at the end) `encoder.safetensors` (the encoder model's state_dict, domain latents
included; `finetune init=<output_dir>` loads it) with `model_card.md` / `model_card.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from ..config import ConfigError, DataConfig, TrainConfig, save_config, to_dict
from ..data.bank import DeviceAugment
from ..data.batch import collate
from ..data.domains import MULTI_LABEL, dataset_info
from ..data.loaders import SeededTransform, medmnist_split, train_batches, train_dataset
from ..data.samplers import DatasetBalancedSampler
from ..data.transforms import MultiViewTransform, ViewConfig, eval_transform
from ..data.transforms.batched import batch_view_transform
from ..data.transforms.views import check_view
from ..eval.probe import extract_features, knn_eval
from ..models.factory import add_domains
from ..objectives.pseudolabel import PseudoLabelObjective
from ..objectives.ssl import SSL_METHODS, CollapseDetector, SSLObjective, build_ssl_objective
from ..objectives.ssl_config import MonitorConfig, PretrainConfig, view_list
from ..pseudolabels.targets import (
    BalancedSampler,
    PseudoLabeled,
    Reclustering,
    align_labels,
    class_counts,
    read_label_table,
)
from .build import build_model, check_model
from .checkpoint import save_weights
from .lock import RunLock
from .resume import PRETRAIN_STATE_KEYS, check_resume
from .trainer import Trainer, check_train_config, make_accelerator, resolve_epochs

logger = logging.getLogger(__name__)

ENCODER_FILE = "encoder.safetensors"


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
        self.objective: SSLObjective | None = None
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

    def __call__(self, step: int, objective: SSLObjective | PseudoLabelObjective) -> dict[str, float] | None:
        logs: dict[str, float] = {}
        self.objective = objective
        self.window.append(self.global_losses(objective.last_losses))
        if self.acc.is_main_process:
            if step % self.cfg.monitor.every == 0 or step == 1:
                logs.update(self.update_embedding(step))
                if isinstance(objective, PseudoLabelObjective):
                    logs["pseudolabel/train_acc"] = objective.last_accuracy
            every = self.cfg.monitor.knn_every
            if self.knn is not None and every and step % every == 0:
                self.knn_metrics = self.knn(objective.model)
                logs.update(self.knn_metrics)
        return logs or None


def method_name(cfg: PretrainConfig) -> str:
    """vicreg, pseudolabel, or vicreg+pseudolabel."""
    parts = [cfg.ssl.method] if cfg.ssl.method != "none" else []
    return "+".join(parts + (["pseudolabel"] if cfg.pseudolabel.labels else []))


def model_card(cfg: PretrainConfig, trainer: Trainer, monitor: PretrainMonitor, n_samples: dict[str, int]) -> dict:
    st = trainer.state
    return {
        "kind": "medformer pretrained encoder",
        "method": method_name(cfg),
        "weights": ENCODER_FILE,
        "model": {"name": cfg.model.name, "overrides": cfg.model.overrides,
                  "embed_dim": int(getattr(trainer.model, "embed_dim", 0))},
        "datasets": {flag: {"dim": dataset_info(flag).dim, "train_images": n} for flag, n in n_samples.items()},
        "image_size": cfg.data.size,
        "steps": st.step,
        "epochs_completed": st.epoch,
        "samples_seen": st.samples_seen,
        "train_seconds": round(st.train_seconds, 1),
        "samples_per_second": round(st.samples_seen / st.train_seconds, 1) if st.train_seconds else None,
        "stopped_by_time_budget": trainer.stopped_by_time,
        "final_loss": monitor.recent_losses(),
        "embedding": monitor.update_embedding(st.step),
        "knn": monitor.knn_metrics,
        "num_processes": trainer.acc.num_processes,
        "device": str(trainer.acc.device),
        "torch": torch.__version__,
        "host": platform.node(),
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "use": "finetune ... init=<this folder> (loads encoder.safetensors)",
        "config": to_dict(cfg),
    }


def card_markdown(card: dict) -> str:
    lines = [
        f"# medformer encoder: {card['method']} on {', '.join(card['datasets'])}",
        "",
        f"- model: `{card['model']['name']}` {card['model']['overrides'] or ''} (embedding dim {card['model']['embed_dim']})",
        f"- weights: `{card['weights']}` (state_dict of the encoder model, domain latents included)",
        f"- training: {card['steps']} steps, {card['samples_seen']} samples seen, {card['train_seconds']} s "
        f"({card['samples_per_second']} img/s) on {card['num_processes']} x {card['device']}, torch {card['torch']}"
        + (" (stopped by the time budget)" if card["stopped_by_time_budget"] else ""),
        "",
        "| dataset | dim | train images |",
        "|---|---|---|",
        *[f"| {flag} | {d['dim']} | {d['train_images']} |" for flag, d in card["datasets"].items()],
        "",
        "Final loss terms (mean of the last steps): "
        + (", ".join(f"`{k}` {v:.4f}" for k, v in card["final_loss"].items()) or "n/a"),
        "",
        "Embedding health: " + (", ".join(f"{k} {v:.4g}" for k, v in card["embedding"].items()) or "n/a"),
        "",
        "Online kNN: " + (", ".join(f"{k} {v:.4f}" for k, v in card["knn"].items()) or "n/a"),
        "",
        f"Use: {card['use']}. Full config in model_card.json.",
        "",
    ]
    return "\n".join(lines)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    tmp.replace(path)


def check_objectives(cfg: PretrainConfig) -> None:
    ssl_on = cfg.ssl.method != "none"
    if ssl_on and cfg.ssl.method not in SSL_METHODS:
        raise ConfigError(f"unknown ssl.method {cfg.ssl.method!r}; choose from {', '.join(sorted(SSL_METHODS))}, none")
    if not ssl_on and not cfg.pseudolabel.labels:
        raise ConfigError("nothing to train: ssl.method=none needs pseudolabel.labels=<pseudolabel output_dir>")
    views = view_list(cfg.views)
    for i, view in enumerate(views):
        check_view(view, "views" if isinstance(cfg.views, ViewConfig) else f"views[{i}]")
    n_views = len(views)
    if ssl_on and n_views < 2:
        raise ConfigError(f"SSL needs at least 2 views (views.n_views, or a list of views), got {n_views}")
    if n_views < 1:
        raise ConfigError(f"views.n_views must be >= 1, got {n_views}")
    if cfg.monitor.knn_every and not (cfg.monitor.knn_dataset or cfg.data.datasets):
        raise ConfigError("the online kNN needs a labeled MedMNIST dataset: set monitor.knn_dataset=<flag> "
                         "or monitor.knn_every=0")
    if cfg.data.balance_datasets and cfg.pseudolabel.labels and cfg.pseudolabel.balanced:
        raise ConfigError("data.balance_datasets and pseudolabel.balanced both choose the sampling: set one to false")
    if cfg.pseudolabel.recluster_every < 0:
        raise ConfigError(f"pseudolabel.recluster_every must be >= 0, got {cfg.pseudolabel.recluster_every}")


def check_predictor_lr(cfg: PretrainConfig, objective: SSLObjective | None) -> None:
    scale = cfg.ssl.predictor_lr_scale
    if scale <= 0:
        raise ConfigError(f"ssl.predictor_lr_scale must be > 0, got {scale}")
    if scale != 1.0 and not hasattr(objective, "predictor"):
        raise ConfigError(f"ssl.predictor_lr_scale={scale} needs a method with a predictor (byol, mocov3), "
                         f"not ssl.method={cfg.ssl.method}")


def predictor_lr_scale(scale: float) -> Callable[[str], float]:
    """The Trainer's per-parameter LR factor: `scale` for the SSL predictor, 1 elsewhere."""
    return lambda name: scale if "predictor" in name.split(".") else 1.0


def train_config(cfg: PretrainConfig) -> TrainConfig:
    """cfg.train with `ssl.max_minutes` (the older name of the budget) folded into train.max_minutes."""
    budgets = [m for m in (cfg.train.max_minutes, cfg.ssl.max_minutes) if m is not None]
    return dataclasses.replace(cfg.train, max_minutes=min(budgets) if budgets else None)


def pseudolabel_head_size(cfg: PretrainConfig, labels: np.ndarray) -> tuple[int, int]:
    """(head outputs, k of re-clustering): the head covers the file's labels and the new k."""
    in_file = int(labels.max()) + 1
    k = cfg.pseudolabel.recluster_k or in_file
    if k < 2:
        raise ConfigError(f"pseudolabel.recluster_k must be >= 2, got {k}")
    return max(in_file, k), k


def with_pseudolabels(cfg: PretrainConfig, dataset, label_table: dict, model: torch.nn.Module,
                      ssl: SSLObjective | None, accelerator: Accelerator):
    """The pseudo-label side of a run: labelled dataset, objective (around `ssl` if given),
    class-balanced sampler (or None) and the re-clustering epoch hook (or None)."""
    pl = cfg.pseudolabel
    dataset = PseudoLabeled(dataset, align_labels(dataset, label_table))
    logger.info("pseudo-labels for %d of %d samples, %s", (dataset.labels >= 0).sum(), len(dataset),
                class_counts(dataset.labels))
    n_outputs, k = pseudolabel_head_size(cfg, dataset.labels)
    objective = PseudoLabelObjective(model, n_outputs, ssl, pl.label_smoothing, cfg.ssl.sync_batchnorm)
    sampler = BalancedSampler(dataset, cfg.seed, keep_unlabeled=ssl is not None) if pl.balanced else None
    reclustering = None
    if pl.recluster_every:
        reclustering = Reclustering(dataset, pl.recluster_every, k, n_outputs, cfg.seed, cfg.train.batch_size,
                                    Path(cfg.output_dir), accelerator)
    return dataset, objective, sampler, reclustering


def run_pretrain(cfg: PretrainConfig) -> dict:
    """Pretrain, exporting the encoder each epoch; returns the content of metrics.json."""
    out = Path(cfg.output_dir)
    check_objectives(cfg)
    train = train_config(cfg)
    check_train_config(train)
    label_table = read_label_table(cfg.pseudolabel.labels) if cfg.pseudolabel.labels else None
    for flag in cfg.data.datasets:
        dataset_info(flag)  # unknown flags fail before any output
    check_model(cfg.model)
    if cfg.resume:
        check_resume(cfg, PRETRAIN_STATE_KEYS)
    if cfg.data.label_fraction < 1.0:
        logger.warning("pretraining ignores data.label_fraction=%s: all train images are used unlabeled",
                       cfg.data.label_fraction)
    data = dataclasses.replace(cfg.data, label_fraction=1.0)
    accelerator = make_accelerator(cfg.train, out)
    set_seed(cfg.seed)
    views = view_list(cfg.views)
    dataset = parts = train_dataset(data, lambda dim: MultiViewTransform(views, dim), cfg.seed)
    bases = [part.base for part in dataset.datasets]
    n_samples = {base.info.flag: len(base) for base in bases}
    model = build_model(cfg.model, [base.info for base in bases], data.size)
    add_domains(model, sorted({d for base in bases for d in getattr(base, "domains", [])}))
    objective = build_ssl_objective(cfg.ssl.method, model, cfg.ssl) if cfg.ssl.method != "none" else None
    check_predictor_lr(cfg, objective)
    sampler = DatasetBalancedSampler(dataset, cfg.seed) if data.balance_datasets else None
    reclustering = None
    if label_table is not None:
        dataset, objective, class_sampler, reclustering = with_pseudolabels(cfg, dataset, label_table, model,
                                                                            objective, accelerator)
        sampler = sampler or class_sampler  # check_objectives allows at most one
    on_device = DeviceAugment(views={dim: [batch_view_transform(v, dim) for v in views] for dim in ("2d", "3d")})
    loader, batch_transform = train_batches(data, dataset, parts, cfg.train.batch_size, cfg.seed, sampler,
                                            accelerator.num_processes, accelerator.device, on_device)
    resolve_epochs(train, len(dataset), len(parts.datasets))
    knn = None
    if cfg.monitor.knn_every and accelerator.is_main_process:
        knn = KnnProbe(data, cfg.monitor, cfg.train.batch_size)
    monitor = PretrainMonitor(cfg, accelerator, knn)
    with RunLock(out, enabled=accelerator.is_main_process):  # the first write: one run per output_dir
        return fit_and_export(cfg, train, objective, loader, accelerator, monitor, reclustering, n_samples,
                              batch_transform)


def fit_and_export(cfg: PretrainConfig, train: TrainConfig, objective: torch.nn.Module, loader, accelerator: Accelerator,
                   monitor: PretrainMonitor, reclustering: Reclustering | None, n_samples: dict[str, int],
                   batch_transform: Callable[[dict], dict] | None = None) -> dict:
    """Train with the encoder exported each epoch; metrics.json and train_stats.json at the end."""
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        save_config(cfg, out / "config.yaml")

    def export(encoder: torch.nn.Module, output_dir: Path) -> None:
        card = model_card(cfg, trainer, monitor, n_samples)
        save_weights(encoder, Path(output_dir) / ENCODER_FILE, {"method": method_name(cfg), "step": trainer.state.step})
        _write_json(Path(output_dir) / "model_card.json", card)
        (Path(output_dir) / "model_card.md").write_text(card_markdown(card))

    trainer = Trainer(
        train, objective, loader, out, accelerator, loss_weights=cfg.loss_weights, export=export,
        run_config=to_dict(cfg), step_callback=monitor, epoch_start=reclustering,
        lr_scale=predictor_lr_scale(cfg.ssl.predictor_lr_scale), batch_transform=batch_transform,
    )
    if cfg.resume:
        trainer.resume(cfg.resume)
    trainer.fit()
    metrics = {
        "method": method_name(cfg),
        "steps": trainer.state.step,
        "final_loss": monitor.recent_losses(),
        "embedding": monitor.embedding,
        "knn": monitor.knn_metrics,
    }
    if reclustering is not None:
        metrics["reclustering"] = reclustering.history
    if accelerator.is_main_process:
        _write_json(out / "metrics.json", metrics)
        _write_json(out / "train_stats.json", {**trainer.stats(), "history": trainer.history,
                                               "stopped_by_time_budget": trainer.stopped_by_time})
    trainer.close()
    return metrics
