"""StudyConfig: the grid of fine-tuning cells (init x model x dataset x fraction x seed x mode)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BASELINES = "../shared/reference/published_baselines.csv"  # relative to the repository
ISOLATIONS = ("subprocess", "inprocess")


@dataclass
class StudyDataConfig:
    root: str | None = None  # MedMNIST npz folder (else $MEDMNIST_ROOT, ~/.medmnist)
    size: int = 28
    datasets: list[str] = field(default_factory=lambda: ["pneumoniamnist"])


@dataclass
class ExplainConfig:
    enabled: bool = True
    per_group: int = 2  # test images per TP/FP/FN/TN group (correct/wrong for non-binary tasks)


@dataclass
class StudyConfig:
    data: StudyDataConfig = field(default_factory=StudyDataConfig)
    inits: dict[str, str] = field(default_factory=lambda: {"scratch": "scratch"})  # name -> scratch | imagenet | checkpoint path
    models: list[str] = field(default_factory=lambda: ["medformer_small"])
    label_fractions: list[float] = field(default_factory=lambda: [1.0])
    seeds: list[int] = field(default_factory=lambda: [0])
    modes: list[str] = field(default_factory=lambda: ["full"])  # full | linear_probe | head_only
    finetune: dict[str, Any] = field(default_factory=dict)  # finetune overrides for every cell (dotted or nested keys)
    base_config: str | None = None  # finetune YAML every cell starts from (else FinetuneConfig defaults)
    output_dir: str = "runs/study"
    published_baselines: str | None = DEFAULT_BASELINES  # CSV of published results; null: none
    isolation: str = "subprocess"  # subprocess: `python -m finetune` per cell; inprocess: same process (tests)
    jobs: int = 1  # cells run at once (subprocess isolation only)
    threads: int | None = None  # torch/OMP threads per cell; null: inherit
    retry_failed: bool = True  # rerun failed cells on the next invocation
    keep_resume_state: bool = False  # keep cells/<id>/checkpoints/last after a cell is done (~12 MB each, small model)
    explain: ExplainConfig = field(default_factory=ExplainConfig)


def validate(cfg: StudyConfig) -> StudyConfig:
    """Reject an empty or malformed grid with a one-line ConfigError."""
    from ..data.domains import dataset_info
    from ..engine.protocols import MODES

    for key in ("inits", "models", "label_fractions", "seeds", "modes"):
        if not getattr(cfg, key):
            raise ConfigError(f"study config key {key!r} is empty")
    if not cfg.data.datasets:
        raise ConfigError("study config key 'data.datasets' is empty")
    for flag in cfg.data.datasets:
        dataset_info(flag)
    bad = [m for m in cfg.modes if m not in MODES]
    if bad:
        raise ConfigError(f"study config key 'modes': {bad[0]!r} is not one of {', '.join(MODES)}")
    bad_f = [f for f in cfg.label_fractions if not 0.0 < f <= 1.0]
    if bad_f:
        raise ConfigError(f"study config key 'label_fractions': {bad_f[0]} is not in (0, 1]")
    if cfg.isolation not in ISOLATIONS:
        raise ConfigError(f"study config key 'isolation' must be one of {', '.join(ISOLATIONS)}, got {cfg.isolation!r}")
    if cfg.jobs < 1:
        raise ConfigError("study config key 'jobs' must be >= 1")
    return cfg


def resolve_baselines(path: str | None) -> Path | None:
    """The baselines CSV: as given (relative to the working directory), else relative to the repo."""
    if not path:
        return None
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return p
    return REPO_ROOT / p
