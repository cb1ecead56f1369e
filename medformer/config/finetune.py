"""Schema of a fine-tuning run (`accelerate launch -m finetune`); its data, model, train and
augmentation sections are shared with pretraining."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .loader import PROBABILITY, ranged

# val metrics of medformer.eval.metrics.medmnist_metrics, of segmentation (dice, iou) and regression
# (r2; a task without the monitored metric is scored by its own: dice, else r2); loss: pretraining
Monitor = Literal["auc", "acc", "f1", "balanced_acc", "mcc", "dice", "iou", "r2", "loss"]
# LR schedule after the warmup; multistep: x0.1 at 50% and 75% of the steps (MedMNIST's protocol)
Schedule = Literal["cosine", "onecycle", "constant", "multistep"]


@dataclass
class DataConfig:
    root: str | None = None  # folder with the official npz files; else $MEDMNIST_ROOT, ~/.medmnist
    datasets: list[str] = field(default_factory=lambda: ["pneumoniamnist"])
    size: int = ranged(28, ge=1)
    download: bool = False
    verify_md5: bool = True
    num_workers: int = ranged(0, ge=0)
    label_fraction: float = ranged(1.0, gt=0.0, le=1.0)  # stratified subset of the training labels
    balance_datasets: bool = False  # draw each training dataset equally often (else each image equally often)
    batch_by_dataset: bool = False  # each (global) batch from one training dataset, instead of mixed batches
    max_train_samples: int | None = ranged(None, ge=1)  # per dataset, for smoke runs
    dicom_cache: str | None = None  # pretrain only: an ingested DICOM cache (e.g. <pseudolabel output_dir>/dicom_cache)
    # shard sets written by `medformer shards` (corpora larger than memory): their images train beside
    # the others; a dataset whose train split is in a shard set is read from there, not from its npz
    shards: list[str] = field(default_factory=list)
    # where training images are augmented: device = held in memory as uint8 (on the GPU when there is
    # one), gathered and augmented per batch on the batch's device; loader = per sample in the
    # DataLoader (streaming); auto = device when the training images fit in in_memory_gb
    augment_on: Literal["auto", "device", "loader"] = "auto"
    in_memory_gb: float = ranged(8.0, gt=0.0)


@dataclass
class AugmentConfig:
    enabled: bool = True
    randaugment_n: int = ranged(2, ge=0)
    randaugment_m: int = ranged(8, ge=0, le=30)
    hflip: float = ranged(0.5, **PROBABILITY)
    vflip: float = ranged(0.0, **PROBABILITY)
    rotate_degrees: float = ranged(10.0, ge=0.0, le=180.0)
    crop_scale: float = ranged(0.85, gt=0.0, le=1.0)  # min area fraction of the random resized crop
    flip_3d: float = ranged(0.5, **PROBABILITY)  # per axis
    rot90_3d: float = ranged(0.5, **PROBABILITY)
    rotate_3d_degrees: float = ranged(10.0, ge=0.0, le=180.0)
    rotate_3d_axes: int = ranged(2, ge=0, le=3)  # small rotations about this many of the volume's 3 axes
    intensity_3d: float = ranged(0.1, ge=0.0)


@dataclass
class ModelConfig:
    name: str = "medformer_small"  # a Medformer size (README), or a timm model name (resnet18, resnet18_28, ...)
    drop_path: float = ranged(0.0, ge=0.0, lt=1.0)
    dropout: float = ranged(0.0, ge=0.0, lt=1.0)
    # recompute activations in the backward pass instead of keeping them (the body blocks and the Input
    # Adaptformer of a Medformer, timm's own for a 2D CNN): less memory, about a third more compute
    grad_checkpointing: bool = False
    # MedformerConfig fields ({depth: 2} for tiny test models), or timm.create_model kwargs for timm models
    overrides: dict[str, Any] = field(default_factory=dict)
    pretrained_file: str | None = None  # local timm weights for init=imagenet (offline)
    # head of segmentation/regression tasks: transformer (task latents attend the encoder's tokens) or
    # cnn (a convolutional decoder / regressor over its feature maps); dense_heads: per task, {flag: kind}
    dense_head: Literal["transformer", "cnn"] = "cnn"
    dense_heads: dict[str, str] = field(default_factory=dict)


@dataclass
class TrainConfig:
    # auto: ceil(auto_samples x training datasets / training images) epochs, so a small dataset gets
    # more passes (with data.balance_datasets, each dataset of a multi-task run about auto_samples)
    epochs: int | Literal["auto"] = ranged(10, ge=1)
    auto_samples: int = ranged(40_000, ge=1)
    batch_size: int = ranged(128, ge=1)  # per process
    # the batch over all processes (and nodes); when set, batch_size becomes global_batch_size / processes,
    # so a run on 2 nodes trains like one process at the same global batch
    global_batch_size: int | None = ranged(None, ge=1)
    lr: float = ranged(1e-3, gt=0.0)
    weight_decay: float = ranged(0.05, ge=0.0)
    schedule: Schedule = "cosine"
    warmup_epochs: float = ranged(1.0, ge=0.0)
    grad_accum: int = ranged(1, ge=1)
    grad_clip: float = ranged(1.0, ge=0.0)  # max gradient norm (0: off)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    log_every: int = ranged(10, ge=1)
    max_steps: int | None = ranged(None, ge=1)  # optimizer steps; stops early (budgets, tests)
    max_minutes: float | None = ranged(None, gt=0.0)  # training-time budget (not deterministic: benchmarks only)
    # steps | time: with time, LR (and momentum) schedules follow training time / max_minutes and the
    # run ends at max_minutes; epochs and max_steps only set the warmup's share (warmup / total steps)
    schedule_by: Literal["steps", "time"] = "steps"
    checkpoint_every: int = ranged(0, ge=0)  # extra checkpoint every N optimizer steps (0: epoch ends only)
    early_stopping: int = ranged(0, ge=0)  # patience in epochs on the val metric (0: off)
    # val metric for best checkpoint and early stopping; an epoch with val MCC <= 0 on some task (at chance
    # level, e.g. all one class) is kept as best only while every epoch has been
    monitor: Monitor = "auc"
    # which epoch's weights are kept as best.safetensors and tested: best_val (by `monitor`, as above) or
    # last (the final epoch's, or the last one not at chance level when the final one is; val still sets
    # best_epoch and early stopping)
    select: Literal["best_val", "last"] = "best_val"
    progress: bool = True
    eval_test: bool = True
    layer_decay: float = ranged(1.0, gt=0.0, le=1.0)  # Medformer layer-wise LR decay: block i of L gets lr * decay**(L - i)
    # EMA of the weights (decay; 0: off), warmed up as 1 - (1 + step) ** -0.75: what is evaluated,
    # kept as best.safetensors and tested
    ema: float = ranged(0.0, ge=0.0, lt=1.0)


def finetune_recipe() -> TrainConfig:
    """The default fine-tuning recipe, one for every dataset (docs/benchmarks.md, "Which backbone"):
    about 80k training samples, batch 32, AdamW 5e-4, the last epoch's EMA weights tested."""
    return TrainConfig(epochs="auto", auto_samples=80_000, batch_size=32, lr=5e-4, ema=0.999, select="last")


@dataclass
class FinetuneConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=finetune_recipe)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = ranged(0, ge=0)
    output_dir: str = "runs/finetune"
    init: str = "scratch"  # scratch | imagenet | path to a checkpoint dir or .safetensors
    resume: str | None = None  # output_dir of a run to continue
    loss_weights: dict[str, float] = field(default_factory=dict)  # per task; default 1
    finetune_mode: Literal["full", "linear_probe", "head_only"] = "full"  # see medformer.runs.modes
    # loss weight of each class from the training labels' counts (medformer.objectives.class_balance);
    # balanced_prior: balanced weights, predictions kept at the training prior. sqrt is the recipe's:
    # AdrenalMNIST3D stopped predicting only the majority class (MCC 0.10 -> 0.40 over 3 seeds) at a
    # cost within the seeds' spread elsewhere (docs/benchmarks.md, "Which backbone")
    class_weights: Literal["none", "sqrt", "balanced", "balanced_prior"] = "sqrt"
