"""Image transforms: normalization, supervised train augmentation and multi-view SSL views.

Inputs are float tensors in [0, 1]: 2D images as [C, H, W] (C = 1 gray or 3 RGB), 3D volumes as
[1, D, H, W]. Every transform ends with `normalize`, so train, eval and SSL inputs share one scale
([-1, 1]) and keep their shape and dtype (float32).

Two implementations draw the same distributions: the per-sample one (`primitives`, `augment`,
`views`; torch's global RNG, seeded per sample by the loader) runs in DataLoader workers, and the
batched one (`batched`) runs on the device that holds a batch, with per-sample parameters drawn from
each sample's own counter-based random stream.
"""

from .augment import RAND_AUGMENT_OPS, Augment2D, Augment3D, RandAugment, train_transform
from .primitives import Normalize, denormalize, eval_transform, normalize
from .views import MultiViewTransform, View2D, View3D, ViewConfig, view_transform

__all__ = [
    "RAND_AUGMENT_OPS",
    "Augment2D",
    "Augment3D",
    "MultiViewTransform",
    "Normalize",
    "RandAugment",
    "View2D",
    "View3D",
    "ViewConfig",
    "denormalize",
    "eval_transform",
    "normalize",
    "train_transform",
    "view_transform",
]
