"""Configuration of a self-supervised pretraining run (`accelerate launch -m pretrain`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import DataConfig, ModelConfig, TrainConfig, ranged
from ..data.transforms import ViewConfig


@dataclass
class SSLConfig:
    """The SSL method and its heads/loss. `None` means the method's default for the model size
    (small: embed_dim <= 256, e.g. expander 3x1024; large: e.g. expander 3x8192)."""

    method: str = "vicreg"  # simclr | mocov2 | mocov3 | byol | barlowtwins | vicreg | vicreg_thesis | none
    proj_hidden_dim: int | None = ranged(None, ge=1)
    proj_output_dim: int | None = ranged(None, ge=1)
    proj_layers: int | None = ranged(None, ge=1)  # vicreg/vicreg_thesis/simclr/mocov2/mocov3
    pred_hidden_dim: int | None = ranged(None, ge=1)  # byol, mocov3
    temperature: float | None = ranged(None, gt=0.0)  # simclr, mocov2, mocov3
    queue_size: int | None = ranged(None, ge=1)  # mocov2 negatives (4096 small, 65536 large)
    momentum: float | None = ranged(None, ge=0.0, le=1.0)  # momentum-encoder EMA at step 0 (mocov2, mocov3, byol)
    momentum_end: float | None = ranged(None, ge=0.0, le=1.0)  # cosine-scheduled to this value (None: 1.0; mocov2: constant)
    predictor_lr_scale: float = ranged(1.0, gt=0.0)  # byol, mocov3: the predictor's LR as a multiple of train.lr
    barlow_lambda: float = ranged(5e-3, ge=0.0)
    vicreg_lambda: float = ranged(25.0, ge=0.0)  # invariance
    vicreg_mu: float = ranged(25.0, ge=0.0)  # variance
    vicreg_nu: float = ranged(1.0, ge=0.0)  # covariance
    thesis_cosine_weight: float = ranged(0.5, ge=0.0)  # vicreg_thesis invariance = lambda * (w_cos * (1 - cos) + w_mse * mse)
    thesis_mse_weight: float = ranged(0.5, ge=0.0)
    sync_batchnorm: bool = True  # BatchNorm statistics over all processes (world size > 1)
    max_minutes: float | None = ranged(None, gt=0.0)  # stop after this much training time (checked every step)


@dataclass
class MonitorConfig:
    """What the pretraining run watches besides the losses (which the Trainer logs)."""

    every: int = ranged(50, ge=1)  # embedding std / effective rank / collapse check every N steps
    knn_every: int = ranged(500, ge=0)  # online kNN on a labeled val split every N steps (0: off)
    knn_dataset: str | None = None  # default: the first of data.datasets
    knn_bank_size: int = ranged(1000, ge=1)  # train samples (labeled) used as the kNN bank
    knn_max_queries: int = ranged(1000, ge=1)  # val samples used as queries
    knn_k: int = ranged(20, ge=1)
    knn_temperature: float = ranged(0.07, gt=0.0)
    collapse_std: float = ranged(0.1, ge=0.0)  # warn when per-dim std of normalized embeddings < collapse_std / sqrt(D)
    collapse_rank: float = ranged(0.01, ge=0.0)  # warn when effective rank < collapse_rank * D


@dataclass
class PseudoLabelTrainConfig:
    """Pseudo-label classification (cluster labels from `medformer pseudolabel`), alone
    (ssl.method: none) or summed with the SSL objective; weight it with loss_weights."""

    labels: str | None = None  # output_dir of a `medformer pseudolabel` run over the same train splits
    balanced: bool = True  # class-balanced sampling (each cluster drawn equally often)
    label_smoothing: float = ranged(0.0, ge=0.0, lt=1.0)
    recluster_every: int = ranged(0, ge=0)  # DeepCluster-style: re-cluster with the current encoder every N epochs (0: never)
    recluster_k: int | None = ranged(None, ge=2)  # default: the number of labels in the labels file


@dataclass
class PretrainConfig:
    data: DataConfig = field(default_factory=lambda: DataConfig(
        datasets=["pneumoniamnist", "breastmnist", "retinamnist", "adrenalmnist3d"]))
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(eval_test=False, monitor="loss"))
    # one ViewConfig (views.n_views views drawn from it) or a list, one entry per view (asymmetric views)
    views: ViewConfig | list[ViewConfig] = field(default_factory=ViewConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    pseudolabel: PseudoLabelTrainConfig = field(default_factory=PseudoLabelTrainConfig)
    seed: int = ranged(0, ge=0)
    output_dir: str = "runs/pretrain"
    resume: str | None = None  # output_dir of a run to continue
    loss_weights: dict[str, float] = field(default_factory=dict)  # per loss term, e.g. ssl/variance, pseudolabel/ce


def view_list(views: ViewConfig | list[ViewConfig]) -> list[ViewConfig]:
    """One ViewConfig per view."""
    return [views] * views.n_views if isinstance(views, ViewConfig) else list(views)
