"""Schema of an SSL view (`views:` of a pretraining run): the ranges each augmentation draws from."""

from __future__ import annotations

from dataclasses import dataclass

from .loader import ConfigError, ranged


@dataclass
class ViewConfig:
    """One SSL view (SimCLR/MoCo/BYOL/BarlowTwins/VICReg style), with medical defaults: milder
    crops, no hue/saturation, no grayscale or solarize, light blur."""

    # 2D
    crop_scale_min: float = ranged(0.4, gt=0.0, le=1.0)
    crop_ratio_min: float = ranged(3 / 4, gt=0.0)
    crop_ratio_max: float = ranged(4 / 3, gt=0.0)
    hflip: float = ranged(0.5, ge=0.0, le=1.0)
    vflip: float = ranged(0.0, ge=0.0, le=1.0)
    rotate_degrees: float = ranged(10.0, ge=0.0, le=180.0)
    brightness: float = ranged(0.3, ge=0.0)
    contrast: float = ranged(0.3, ge=0.0)
    saturation: float = ranged(0.0, ge=0.0)  # RGB only; kept 0 for gray
    hue: float = ranged(0.0, ge=0.0, le=0.5)  # RGB only
    color_jitter_p: float = ranged(0.8, ge=0.0, le=1.0)
    gray_p: float = ranged(0.0, ge=0.0, le=1.0)  # RGB only: random grayscale (3 equal channels)
    blur_p: float = ranged(0.2, ge=0.0, le=1.0)
    blur_kernel: int | None = ranged(None, ge=1)  # None: 3 at 28 px, scaled with the image size (odd)
    blur_sigma_min: float = ranged(0.1, gt=0.0)
    blur_sigma_max: float = ranged(2.0, gt=0.0)
    solarize_p: float = ranged(0.0, ge=0.0, le=1.0)
    solarize_threshold: float = ranged(0.5, ge=0.0, le=1.0)
    gamma: float = ranged(0.0, ge=0.0, lt=1.0)  # gamma drawn uniform in [1 - gamma, 1 + gamma] (0: off)
    noise_std: float = ranged(0.0, ge=0.0)  # Gaussian noise after the intensity ops (0: off)
    # 3D
    crop_scale_min_3d: float = ranged(0.5, gt=0.0, le=1.0)  # volume fraction of the random sub-volume
    flip_3d: float = ranged(0.5, ge=0.0, le=1.0)  # per axis
    rot90_3d: float = ranged(0.5, ge=0.0, le=1.0)
    rotate_3d_degrees: float = ranged(10.0, ge=0.0, le=180.0)
    rotate_3d_axes: int = ranged(2, ge=0, le=3)  # small rotations about this many of the volume's 3 axes
    intensity_3d: float = ranged(0.2, ge=0.0)
    noise_std_3d: float = ranged(0.02, ge=0.0)
    # both
    fill: float = 0.0  # value outside rotated/sheared images
    n_views: int = ranged(2, ge=1)


def check_view(cfg: ViewConfig, key: str = "views") -> None:
    """Pairs of bounds in order (single keys are range-checked when the config loads)."""
    for lo, hi in (("crop_ratio_min", "crop_ratio_max"), ("blur_sigma_min", "blur_sigma_max")):
        if getattr(cfg, lo) > getattr(cfg, hi):
            raise ConfigError(f"config key {key}.{lo} ({getattr(cfg, lo)}) must not exceed {key}.{hi} "
                              f"({getattr(cfg, hi)})")
