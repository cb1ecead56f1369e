"""Checks of a StudyConfig before anything runs: a malformed grid or stage is a one-line ConfigError."""

from __future__ import annotations

import typing

from ..config import ConfigError
from ..config.study import FROZEN_MODES, Isolation, StudyConfig
from ..data.domains import dataset_info
from ..errors import UserError
from ..runs.modes import MODES as FINETUNE_MODES
from .stages import check_stage, resolve_reference


def validate(cfg: StudyConfig) -> StudyConfig:
    """Reject an empty or malformed grid with a one-line ConfigError."""
    MODES = (*FINETUNE_MODES, *FROZEN_MODES)

    for key in ("inits", "models", "label_fractions", "seeds", "modes"):
        if not getattr(cfg, key):
            raise ConfigError(f"study config key {key!r} is empty")
    if not cfg.data.datasets:
        raise ConfigError("study config key 'data.datasets' is empty")
    for flag in cfg.data.datasets:
        dataset_info(flag)
    stray = sorted(set(cfg.model_finetune) - set(cfg.models))
    if stray:
        raise ConfigError(f"study config key 'model_finetune': {stray[0]!r} is not in 'models' ({', '.join(cfg.models)})")
    bad = [m for m in cfg.modes if m not in MODES]
    if bad:
        raise ConfigError(f"study config key 'modes': {bad[0]!r} is not one of {', '.join(MODES)}")
    dense = [f for f in cfg.data.datasets if dataset_info(f).is_dense]
    frozen = [m for m in cfg.modes if m in FROZEN_MODES]
    if dense and frozen:
        raise ConfigError(f"study mode {frozen[0]!r} classifies; {dense[0]} is a {dataset_info(dense[0]).task} task: "
                          "use full, linear_probe or head_only for it")
    bad_f = [f for f in cfg.label_fractions if not 0.0 < f <= 1.0]
    if bad_f:
        raise ConfigError(f"study config key 'label_fractions': {bad_f[0]} is not in (0, 1]")
    isolations = typing.get_args(Isolation)  # a config built in code skips the loader's check
    if cfg.isolation not in isolations:
        raise ConfigError(f"study config key 'isolation' must be one of {', '.join(isolations)}, got {cfg.isolation!r}")
    if cfg.jobs < 1:
        raise ConfigError("study config key 'jobs' must be >= 1")
    validate_stages(cfg)
    return cfg


def validate_stages(cfg: StudyConfig) -> None:
    """Every stage's config file and overrides load (typos fail now, not after earlier stages ran)."""
    for kind in ("pseudolabels", "pretrain"):
        for name, stage in getattr(cfg, kind).items():
            try:
                check_stage(cfg, kind, name, stage)
            except UserError as e:
                raise ConfigError(f"study stage {kind}.{name}: {e}") from None
    try:
        for value in cfg.inits.values():
            resolve_reference(cfg, value)
    except UserError as e:
        raise ConfigError(f"study config key 'inits': {e}") from None
