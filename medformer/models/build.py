"""The model of a run, with its config checked first: a bad model key is a one-line ConfigError."""

from __future__ import annotations

from torch import nn

from ..config import ConfigError, ModelConfig, _build
from ..data.domains import DatasetInfo
from .factory import create_model, is_medformer
from .medformer import MedformerConfig

# ModelConfig keys that create_model passes to MedformerConfig itself
_OWN_KEYS = ("drop_path", "dropout")


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
    try:
        return create_model(cfg, infos, size, pretrained=pretrained)
    except ValueError as e:
        with_overrides = f" with model.overrides={cfg.overrides}" if cfg.overrides else ""
        raise ConfigError(f"model.name={cfg.name}{with_overrides}: {e}") from None
    except TypeError as e:
        if is_medformer(cfg.name) or not cfg.overrides or "keyword argument" not in str(e):
            raise
        raise ConfigError(f"config key 'model.overrides' does not fit {cfg.name}: {e}") from None
