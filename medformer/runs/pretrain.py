"""A pretraining run: config -> multi-view data -> model -> SSL, pseudo-label and pretext terms -> engine.

Writes into output_dir: config.yaml, TensorBoard logs, checkpoints (Trainer), and after every
epoch (and so at the end) `encoder.safetensors` (the encoder model's state_dict, domain latents
included; `finetune init=<output_dir>` loads it) with `model_card.md` / `model_card.json`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..config import ConfigError, TrainConfig, save_config, to_dict
from ..config.pretrain import PretrainConfig, check_pretext, check_ssl, view_list
from ..config.views import check_view
from ..data.bank import DeviceAugment
from ..data.domains import dataset_info
from ..data.loaders import train_batches, train_dataset
from ..data.samplers import DatasetBalancedSampler
from ..data.transforms import MultiViewTransform, ViewConfig
from ..data.transforms.batched import batch_view_transform
from ..engine.trainer import (
    Trainer,
    check_train_config,
    make_accelerator,
    per_process_batch,
    resolve_epochs,
)
from ..eval.pretrain_monitor import KnnProbe, PretrainMonitor
from ..io import write_json
from ..models.build import build_model, check_model
from ..models.factory import add_domains
from ..models.weights import save_weights
from ..objectives.pretext import build_pretext, check_pretext_data
from ..objectives.pretrain import PretrainObjective, check_loss_weights
from ..objectives.pseudolabel import PseudoLabelTerm
from ..objectives.ssl import build_ssl_objective
from ..pseudolabels.targets import (
    BalancedSampler,
    PseudoLabeled,
    Reclustering,
    align_labels,
    class_counts,
    read_label_table,
)
from .lock import RunLock
from .model_card import ENCODER_FILE, card_markdown, method_name, model_card
from .resume import PRETRAIN_STATE_KEYS, check_resume

logger = logging.getLogger(__name__)


def check_objectives(cfg: PretrainConfig) -> None:
    ssl_on = cfg.ssl.method != "none"
    check_ssl(cfg.ssl)
    check_pretext(cfg.pretext)
    if not ssl_on and not cfg.pseudolabel.labels and not cfg.pretext.tasks:
        raise ConfigError("nothing to train: ssl.method=none needs pseudolabel.labels=<pseudolabel output_dir> "
                          "or pretext.tasks=[mae, rotation, jigsaw, inpainting]")
    check_loss_weights(cfg)
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
                      accelerator: Accelerator):
    """The pseudo-label side of a run: labelled dataset, loss term (its head added to `model`),
    class-balanced sampler (or None) and the re-clustering epoch hook (or None)."""
    pl = cfg.pseudolabel
    dataset = PseudoLabeled(dataset, align_labels(dataset, label_table))
    logger.info("pseudo-labels for %d of %d samples, %s", (dataset.labels >= 0).sum(), len(dataset),
                class_counts(dataset.labels))
    n_outputs, k = pseudolabel_head_size(cfg, dataset.labels)
    term = PseudoLabelTerm(model, n_outputs, pl.label_smoothing)
    keep_unlabeled = cfg.ssl.method != "none" or bool(cfg.pretext.tasks)  # the other terms read unlabeled samples
    sampler = BalancedSampler(dataset, cfg.seed, keep_unlabeled) if pl.balanced else None
    reclustering = None
    if pl.recluster_every:
        reclustering = Reclustering(dataset, pl.recluster_every, k, n_outputs, cfg.seed, cfg.train.batch_size,
                                    Path(cfg.output_dir), accelerator)
    return dataset, term, sampler, reclustering


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
    cfg.train.batch_size = train.batch_size = per_process_batch(train, accelerator.num_processes)
    set_seed(cfg.seed)
    views = view_list(cfg.views)
    dataset = parts = train_dataset(data, lambda dim: MultiViewTransform(views, dim), cfg.seed)
    bases = [part.base for part in dataset.datasets]
    n_samples = {base.info.flag: len(base) for base in bases}
    model = build_model(cfg.model, [base.info for base in bases], data.size)
    add_domains(model, sorted({d for base in bases for d in getattr(base, "domains", [])}))
    check_pretext_data(cfg.pretext, {base.info.dim for base in bases}, data.size, views)
    # SSL first: its momentum twins copy the encoder before the pseudo-label head is added
    ssl = build_ssl_objective(cfg.ssl.method, model, cfg.ssl) if cfg.ssl.method != "none" else None
    sampler = DatasetBalancedSampler(dataset, cfg.seed) if data.balance_datasets else None
    reclustering = pseudolabel = None
    if label_table is not None:
        dataset, pseudolabel, class_sampler, reclustering = with_pseudolabels(cfg, dataset, label_table, model,
                                                                              accelerator)
        sampler = sampler or class_sampler  # check_objectives allows at most one
    objective = PretrainObjective(model, ssl, pseudolabel, build_pretext(cfg.pretext, model), cfg.seed,
                                  cfg.ssl.sync_batchnorm)
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
        write_json(Path(output_dir) / "model_card.json", card)
        (Path(output_dir) / "model_card.md").write_text(card_markdown(card))

    trainer = Trainer(
        train, objective, loader, out, accelerator, loss_weights=cfg.loss_weights, export=export,
        run_config=to_dict(cfg), step_callback=monitor, epoch_start=reclustering,
        lr_scale=predictor_lr_scale(getattr(cfg.ssl.settings, "predictor_lr_scale", 1.0)), batch_transform=batch_transform,
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
        write_json(out / "metrics.json", metrics)
        write_json(out / "train_stats.json", {**trainer.stats(), "history": trainer.history,
                                               "stopped_by_time_budget": trainer.stopped_by_time})
    trainer.close()
    return metrics
