"""SSL views, one sample at a time: ViewConfig, View2D, View3D and MultiViewTransform."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from ...config.views import ViewConfig
from .primitives import (
    _as_float,
    _check_2d,
    _check_3d,
    _check_dim,
    _coin,
    _flips,
    _flips_3d,
    _intensity_3d,
    _random_crop_3d,
    _random_resized_crop,
    _rot90_3d,
    _rotate,
    _rotate_3d,
    _uniform,
    gaussian_blur,
    normalize,
)


def _blur_kernel(cfg_kernel: int | None, size: int) -> int:
    k = int(cfg_kernel) if cfg_kernel else max(3, round(3 * size / 28))
    return k if k % 2 == 1 else k + 1


def _color_jitter(
    x: Tensor, brightness: float, contrast: float, saturation: float, hue: float
) -> Tensor:
    """torchvision-style ColorJitter (random order); saturation and hue only for 3 channels."""
    if x.shape[-3] != 3:
        saturation = hue = 0.0
    for i in torch.randperm(4).tolist():
        if i == 0 and brightness > 0:
            x = F.adjust_brightness(x, _uniform(max(0.0, 1 - brightness), 1 + brightness))
        elif i == 1 and contrast > 0:
            x = F.adjust_contrast(x, _uniform(max(0.0, 1 - contrast), 1 + contrast))
        elif i == 2 and saturation > 0:
            x = F.adjust_saturation(x, _uniform(max(0.0, 1 - saturation), 1 + saturation))
        elif i == 3 and hue > 0:
            x = F.adjust_hue(x, _uniform(-min(hue, 0.5), min(hue, 0.5)))
    return x


class View2D:
    """One random 2D SSL view: resized crop, flips, rotation, colour jitter, grayscale (RGB),
    Gaussian blur, solarize; clamp, normalize. Gray input stays 1-channel."""

    def __init__(self, cfg: ViewConfig | None = None) -> None:
        self.cfg = cfg or ViewConfig()

    def __call__(self, x: Tensor) -> Tensor:
        c = self.cfg
        x = _as_float(x)
        _check_2d(x)
        x = _random_resized_crop(x, (c.crop_scale_min, 1.0), (c.crop_ratio_min, c.crop_ratio_max))
        x = _flips(x, c.hflip, c.vflip)
        x = _rotate(x, c.rotate_degrees, c.fill)
        if (c.brightness > 0 or c.contrast > 0 or c.saturation > 0 or c.hue > 0) and _coin(
            c.color_jitter_p
        ):
            x = _color_jitter(x, c.brightness, c.contrast, c.saturation, c.hue)
        if x.shape[-3] == 3 and _coin(c.gray_p):
            x = F.rgb_to_grayscale(x, num_output_channels=3)
        if c.gamma > 0:
            x = x.clamp(0.0, 1.0).pow(_uniform(max(0.01, 1 - c.gamma), 1 + c.gamma))
        if _coin(c.blur_p):
            k = _blur_kernel(c.blur_kernel, min(x.shape[-2:]))
            x = gaussian_blur(x, k, _uniform(c.blur_sigma_min, c.blur_sigma_max))
        if _coin(c.solarize_p):
            x = F.solarize(x.clamp(0.0, 1.0), threshold=c.solarize_threshold)
        if c.noise_std > 0:
            x = x + c.noise_std * torch.randn(x.shape, dtype=x.dtype)
        return normalize(x.clamp(0.0, 1.0))

    def __repr__(self) -> str:
        return f"View2D({self.cfg})"


class View3D:
    """One random 3D SSL view: random sub-volume resized back, flips, 90-degree rotation, small
    rotations, intensity scale/shift, Gaussian noise; clamp, normalize."""

    def __init__(self, cfg: ViewConfig | None = None) -> None:
        self.cfg = cfg or ViewConfig()

    def __call__(self, x: Tensor) -> Tensor:
        c = self.cfg
        x = _as_float(x)
        _check_3d(x)
        x = _random_crop_3d(x, (c.crop_scale_min_3d, 1.0))
        x = _flips_3d(x, c.flip_3d)
        x = _rot90_3d(x, c.rot90_3d)
        x = _rotate_3d(x, c.rotate_3d_degrees, c.rotate_3d_axes, c.fill)
        x = _intensity_3d(x, c.intensity_3d)
        if c.noise_std_3d > 0:
            x = x + c.noise_std_3d * torch.randn(x.shape, dtype=x.dtype)
        return normalize(x.clamp(0.0, 1.0))

    def __repr__(self) -> str:
        return f"View3D({self.cfg})"


def view_transform(cfg: ViewConfig, dim: str) -> Callable[[Tensor], Tensor]:
    """One random SSL view of a "2d" [C,H,W] or "3d" [1,D,H,W] input."""
    return View2D(cfg) if _check_dim(dim) == "2d" else View3D(cfg)


class MultiViewTransform:
    """Returns a list of independently augmented views (like lightly's MultiViewTransform).

    `cfg` is one ViewConfig (cfg.n_views views, all drawn from it) or a sequence of ViewConfigs,
    one per view (asymmetric views, e.g. BYOL's blur_p=1.0 / blur_p=0.1 + solarize_p=0.2).
    `transforms` holds one callable per view.
    """

    def __init__(self, cfg: ViewConfig | Sequence[ViewConfig], dim: str) -> None:
        cfgs = [cfg] * cfg.n_views if isinstance(cfg, ViewConfig) else list(cfg)
        if not cfgs:
            raise ValueError("MultiViewTransform needs at least one view (n_views >= 1)")
        self.dim = _check_dim(dim)
        self.transforms = [view_transform(c, self.dim) for c in cfgs]

    @property
    def n_views(self) -> int:
        return len(self.transforms)

    def __call__(self, x: Tensor) -> list[Tensor]:
        return [t(x) for t in self.transforms]

    def __repr__(self) -> str:
        return f"MultiViewTransform(dim={self.dim!r}, n_views={self.n_views})"
