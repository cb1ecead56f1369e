"""Run configuration: the schema of every run kind in one package (fine-tune, pretrain, pseudo-label,
study, shard writing, and the DICOM and view sections they share), and the loader that fills them from YAML plus
dotted `key=value` overrides. An unknown key or a bad value stops with a one-line ConfigError."""

from .finetune import (
    AugmentConfig,
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    Monitor,
    Schedule,
    TrainConfig,
    finetune_recipe,
)
from .loader import (
    PROBABILITY,
    ConfigError,
    Range,
    load_config,
    parse_override,
    ranged,
    save_config,
    to_dict,
)
from .pretrain import PretrainConfig
from .pseudolabel import PseudoLabelConfig
from .shards import ShardsConfig
from .study import StudyConfig

__all__ = [
    "PROBABILITY", "AugmentConfig", "ConfigError", "DataConfig", "FinetuneConfig", "ModelConfig", "Monitor", "Schedule",
    "PretrainConfig", "PseudoLabelConfig", "Range", "ShardsConfig", "StudyConfig", "TrainConfig", "finetune_recipe", "load_config",
    "parse_override", "ranged", "save_config", "to_dict",
]
