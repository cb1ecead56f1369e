"""Run configuration: YAML files plus dotted `key=value` overrides, validated against dataclasses.

An unknown key or a value of the wrong type stops with a one-line `ConfigError` naming it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import UserError


class ConfigError(UserError):
    """A config file or override that does not fit the schema."""


@dataclass(frozen=True)
class Range:
    """Bounds a numeric config value must lie in (None: unbounded), declared next to its field."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, value: float) -> bool:
        return not (
            (self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt)
        )

    def __str__(self) -> str:
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {low[1:]}"
        return f"{'<=' if high[-1] == ']' else '<'} {high[:-1]}"


def ranged(default: Any, **bounds: float) -> Any:
    """A dataclass field whose loaded value must lie in Range(**bounds) (checked by the loader)."""
    return field(default=default, metadata={"range": Range(**bounds)})


PROBABILITY = {"ge": 0.0, "le": 1.0}
# val metrics of medformer.eval.metrics.medmnist_metrics, of segmentation (dice, iou) and regression
# (r2; a task without the monitored metric is scored by its own: dice, else r2); loss: pretraining
Monitor = Literal["auc", "acc", "f1", "balanced_acc", "mcc", "dice", "iou", "r2", "loss"]


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
    lr: float = ranged(1e-3, gt=0.0)
    weight_decay: float = ranged(0.05, ge=0.0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
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
    monitor: Monitor = "auc"  # val metric for best checkpoint and early stopping
    progress: bool = True
    eval_test: bool = True
    layer_decay: float = ranged(1.0, gt=0.0, le=1.0)  # Medformer layer-wise LR decay: block i of L gets lr * decay**(L - i)
    # EMA of the weights (decay; 0: off), warmed up as 1 - (1 + step) ** -0.75: what is evaluated,
    # kept as best.safetensors and tested
    ema: float = ranged(0.0, ge=0.0, lt=1.0)


def finetune_recipe() -> TrainConfig:
    """The default fine-tuning recipe, one for every dataset (docs/benchmarks.md, "Which backbone"):
    about 40k training samples, batch 32, AdamW 5e-4, EMA weights, the best-val epoch tested."""
    return TrainConfig(epochs="auto", batch_size=32, lr=5e-4, ema=0.999)


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
    # balanced_prior: balanced weights, predictions kept at the training prior
    class_weights: Literal["none", "sqrt", "balanced", "balanced_prior"] = "none"


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(map(repr, typing.get_args(tp)))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _check_range(f: dataclasses.Field, tp: Any, value: Any, key: str) -> None:
    """A number outside the Range declared in the field's metadata stops with a one-line ConfigError."""
    bounds = f.metadata.get("range")
    if bounds is None or not isinstance(value, (int, float)) or isinstance(value, bool) or bounds.holds(value):
        return
    words = [_type_name(a) for a in typing.get_args(tp) if typing.get_origin(a) is Literal]  # epochs: auto
    raise ConfigError(f"config key {key!r} must be {' or '.join([str(bounds), *words])}, got {value!r}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert, e.g. '1e-3' -> float) a value against a type hint."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = {}
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors[arg] = e
        # a mapping or list that failed inside its own schema: that error names the bad key
        for arg, err in errors.items():
            if (dataclasses.is_dataclass(arg) and isinstance(value, dict)) or (
                typing.get_origin(arg) is list and isinstance(value, (list, tuple))):
                raise err
        raise ConfigError(f"config key {key!r}: {value!r} is not a {' or '.join(map(_type_name, args))}")
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise ConfigError(f"config key {key!r} must be one of {', '.join(map(str, choices))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping of {sorted(f.name for f in dataclasses.fields(tp))}")
        return _build(tp, value, key + ".")
    if origin is list:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        _, item = typing.get_args(tp)
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"config key {key!r}: {value!r} is not a {_type_name(tp)}")


def _build(cls: type, values: dict, prefix: str = "", base: Any = None) -> Any:
    """`cls` from `values`; keys not given keep `base`'s values (else the field defaults). A nested
    section starts from its field's default, so FinetuneConfig's recipe survives `train.lr=...`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r}; valid keys under "
            f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for k, v in values.items():
        if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict):
            default = getattr(base, k) if base is not None else _field_default(fields[k])
            kwargs[k] = _build(hints[k], v, f"{prefix}{k}.", default)
        else:
            kwargs[k] = _coerce(v, hints[k], prefix + k)
            _check_range(fields[k], hints[k], kwargs[k], prefix + k)
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.epochs=5)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _set_nested(tree: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        node = tree.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key {'.'.join(path)!r}: {part!r} is not a section")
        tree = node
    tree[path[-1]] = value


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] = ()) -> Any:
    """Schema `cls` filled from a YAML file then `key=value` overrides (dotted keys)."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for item in overrides:
        key, value = parse_override(item)
        _set_nested(tree, key, value)
    return _build(cls, tree)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
