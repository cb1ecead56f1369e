"""Rotation prediction (Gidaris et al. 2018): which multiple of 90 degrees an image was turned by;
volumes turn about one of their axes (1 + 3 per axis classes)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...config.pretrain import RotationConfig
from .base import TransformPrediction, classifier

# the plane each rotation axis turns, as tensor dims of [b, C, (D,) H, W]; images turn about z only
PLANES = {"2d": {"z": (2, 3)}, "3d": {"z": (3, 4), "y": (2, 4), "x": (2, 3)}}


def rotation_classes(dim: str, axes: list[str] | None) -> list[tuple[str | None, int]]:
    """(axis, quarter turns) per class; class 0 is the unrotated image."""
    axes = [a for a in (axes or PLANES[dim]) if a in PLANES[dim]]  # check_pretext_data refuses x, y for images
    return [(None, 0), *((axis, k) for axis in axes for k in (1, 2, 3))]


class RotationPrediction(TransformPrediction):
    name = "rotation"
    loss_name = "rotation/ce"

    def __init__(self, cfg: RotationConfig, model: nn.Module):
        super().__init__()
        width = int(model.embed_dim)
        hidden = cfg.head_hidden_dim or width
        self.classes = {dim: rotation_classes(dim, cfg.axes) for dim in PLANES}
        self.heads = nn.ModuleDict({dim: classifier(width, hidden, len(c)) for dim, c in self.classes.items()})

    def n_classes(self, dim: str) -> int:
        return len(self.classes[dim])

    def transform(self, dim: str, images: Tensor, labels: Tensor) -> Tensor:
        out = images.clone()
        for c, (axis, k) in enumerate(self.classes[dim]):
            rows = (labels == c).nonzero()[:, 0]
            if axis is not None and len(rows):
                out[rows] = torch.rot90(images[rows], k, PLANES[dim][axis])
        return out
