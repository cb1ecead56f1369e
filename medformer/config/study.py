"""Schema of a transfer study (`medformer study`): the grid of fine-tuning cells (init x model x
dataset x fraction x seed x mode) and the pretraining stages made before it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .loader import ranged

DEFAULT_BASELINES = "../shared/reference/published_baselines.csv"  # relative to the repository
# a cell's fine-tuning mode (medformer.runs.modes), or a classifier on the frozen encoder's features:
# knn (cosine, k=20), logreg (logistic regression, its L2 strength chosen on val: the SSL benchmark's probe)
StudyMode = Literal["full", "linear_probe", "head_only", "knn", "logreg"]
FROZEN_MODES = ("knn", "logreg")
Isolation = Literal["subprocess", "workers", "inprocess"]


@dataclass
class StudyDataConfig:
    root: str | None = None  # MedMNIST npz folder (else $MEDMNIST_ROOT, ~/.medmnist)
    size: int = ranged(28, ge=1)
    datasets: list[str] = field(default_factory=lambda: ["pneumoniamnist"])


@dataclass
class ExplainConfig:
    enabled: bool = True
    per_group: int = ranged(2, ge=1)  # test images per TP/FP/FN/TN group (correct/wrong for non-binary tasks)


@dataclass
class StageConfig:
    """A pretraining-side run made before the grid (see medformer.study.stages)."""

    config: str = ""  # YAML of the command (relative to the working directory or the repository)
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted or nested keys; "pseudolabels:<name>" refs


@dataclass
class StudyConfig:
    data: StudyDataConfig = field(default_factory=StudyDataConfig)
    inits: dict[str, str] = field(default_factory=lambda: {"scratch": "scratch"})  # name -> scratch | imagenet | checkpoint path
    models: list[str] = field(default_factory=lambda: ["medformer_small"])
    label_fractions: list[float] = field(default_factory=lambda: [1.0])
    seeds: list[int] = field(default_factory=lambda: [0])
    modes: list[StudyMode] = field(default_factory=lambda: ["full"])
    finetune: dict[str, Any] = field(default_factory=dict)  # finetune overrides for every cell (dotted or nested keys)
    # model name -> finetune overrides for that model's cells, after `finetune` (e.g. a slower CNN's LR schedule)
    model_finetune: dict[str, dict[str, Any]] = field(default_factory=dict)
    base_config: str | None = None  # finetune YAML every cell starts from (else FinetuneConfig defaults)
    output_dir: str = "runs/study"
    published_baselines: str | None = DEFAULT_BASELINES  # CSV of published results; null: none
    # subprocess: a `python -m finetune` process per cell; workers: `jobs` long-lived processes that
    # each run cells one after another (no per-cell import cost); inprocess: this process (tests)
    isolation: Isolation = "subprocess"
    jobs: int = ranged(1, ge=1)  # cells run at once (subprocess and workers isolation)
    threads: int | None = ranged(None, ge=1)  # torch/OMP threads per cell; null: inherit
    retry_failed: bool = True  # rerun failed cells on the next invocation
    keep_resume_state: bool = False  # keep cells/<id>/checkpoints/last after a cell is done (~12 MB each, small model)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    pseudolabels: dict[str, StageConfig] = field(default_factory=dict)  # name -> `medformer pseudolabel` run
    pretrain: dict[str, StageConfig] = field(default_factory=dict)  # name -> `pretrain` run; inits "pretrain:<name>"
    # each pretrain stage runs once per seed (with seed=<seed>, in pretrain/<name>/seed<seed>) and the cells
    # of seed s start from the run of seed s: the seeds then span pretraining too, so the paired statistics,
    # which resample the seeds, hold its variance (the pretraining-seed protocol of the SSL benchmark)
    pretrain_per_seed: bool = False
