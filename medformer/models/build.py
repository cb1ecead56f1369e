"""The model of a run, with its config checked first: a bad model key is a one-line ConfigError."""

from __future__ import annotations

from torch import nn

from ..config import ConfigError, ModelConfig
from ..config.loader import _build
from ..data.domains import DatasetInfo, dataset_flags, dataset_info
from .dense_heads import HEAD_KINDS
from .factory import create_model, is_medformer
from .medformer import MedformerConfig

# ModelConfig keys that create_model passes to MedformerConfig itself
_OWN_KEYS = ("drop_path", "dropout")


def check_dense_heads(cfg: ModelConfig, infos: list[DatasetInfo]) -> None:
    """model.dense_heads names segmentation/regression datasets of the run, with a known head kind."""
    flags = {d.flag: d for d in infos}
    for flag, kind in cfg.dense_heads.items():
        if kind not in HEAD_KINDS:
            raise ConfigError(f"config key 'model.dense_heads.{flag}' must be one of {', '.join(HEAD_KINDS)}, got {kind!r}")
        info = flags.get(flag)
        if info is None:
            raise ConfigError(f"model.dense_heads.{flag}: {flag} is not in data.datasets ({', '.join(flags) or 'none'})")
        if not info.is_dense:
            derived = ", ".join(sorted(f for f in dataset_flags() if dataset_info(f).source == flag))
            hint = f" (its derived dense tasks: {derived})" if derived else ""
            raise ConfigError(f"model.dense_heads.{flag}: {flag} is a {info.task} task with no masks or regression "
                              f"targets; a dense head needs a segmentation or regression dataset{hint}")


def check_model(cfg: ModelConfig) -> None:
    """Medformer overrides must be MedformerConfig fields of the right type and range (timm kwargs
    are checked by timm when the model is built)."""
    if not is_medformer(cfg.name):
        return
    for key in _OWN_KEYS:
        if key in cfg.overrides:
            raise ConfigError(f"config key 'model.overrides.{key}': set model.{key} instead")
    _build(MedformerConfig, cfg.overrides, "model.overrides.")


def build_model(cfg: ModelConfig, infos: list[DatasetInfo], size: int, pretrained: bool = False) -> nn.Module:
    """create_model, with its refusals of the config as ConfigError: models raise ValueError for sizes
    that do not fit (heads, patch size), timm a TypeError for an unknown keyword of model.overrides."""
    check_model(cfg)
    check_dense_heads(cfg, infos)
    try:
        return create_model(cfg, infos, size, pretrained=pretrained)
    except ValueError as e:
        with_overrides = f" with model.overrides={cfg.overrides}" if cfg.overrides else ""
        raise ConfigError(f"model.name={cfg.name}{with_overrides}: {e}") from None
    except TypeError as e:
        if is_medformer(cfg.name) or not cfg.overrides or "keyword argument" not in str(e):
            raise
        raise ConfigError(f"config key 'model.overrides' does not fit {cfg.name}: {e}") from None
