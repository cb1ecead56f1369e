"""Schema of a pretraining run (`accelerate launch -m pretrain`): each SSL method's settings
(`ssl.<method>.<knob>`), pseudo-label classification, the pretext tasks and their weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .finetune import DataConfig, ModelConfig, TrainConfig
from .loader import ConfigError, ranged
from .views import ViewConfig

# A knob left at None takes the method's small- or large-model default (small: embed_dim <= 256 for
# Medformer, e.g. a 3 x 1024 VICReg expander; large: 3 x 8192); the method's file holds that pair.


@dataclass
class SimCLRConfig:
    proj_hidden_dim: int | None = ranged(None, ge=1)  # 1024 small, 2048 large
    proj_output_dim: int | None = ranged(None, ge=1)  # 128 small, 256 large
    proj_layers: int = ranged(2, ge=1)
    temperature: float | None = ranged(None, gt=0.0)  # 0.2 small, 0.1 large


@dataclass
class MoCoV2Config:
    proj_hidden_dim: int | None = ranged(None, ge=1)  # 1024 small, 2048 large
    proj_output_dim: int = ranged(128, ge=1)
    proj_layers: int = ranged(2, ge=1)
    temperature: float = ranged(0.2, gt=0.0)
    queue_size: int | None = ranged(None, ge=1)  # negatives: 4096 small, 65536 large
    momentum: float | None = ranged(None, ge=0.0, le=1.0)  # key-encoder EMA, constant: 0.99 small, 0.999 large
    momentum_end: float | None = ranged(None, ge=0.0, le=1.0)  # cosine-scheduled to this value (None: constant)


@dataclass
class MoCoV3Config:
    proj_hidden_dim: int | None = ranged(None, ge=1)  # 1024 small, 4096 large
    proj_output_dim: int = ranged(256, ge=1)
    proj_layers: int = ranged(3, ge=1)
    pred_hidden_dim: int | None = ranged(None, ge=1)  # None: proj_hidden_dim
    temperature: float = ranged(0.2, gt=0.0)
    momentum: float = ranged(0.99, ge=0.0, le=1.0)  # momentum-encoder EMA at step 0
    momentum_end: float = ranged(1.0, ge=0.0, le=1.0)  # cosine-scheduled to this value
    predictor_lr_scale: float = ranged(1.0, gt=0.0)  # the predictor's LR as a multiple of train.lr


@dataclass
class BYOLConfig:
    proj_hidden_dim: int | None = ranged(None, ge=1)  # 1024 small, 4096 large
    proj_output_dim: int = ranged(256, ge=1)
    pred_hidden_dim: int | None = ranged(None, ge=1)  # None: proj_hidden_dim
    momentum: float = ranged(0.99, ge=0.0, le=1.0)  # target EMA at step 0
    momentum_end: float = ranged(1.0, ge=0.0, le=1.0)  # cosine-scheduled to this value
    predictor_lr_scale: float = ranged(1.0, gt=0.0)  # the predictor's LR as a multiple of train.lr


@dataclass
class BarlowTwinsConfig:
    proj_hidden_dim: int | None = ranged(None, ge=1)  # 1024 small, 8192 large
    proj_output_dim: int | None = ranged(None, ge=1)  # None: proj_hidden_dim
    lambda_offdiag: float = ranged(5e-3, ge=0.0)  # weight of the off-diagonal (redundancy) term


@dataclass
class VICRegConfig:
    proj_hidden_dim: int | None = ranged(None, ge=1)  # 1024 small, 8192 large
    proj_output_dim: int | None = ranged(None, ge=1)  # None: proj_hidden_dim
    proj_layers: int = ranged(3, ge=1)
    invariance_weight: float = ranged(25.0, ge=0.0)  # lambda
    variance_weight: float = ranged(25.0, ge=0.0)  # mu
    covariance_weight: float = ranged(1.0, ge=0.0)  # nu


@dataclass
class VICRegThesisConfig(VICRegConfig):
    """VICReg whose invariance is invariance_weight * (cosine_weight * (1 - cos) + mse_weight * MSE)."""

    cosine_weight: float = ranged(0.5, ge=0.0)
    mse_weight: float = ranged(0.5, ge=0.0)


SSLMethod = Literal["simclr", "mocov2", "mocov3", "byol", "barlowtwins", "vicreg", "vicreg_thesis", "none"]


@dataclass
class SSLConfig:
    """The SSL method and its own settings: `ssl.<method>.<knob>` (only the chosen method's section
    may differ from its defaults). `none`: no SSL term (pseudo-label classification alone)."""

    method: SSLMethod = "vicreg"
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    mocov2: MoCoV2Config = field(default_factory=MoCoV2Config)
    mocov3: MoCoV3Config = field(default_factory=MoCoV3Config)
    byol: BYOLConfig = field(default_factory=BYOLConfig)
    barlowtwins: BarlowTwinsConfig = field(default_factory=BarlowTwinsConfig)
    vicreg: VICRegConfig = field(default_factory=VICRegConfig)
    vicreg_thesis: VICRegThesisConfig = field(default_factory=VICRegThesisConfig)
    sync_batchnorm: bool = True  # BatchNorm statistics over all processes (world size > 1)
    max_minutes: float | None = ranged(None, gt=0.0)  # stop after this much training time (checked every step)

    @property
    def settings(self) -> Any:
        """The chosen method's settings (None for `none`)."""
        return None if self.method == "none" else getattr(self, self.method)


def check_ssl(cfg: SSLConfig) -> None:
    """Settings given for a method that does not run are a mistake (a typo of ssl.method, or a leftover)."""
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if dataclasses.is_dataclass(section) and f.name != cfg.method and section != type(section)():
            changed = [k.name for k in dataclasses.fields(section) if getattr(section, k.name) != k.default]
            raise ConfigError(f"config key 'ssl.{f.name}.{changed[0]}' is set, but ssl.method is {cfg.method!r}: "
                              f"set ssl.method={f.name} or drop the ssl.{f.name} settings")


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
class MAEConfig:
    """Masked modelling: mask a share of the patch tokens, reconstruct their pixels (Medformer only)."""

    mask_ratio: float = ranged(0.75, gt=0.0, lt=1.0)  # share of patch tokens hidden from the encoder
    norm_pix: bool = True  # targets are each patch's pixels normalised by the patch's own mean and std
    decoder_width: int | None = ranged(None, ge=1)  # None: the model's hidden_dim
    decoder_depth: int = ranged(1, ge=1)  # cross-attention blocks of the pixel decoder


@dataclass
class RotationConfig:
    """Predict which of the rotations by multiples of 90 degrees was applied (any encoder)."""

    axes: list[Literal["x", "y", "z"]] | None = None  # None: z for images (in-plane), x, y and z for volumes
    head_hidden_dim: int | None = ranged(None, ge=1)  # None: the encoder's width


@dataclass
class JigsawConfig:
    """Predict which permutation of a fixed set shuffled the tiles (any encoder)."""

    grid: int = ranged(2, ge=2)  # tiles per side: grid x grid for images, grid^3 sub-volumes for volumes
    n_permutations: int = ranged(24, ge=2)  # size of the fixed permutation set (all of them if fewer exist)
    head_hidden_dim: int | None = ranged(None, ge=1)  # None: the encoder's width


@dataclass
class InpaintingConfig:
    """Context restoration (Models Genesis): corrupt boxes of the image, restore the whole image (Medformer only)."""

    corruption: Literal["inpaint", "shuffle", "both"] = "both"  # noise-filled boxes, pixels shuffled per patch, or either
    boxes: int = ranged(3, ge=1)  # boxes per image
    box_min: float = ranged(0.1, gt=0.0, le=1.0)  # box side as a share of the image side, drawn in [box_min, box_max]
    box_max: float = ranged(0.3, gt=0.0, le=1.0)
    decoder_width: int | None = ranged(None, ge=1)  # None: the model's hidden_dim
    decoder_depth: int = ranged(1, ge=1)


PretextTask = Literal["mae", "rotation", "jigsaw", "inpainting"]


@dataclass
class PretextConfig:
    """Pretext tasks trained beside (or instead of) the SSL method: `pretext.tasks` and their settings
    `pretext.<task>.<knob>`; each one's loss is a named term (mae/mse, rotation/ce, jigsaw/ce, inpainting/mse)."""

    tasks: list[PretextTask] = field(default_factory=list)
    mae: MAEConfig = field(default_factory=MAEConfig)
    rotation: RotationConfig = field(default_factory=RotationConfig)
    jigsaw: JigsawConfig = field(default_factory=JigsawConfig)
    inpainting: InpaintingConfig = field(default_factory=InpaintingConfig)


def check_pretext(cfg: PretextConfig) -> None:
    """Settings of a task that does not run are a mistake, as for ssl.<method>; box_min <= box_max."""
    if len(set(cfg.tasks)) != len(cfg.tasks):
        raise ConfigError(f"pretext.tasks lists a task twice: {cfg.tasks}")
    for name in ("mae", "rotation", "jigsaw", "inpainting"):
        section = getattr(cfg, name)
        if name not in cfg.tasks and section != type(section)():
            changed = [k.name for k in dataclasses.fields(section) if getattr(section, k.name) != k.default]
            raise ConfigError(f"config key 'pretext.{name}.{changed[0]}' is set, but {name} is not in pretext.tasks: "
                              f"add it to pretext.tasks or drop the pretext.{name} settings")
    if cfg.inpainting.box_min > cfg.inpainting.box_max:
        raise ConfigError(f"pretext.inpainting.box_min ({cfg.inpainting.box_min}) must be <= box_max "
                          f"({cfg.inpainting.box_max})")


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
    pretext: PretextConfig = field(default_factory=PretextConfig)
    seed: int = ranged(0, ge=0)
    output_dir: str = "runs/pretrain"
    resume: str | None = None  # output_dir of a run to continue
    loss_weights: dict[str, float] = field(default_factory=dict)  # per loss term (default 1), e.g. ssl/variance, pseudolabel/ce, mae/mse


def view_list(views: ViewConfig | list[ViewConfig]) -> list[ViewConfig]:
    """One ViewConfig per view."""
    return [views] * views.n_views if isinstance(views, ViewConfig) else list(views)
