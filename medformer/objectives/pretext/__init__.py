"""Pretext tasks: masked modelling, rotation, jigsaw and context restoration, 2D and 3D.

`build_pretext(cfg, model)` -> the configured terms; each is called by the pretraining objective
as `term(model, inputs, row_seeds)` and returns one loss, logged as `term.loss_name`.
"""

from __future__ import annotations

from torch import nn

from ...config import ConfigError
from ...config.pretrain import PretextConfig
from ...data.transforms.views import ViewConfig
from .base import PretextTerm, row_seeds
from .jigsaw import JigsawPuzzle, permutation_set
from .masked import ContextRestoration, MaskedModelling
from .rotation import RotationPrediction

PRETEXT_TASKS: dict[str, type[PretextTerm]] = {
    t.name: t for t in (MaskedModelling, RotationPrediction, JigsawPuzzle, ContextRestoration)
}


def build_pretext(cfg: PretextConfig, model: nn.Module) -> list[PretextTerm]:
    return [PRETEXT_TASKS[name](getattr(cfg, name), model) for name in cfg.tasks]


def pretext_loss_names(cfg: PretextConfig) -> list[str]:
    return [PRETEXT_TASKS[name].loss_name for name in cfg.tasks]


def check_pretext_data(cfg: PretextConfig, dims: set[str], size: int, views: list[ViewConfig]) -> None:
    """What the data and views must allow: rotation axes that its images have and views that do
    not already turn them by quarter turns, a jigsaw grid that divides the image side (masked
    modelling and restoration check the model when they are built)."""
    if "rotation" in cfg.tasks and "2d" in dims and cfg.rotation.axes and set(cfg.rotation.axes) != {"z"}:
        bad = sorted(set(cfg.rotation.axes) - {"z"})
        raise ConfigError(f"config key 'pretext.rotation.axes' has {bad}, an axis that 2D images lack (they turn "
                          "about z only): use axes [z], or leave it unset (z for images, x y z for volumes)")
    if "rotation" in cfg.tasks:
        key = "views.rot90_3d" if len(views) == 1 else "views[*].rot90_3d"
        if "3d" in dims and any(v.rot90_3d > 0 for v in views):
            raise ConfigError(f"pretext rotation predicts quarter turns, which {key} > 0 already applies to the "
                              f"volumes at random: set {key}=0")
        if "2d" in dims and any(v.rotate_degrees >= 45 for v in views):
            raise ConfigError("pretext rotation predicts quarter turns, which views.rotate_degrees >= 45 blurs: "
                              "set views.rotate_degrees below 45 (e.g. 10)")
    if "jigsaw" in cfg.tasks and size % cfg.jigsaw.grid:
        raise ConfigError(f"config key 'pretext.jigsaw.grid' ({cfg.jigsaw.grid}) does not divide the image side "
                          f"data.size={size}: choose a grid that divides it (e.g. 2 or 4 for 28)")


__all__ = [
    "PRETEXT_TASKS",
    "ContextRestoration",
    "JigsawPuzzle",
    "MaskedModelling",
    "PretextTerm",
    "RotationPrediction",
    "build_pretext",
    "check_pretext_data",
    "permutation_set",
    "pretext_loss_names",
    "row_seeds",
]
