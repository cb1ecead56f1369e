"""Supervised train augmentation, one sample at a time: RandAugment, Augment2D, Augment3D.

Every transform ends with `normalize`, so train, eval and SSL inputs share one scale ([-1, 1]).
Transforms are plain classes (no lambdas), so they pickle into spawn-started workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from medformer.config import AugmentConfig

from .primitives import (
    _BILINEAR,
    _as_float,
    _check_2d,
    _check_3d,
    _check_dim,
    _flips,
    _flips_3d,
    _intensity_3d,
    _randint,
    _random_resized_crop,
    _rot90_3d,
    _rotate,
    _rotate_3d,
    adjust_sharpness,
    eval_transform,
    normalize,
)

# RandAugment's op set without ops that make little sense for medical images: Solarize (inverts
# bright structures) and Invert. "Color" (saturation) is only ever drawn for 3-channel inputs.
RAND_AUGMENT_OPS: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "AutoContrast",
    "Equalize",
)
_ALL_OPS = frozenset(RAND_AUGMENT_OPS) | {"Solarize", "Invert"}
_COLOR_OPS = frozenset({"Color"})  # never applied to 1-channel images


def _gray_safe_ops(ops: Sequence[str]) -> tuple[str, ...]:
    gray = tuple(op for op in ops if op not in _COLOR_OPS)
    return gray or ("Identity",)


class RandAugment:
    """RandAugment (N ops at magnitude M, M in [0, num_magnitude_bins - 1]) on float tensors.

    Magnitude ranges follow torchvision's RandAugment (M = 9 of 31 bins is "standard"), but the
    ops run directly on float [0, 1] images (no uint8 round trip), geometric ops interpolate
    bilinearly, and colour ops are dropped for 1-channel inputs so a gray image never wastes a slot
    on a no-op. `ops` picks the op set (default RAND_AUGMENT_OPS; "Solarize" and "Invert" exist).
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 9,
        num_magnitude_bins: int = 31,
        ops: Sequence[str] = RAND_AUGMENT_OPS,
        fill: float = 0.0,
    ) -> None:
        unknown = sorted(set(ops) - _ALL_OPS)
        if unknown:
            raise ValueError(
                f"unknown RandAugment op {unknown[0]!r}; choose from {sorted(_ALL_OPS)}"
            )
        if num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {num_ops}")
        if num_magnitude_bins < 2 or not 0 <= magnitude <= num_magnitude_bins - 1:
            raise ValueError(
                f"magnitude must lie in [0, {num_magnitude_bins - 1}], got {magnitude}"
            )
        self.num_ops = int(num_ops)
        self.magnitude = float(magnitude)
        self.num_magnitude_bins = int(num_magnitude_bins)
        self.ops = tuple(ops) or ("Identity",)
        self.gray_ops = _gray_safe_ops(self.ops)
        self.fill = float(fill)

    def __call__(self, x: Tensor) -> Tensor:
        ops = self.gray_ops if x.shape[-3] == 1 else self.ops
        m = self.magnitude / (self.num_magnitude_bins - 1)  # 0..1
        for _ in range(self.num_ops):
            op = ops[_randint(0, len(ops))]
            sign = -1.0 if torch.rand(()).item() < 0.5 else 1.0
            x = self._apply(x, op, m, sign)
        return x

    def _apply(self, x: Tensor, op: str, m: float, sign: float) -> Tensor:
        h, w = x.shape[-2:]
        fill = [self.fill]
        if op == "Identity":
            return x
        if op in ("ShearX", "ShearY"):
            deg = math.degrees(math.atan(0.3 * m * sign))
            shear = [deg, 0.0] if op == "ShearX" else [0.0, deg]
            return F.affine(
                x,
                angle=0.0,
                translate=[0, 0],
                scale=1.0,
                shear=shear,
                interpolation=_BILINEAR,
                fill=fill,
                center=[0, 0],
            )
        if op in ("TranslateX", "TranslateY"):
            frac = 150.0 / 331.0 * m * sign
            shift = [int(frac * w), 0] if op == "TranslateX" else [0, int(frac * h)]
            return F.affine(
                x,
                angle=0.0,
                translate=shift,
                scale=1.0,
                shear=[0.0, 0.0],
                interpolation=_BILINEAR,
                fill=fill,
            )
        if op == "Rotate":
            return F.rotate(x, 30.0 * m * sign, interpolation=_BILINEAR, fill=fill)
        if op == "Brightness":
            return F.adjust_brightness(x, 1.0 + 0.9 * m * sign)
        if op == "Color":
            return F.adjust_saturation(x, 1.0 + 0.9 * m * sign) if x.shape[-3] == 3 else x
        if op == "Contrast":
            return F.adjust_contrast(x, 1.0 + 0.9 * m * sign)
        if op == "Sharpness":
            return adjust_sharpness(x, 1.0 + 0.9 * m * sign)
        if op == "Posterize":
            return F.posterize(x, bits=int(round(8 - 4 * m)))
        if op == "Solarize":
            return F.solarize(x, threshold=1.0 - m)
        if op == "AutoContrast":
            return F.autocontrast(x)
        if op == "Equalize":
            return F.equalize(x)
        if op == "Invert":
            return F.invert(x)
        raise ValueError(f"unknown RandAugment op {op!r}")

    def __repr__(self) -> str:
        return (
            f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, ops={list(self.ops)})"
        )


class Augment2D:
    """Supervised 2D train augmentation, in order: random resized crop (area in
    (crop_scale, 1), back to the input size), flips, a small rotation, RandAugment; then clamp
    to [0, 1] and normalize."""

    def __init__(
        self,
        randaugment_n: int = 2,
        randaugment_m: float = 8,
        hflip: float = 0.5,
        vflip: float = 0.0,
        rotate_degrees: float = 10.0,
        crop_scale: float = 0.85,
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        randaugment_ops: Sequence[str] = RAND_AUGMENT_OPS,
        fill: float = 0.0,
    ) -> None:
        self.hflip = float(hflip)
        self.vflip = float(vflip)
        self.rotate_degrees = float(rotate_degrees)
        self.crop_scale = (float(crop_scale), 1.0)
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self.fill = float(fill)
        self.randaugment = RandAugment(randaugment_n, randaugment_m, ops=randaugment_ops, fill=fill)

    def __call__(self, x: Tensor) -> Tensor:
        x = _as_float(x)
        _check_2d(x)
        x = _random_resized_crop(x, self.crop_scale, self.crop_ratio)
        x = _flips(x, self.hflip, self.vflip)
        x = _rotate(x, self.rotate_degrees, self.fill)
        x = self.randaugment(x)
        return normalize(x.clamp(0.0, 1.0))

    def __repr__(self) -> str:
        return (
            f"Augment2D(crop_scale={self.crop_scale}, hflip={self.hflip}, vflip={self.vflip}, "
            f"rotate_degrees={self.rotate_degrees}, {self.randaugment!r})"
        )


class Augment3D:
    """Supervised 3D train augmentation (pure torch): per-axis flips, a random 90-degree rotation,
    small rotations about `rotate_axes` axes, intensity scale/shift; clamp, normalize."""

    def __init__(
        self,
        flip: float = 0.5,
        rot90: float = 0.5,
        rotate_degrees: float = 10.0,
        intensity: float = 0.1,
        rotate_axes: int = 2,
        fill: float = 0.0,
    ) -> None:
        self.flip = float(flip)
        self.rot90 = float(rot90)
        self.rotate_degrees = float(rotate_degrees)
        self.intensity = float(intensity)
        self.rotate_axes = int(rotate_axes)
        self.fill = float(fill)

    def __call__(self, x: Tensor) -> Tensor:
        x = _as_float(x)
        _check_3d(x)
        x = _flips_3d(x, self.flip)
        x = _rot90_3d(x, self.rot90)
        x = _rotate_3d(x, self.rotate_degrees, self.rotate_axes, self.fill)
        x = _intensity_3d(x, self.intensity)
        return normalize(x.clamp(0.0, 1.0))

    def __repr__(self) -> str:
        return (
            f"Augment3D(flip={self.flip}, rot90={self.rot90}, rotate_degrees={self.rotate_degrees}, "
            f"intensity={self.intensity})"
        )


def train_transform(cfg: AugmentConfig, dim: str) -> Callable[[Tensor], Tensor]:
    """Supervised train augmentation for "2d" or "3d" inputs; eval_transform() when disabled."""
    dim = _check_dim(dim)
    if not cfg.enabled:
        return eval_transform()
    if dim == "2d":
        return Augment2D(
            randaugment_n=cfg.randaugment_n,
            randaugment_m=cfg.randaugment_m,
            hflip=cfg.hflip,
            vflip=cfg.vflip,
            rotate_degrees=cfg.rotate_degrees,
            crop_scale=cfg.crop_scale,
        )
    return Augment3D(
        flip=cfg.flip_3d,
        rot90=cfg.rot90_3d,
        rotate_degrees=cfg.rotate_3d_degrees,
        intensity=cfg.intensity_3d,
        rotate_axes=cfg.rotate_3d_axes,
    )
