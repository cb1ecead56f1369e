"""A supervised (fine-tuning) run: config -> data -> model -> objective -> engine -> metrics.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from accelerate.utils import set_seed

from ..config import ConfigError, FinetuneConfig, save_config, to_dict
from ..data.bank import DeviceAugment
from ..data.derived import regression_stats
from ..data.domains import DatasetInfo, dataset_info
from ..data.loaders import augment_factory, eval_loaders, train_batches, train_dataset
from ..data.samplers import DatasetBalancedSampler
from ..data.shards import ShardDataset
from ..data.transforms import eval_transform
from ..data.transforms.batched import batch_train_transform
from ..engine.trainer import (
    Trainer,
    check_train_config,
    make_accelerator,
    per_process_batch,
    resolve_epochs,
)
from ..eval.evaluate import evaluate_tasks
from ..eval.predictions import write_predictions
from ..io import write_json
from ..models.build import check_dense_heads, check_model
from ..models.dense_heads import set_target_stats
from ..models.factory import is_medformer
from ..models.weights import load_encoder, load_weights
from ..objectives.class_balance import KEEPS_PRIOR, class_weights, prior_offset
from ..objectives.ssl.dist import sync_batchnorm
from ..objectives.supervised import SupervisedObjective
from .lock import RunLock
from .modes import apply_finetune_mode, check_mode, layer_decay_scales
from .resume import FINETUNE_STATE_KEYS, check_resume

logger = logging.getLogger(__name__)


def check_init(cfg: FinetuneConfig) -> None:
    """Reject init/model combinations that cannot work, before any output is written."""
    check_model(cfg.model)
    if cfg.init == "imagenet" and is_medformer(cfg.model.name):
        raise ConfigError(
            f"init=imagenet needs a timm CNN model.name; no ImageNet weights exist for {cfg.model.name} "
            "(use init=scratch or a checkpoint path)"
        )
    if cfg.model.pretrained_file and cfg.init != "imagenet":
        raise ConfigError("model.pretrained_file is used only with init=imagenet")
    if cfg.model.pretrained_file and not Path(cfg.model.pretrained_file).is_file():
        raise ConfigError(f"model.pretrained_file {cfg.model.pretrained_file} not found")
    if cfg.train.monitor == "loss":
        raise ConfigError("train.monitor=loss is for pretraining; a fine-tune monitors a val metric: "
                          "auc, acc, f1, balanced_acc or mcc")


def check_tasks(cfg: FinetuneConfig, infos: list[DatasetInfo]) -> None:
    """Segmentation/regression tasks: head kinds that fit the datasets, and the per-sample data path."""
    check_dense_heads(cfg.model, infos)
    dense = [d.flag for d in infos if d.is_dense]
    if dense and cfg.data.augment_on == "device":
        raise ConfigError(f"data.augment_on=device holds MedMNIST images only; {', '.join(dense)} "
                          "(derived targets) go through the loader: use data.augment_on=auto or loader")


def fit_batch_size(cfg: FinetuneConfig, n_train: int, num_processes: int) -> None:
    """Shrink the batch when the (label-fraction) train set is smaller than one global batch.

    The loader drops the last incomplete batch, so a too-large batch would train zero steps.
    """
    per_process = n_train // max(1, num_processes)
    if per_process < cfg.train.batch_size:
        if per_process < 1:
            raise ConfigError(f"train set has {n_train} samples, fewer than the {num_processes} processes")
        logger.warning("train set has %d samples: train.batch_size %d -> %d", n_train, cfg.train.batch_size, per_process)
        cfg.train.batch_size = per_process


def train_class_weights(train_ds, mode: str) -> tuple[dict, dict]:
    """({task: class weights}, {task: logit offset of the loss}) from the labels of each training
    dataset (MedMNIST parts and labeled shards); offsets only for modes that keep the prior."""
    weights, offsets = {}, {}
    for part in train_ds.datasets:
        base = part.base
        if isinstance(base, ShardDataset):
            labeled = [(dataset_info(flag), labels) for flag, labels in base.labels_by_dataset().items()]
        elif getattr(base, "info", None) is not None and hasattr(base, "labels"):
            labeled = [(base.info, base.labels)]
        else:
            labeled = []
        for info, labels in labeled:
            w = class_weights(labels, info.task, info.n_classes, mode)
            if w is not None:
                weights[info.flag] = w
                if mode in KEEPS_PRIOR:
                    offsets[info.flag] = prior_offset(labels, info.task, info.n_classes, w)
    return weights, offsets


def run_finetune(cfg: FinetuneConfig) -> dict:
    """Train, keep the checkpoint train.select names (best-val or last epoch), test it; returns the
    metrics.json content."""
    out = Path(cfg.output_dir)
    infos = [dataset_info(f) for f in cfg.data.datasets]  # unknown flags fail here, before any output
    check_mode(cfg.finetune_mode)
    check_init(cfg)
    check_tasks(cfg, infos)
    check_train_config(cfg.train)
    if cfg.resume:
        check_resume(cfg, FINETUNE_STATE_KEYS)
    accelerator = make_accelerator(cfg.train, out)
    cfg.train.batch_size = per_process_batch(cfg.train, accelerator.num_processes)
    set_seed(cfg.seed)
    train_ds = train_dataset(cfg.data, augment_factory(cfg.augment), cfg.seed)
    fit_batch_size(cfg, len(train_ds), accelerator.num_processes)
    resolve_epochs(cfg.train, len(train_ds), len(train_ds.datasets))
    sampler = DatasetBalancedSampler(train_ds, cfg.seed) if cfg.data.balance_datasets else None
    on_device = DeviceAugment({dim: batch_train_transform(cfg.augment, dim) for dim in ("2d", "3d")})
    loader, batch_transform = train_batches(cfg.data, train_ds, train_ds, cfg.train.batch_size, cfg.seed, sampler,
                                            accelerator.num_processes, accelerator.device, on_device)
    model, init_report = load_encoder(cfg.init, cfg.model, infos, cfg.data.size)
    target_stats = regression_stats(train_ds.datasets)  # regression heads predict in the targets' units
    set_target_stats(model, target_stats)
    if accelerator.num_processes > 1:
        model = sync_batchnorm(model)  # BatchNorm statistics over the global batch: 2 processes equal 1
    param_counts = apply_finetune_mode(model, cfg.finetune_mode)
    scales = layer_decay_scales(model, cfg.train.layer_decay)
    val = {k: accelerator.prepare(v) for k, v in eval_loaders(cfg.data, "val", cfg.train.batch_size, eval_transform()).items()}

    with RunLock(out, enabled=accelerator.is_main_process):  # the first write: one run per output_dir
        if accelerator.is_main_process:
            save_config(cfg, out / "config.yaml")
            if init_report is not None:
                (out / "init_report.json").write_text(json.dumps(init_report, indent=1))
        weights, offsets = train_class_weights(train_ds, cfg.class_weights)
        objective = SupervisedObjective(model, class_weights=weights, logit_offsets=offsets,
                                        target_scales={task: sd for task, (_, sd) in target_stats.items()})
        trainer = Trainer(
            cfg.train, objective, loader, out, accelerator,
            loss_weights=cfg.loss_weights, evaluate=lambda m: evaluate_tasks(m, val, accelerator),
            run_config=to_dict(cfg), lr_scale=lambda name: scales.get(name.removeprefix("model."), 1.0),
            batch_transform=batch_transform,
        )
        if cfg.resume:
            trainer.resume(cfg.resume)
        trainer.fit()
        metrics = evaluate_best(cfg, trainer, val, accelerator)
        if accelerator.is_main_process:
            write_json(out / "metrics.json", metrics)
            stats = trainer.stats()
            stats["epochs_to_best"] = stats["best_epoch"] + 1
            stats.update(finetune_mode=cfg.finetune_mode, batch_size=cfg.train.batch_size, parameters=param_counts)
            write_json(out / "train_stats.json", {**stats, "history": trainer.history})
        trainer.close()
    return metrics


def evaluate_best(cfg: FinetuneConfig, trainer: Trainer, val: dict, accelerator) -> dict:
    """The kept weights (best.safetensors, when kept) evaluated on val and, with train.eval_test, on test; their
    per-sample predictions are written to output_dir/predictions/."""
    out = Path(cfg.output_dir)
    if (out / "best.safetensors").is_file():
        accelerator.wait_for_everyone()
        load_weights(trainer.model, out / "best.safetensors", strict=True)
    splits = {"val": val}
    if cfg.train.eval_test:
        splits["test"] = {k: accelerator.prepare(v) for k, v in
                          eval_loaders(cfg.data, "test", cfg.train.batch_size, eval_transform()).items()}
    metrics: dict = {}
    for split, loaders in splits.items():
        def save(flag, scores, labels, split=split):
            if accelerator.is_main_process:
                write_predictions(out, flag, split, scores, labels)

        for flag, m in evaluate_tasks(trainer.model, loaders, accelerator, save).items():
            metrics.setdefault(flag, {})[split] = m
    return metrics
