"""Configuration of a self-supervised pretraining run (`accelerate launch -m pretrain`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import DataConfig, ModelConfig, TrainConfig
from ..data.transforms import ViewConfig


@dataclass
class SSLConfig:
    """The SSL method and its heads/loss. `None` means the method's default for the model size
    (small: embed_dim <= 256, e.g. expander 3x1024; large: e.g. expander 3x8192)."""

    method: str = "vicreg"  # simclr | mocov2 | mocov3 | byol | barlowtwins | vicreg | vicreg_thesis | none
    proj_hidden_dim: int | None = None
    proj_output_dim: int | None = None
    proj_layers: int | None = None  # vicreg/vicreg_thesis/simclr/mocov2/mocov3
    pred_hidden_dim: int | None = None  # byol, mocov3
    temperature: float | None = None  # simclr, mocov2, mocov3
    queue_size: int | None = None  # mocov2 negatives (4096 small, 65536 large)
    momentum: float | None = None  # momentum-encoder EMA at step 0 (mocov2, mocov3, byol)
    momentum_end: float | None = None  # cosine-scheduled to this value (None: 1.0; mocov2: constant)
    predictor_lr_scale: float = 1.0  # byol, mocov3: the predictor's LR as a multiple of train.lr
    barlow_lambda: float = 5e-3
    vicreg_lambda: float = 25.0  # invariance
    vicreg_mu: float = 25.0  # variance
    vicreg_nu: float = 1.0  # covariance
    thesis_cosine_weight: float = 0.5  # vicreg_thesis invariance = lambda * (w_cos * (1 - cos) + w_mse * mse)
    thesis_mse_weight: float = 0.5
    sync_batchnorm: bool = True  # BatchNorm statistics over all processes (world size > 1)
    max_minutes: float | None = None  # stop after this much training time (checked every step)


@dataclass
class MonitorConfig:
    """What the pretraining run watches besides the losses (which the Trainer logs)."""

    every: int = 50  # embedding std / effective rank / collapse check every N steps
    knn_every: int = 500  # online kNN on a labeled val split every N steps (0: off)
    knn_dataset: str | None = None  # default: the first of data.datasets
    knn_bank_size: int = 1000  # train samples (labeled) used as the kNN bank
    knn_max_queries: int = 1000  # val samples used as queries
    knn_k: int = 20
    knn_temperature: float = 0.07
    collapse_std: float = 0.1  # warn when per-dim std of normalized embeddings < collapse_std / sqrt(D)
    collapse_rank: float = 0.01  # warn when effective rank < collapse_rank * D


@dataclass
class PseudoLabelTrainConfig:
    """Pseudo-label classification (cluster labels from `medformer pseudolabel`), alone
    (ssl.method: none) or summed with the SSL objective; weight it with loss_weights."""

    labels: str | None = None  # output_dir of a `medformer pseudolabel` run over the same train splits
    balanced: bool = True  # class-balanced sampling (each cluster drawn equally often)
    label_smoothing: float = 0.0
    recluster_every: int = 0  # DeepCluster-style: re-cluster with the current encoder every N epochs (0: never)
    recluster_k: int | None = None  # default: the number of labels in the labels file


@dataclass
class PretrainConfig:
    data: DataConfig = field(default_factory=lambda: DataConfig(
        datasets=["pneumoniamnist", "breastmnist", "retinamnist", "adrenalmnist3d"]))
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(eval_test=False, monitor="loss"))
    views: ViewConfig = field(default_factory=ViewConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    pseudolabel: PseudoLabelTrainConfig = field(default_factory=PseudoLabelTrainConfig)
    seed: int = 0
    output_dir: str = "runs/pretrain"
    resume: str | None = None  # output_dir of a run to continue
    loss_weights: dict[str, float] = field(default_factory=dict)  # per loss term, e.g. ssl/variance, pseudolabel/ce
