"""Image transforms: normalization, supervised train augmentation and multi-view SSL views.

Inputs are float tensors in [0, 1]: 2D images as [C, H, W] (C = 1 gray or 3 RGB), 3D volumes as
[1, D, H, W]. Every transform ends with `normalize`, so train, eval and SSL inputs share one scale
([-1, 1]) and keep their shape and dtype (float32).

All randomness comes from torch's global RNG, so `torch.manual_seed` makes a transform reproducible
(resume tests rely on it) and DataLoader workers, which torch seeds per worker, draw different
augmentations. Transforms are plain classes (no lambdas), so they pickle into spawn-started
workers. Small-kernel filters (blur, sharpness) are written as shifted sums rather than conv2d:
on tiny images conv2d's thread pool costs far more than the filter itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import Tensor
from torchvision.transforms import RandomResizedCrop as _RRC
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional import InterpolationMode

from medformer.config import AugmentConfig

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

MEAN = 0.5
STD = 0.5

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


# --------------------------------------------------------------------------- basics


def normalize(x: Tensor) -> Tensor:
    """Map [0, 1] to [-1, 1]: (x - 0.5) / 0.5."""
    return (x - MEAN) / STD


def denormalize(x: Tensor) -> Tensor:
    """Inverse of `normalize` (for visualisation)."""
    return x * STD + MEAN


def _as_float(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"transforms take a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x if x.dtype == torch.float32 else x.float()


def _check_dim(dim: str) -> str:
    d = str(dim).lower()
    if d not in ("2d", "3d"):
        raise ValueError(f"dim must be '2d' or '3d', got {dim!r}")
    return d


def _check_2d(x: Tensor) -> None:
    if x.ndim != 3:
        raise ValueError(f"2D transforms expect an image [C, H, W], got shape {tuple(x.shape)}")


def _check_3d(x: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"3D transforms expect a volume [C, D, H, W], got shape {tuple(x.shape)}")


def _coin(p: float) -> bool:
    """True with probability p (torch RNG; no draw when p <= 0 or p >= 1)."""
    if p <= 0:
        return False
    if p >= 1:
        return True
    return torch.rand(()).item() < p


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand(()).item()


def _randint(lo: int, hi: int) -> int:
    """Integer in [lo, hi)."""
    return int(torch.randint(lo, hi, ()).item())


class Normalize:
    """[0, 1] -> [-1, 1]; the eval transform."""

    def __call__(self, x: Tensor) -> Tensor:
        return normalize(_as_float(x))

    def __repr__(self) -> str:
        return "Normalize(mean=0.5, std=0.5)"


def eval_transform() -> Callable[[Tensor], Tensor]:
    """Normalization only (2D and 3D alike)."""
    return Normalize()


# --------------------------------------------------------------------------- 2D helpers

_BILINEAR = InterpolationMode.BILINEAR


def _random_resized_crop(
    x: Tensor, scale: tuple[float, float], ratio: tuple[float, float]
) -> Tensor:
    """Random area fraction in `scale`, aspect ratio in `ratio`, resized back to x's size."""
    if scale[0] >= 1.0 and scale[1] >= 1.0:
        return x
    top, left, h, w = _RRC.get_params(x, list(scale), list(ratio))
    size = [x.shape[-2], x.shape[-1]]
    return F.resized_crop(x, top, left, h, w, size, interpolation=_BILINEAR, antialias=True)


def _flips(x: Tensor, hflip: float, vflip: float) -> Tensor:
    if _coin(hflip):
        x = x.flip(-1)
    if _coin(vflip):
        x = x.flip(-2)
    return x


def _rotate(x: Tensor, degrees: float, fill: float) -> Tensor:
    if degrees <= 0:
        return x
    angle = _uniform(-degrees, degrees)
    return F.rotate(x, angle, interpolation=_BILINEAR, fill=[fill])


def _filter_separable(x: Tensor, w: Tensor) -> Tensor:
    """Correlate [C, H, W] with the 1D kernel w along H and W, reflect-padded (no conv2d)."""
    k = w.numel()
    half = k // 2
    h, wd = x.shape[-2:]
    if half >= min(h, wd):
        return x
    xp = nnf.pad(x.unsqueeze(0), (half, half, half, half), mode="reflect").squeeze(0)
    rows = sum(w[i] * xp[..., :, i : i + wd] for i in range(k))
    return sum(w[i] * rows[..., i : i + h, :] for i in range(k))


def gaussian_blur(x: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Gaussian blur of [C, H, W] with an odd kernel (reflect padding, like torchvision)."""
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, dtype=x.dtype)
    w = torch.exp(-0.5 * (t / max(sigma, 1e-6)) ** 2)
    return _filter_separable(x, w / w.sum())


def adjust_sharpness(x: Tensor, factor: float) -> Tensor:
    """PIL/torchvision sharpness: blend with a 3x3 smoothed copy (borders untouched)."""
    if x.shape[-1] <= 2 or x.shape[-2] <= 2:
        return x
    # kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 as 9 shifted adds
    h, w = x.shape[-2:]
    acc = 4.0 * x[..., 1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            acc = acc + x[..., dy : dy + h - 2, dx : dx + w - 2]
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = acc / 13.0
    return (factor * x + (1.0 - factor) * degenerate).clamp_(0.0, 1.0)


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


# --------------------------------------------------------------------------- 3D helpers

_PLANES_3D = ((1, 2), (1, 3), (2, 3))  # (D,H), (D,W), (H,W) of [C, D, H, W]


def _flips_3d(x: Tensor, p: float) -> Tensor:
    for axis in (1, 2, 3):
        if _coin(p):
            x = x.flip(axis)
    return x


def _rot90_3d(x: Tensor, p: float) -> Tensor:
    """k * 90 degrees (k in 1..3) in a random plane; k = 2 where the plane is not square."""
    if not _coin(p):
        return x
    a, b = _PLANES_3D[_randint(0, 3)]
    k = _randint(1, 4)
    if x.shape[a] != x.shape[b]:
        k = 2
    return torch.rot90(x, k, (a, b))


def _rotation_matrix(axis: int, angle: float) -> Tensor:
    """3x3 rotation about grid axis 0 (x = W), 1 (y = H) or 2 (z = D)."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    r = torch.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _rotate_3d(x: Tensor, degrees: float, n_axes: int = 2, fill: float = 0.0) -> Tensor:
    """Small rotations (each in +-degrees) about `n_axes` randomly chosen axes, trilinear."""
    if degrees <= 0 or n_axes <= 0:
        return x
    axes = torch.randperm(3)[: min(n_axes, 3)].tolist()
    rot = torch.eye(3)
    for axis in axes:
        rot = _rotation_matrix(axis, math.radians(_uniform(-degrees, degrees))) @ rot
    d, h, w = x.shape[-3:]
    # grid coordinates are normalized per axis; rotate in voxel units so non-cubic volumes stay rigid
    s = torch.diag(torch.tensor([w, h, d], dtype=torch.float32))
    theta = torch.zeros(1, 3, 4)
    theta[0, :, :3] = torch.linalg.inv(s) @ rot @ s
    grid = nnf.affine_grid(theta, [1, x.shape[0], d, h, w], align_corners=False)
    if fill:
        out = nnf.grid_sample(
            (x - fill).unsqueeze(0),
            grid,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        return out.squeeze(0) + fill
    out = nnf.grid_sample(
        x.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.squeeze(0)


def _intensity_3d(x: Tensor, strength: float) -> Tensor:
    """x * (1 + a) + b with a, b uniform in +-strength."""
    if strength <= 0:
        return x
    scale = 1.0 + _uniform(-strength, strength)
    shift = _uniform(-strength, strength)
    return x * scale + shift


def _random_crop_3d(x: Tensor, scale: tuple[float, float]) -> Tensor:
    """Random sub-volume with volume fraction in `scale` (same fraction per axis), resized back."""
    if scale[0] >= 1.0:
        return x
    frac = _uniform(scale[0], scale[1]) ** (1.0 / 3.0)
    size = x.shape[-3:]
    starts, lengths = [], []
    for n in size:
        m = max(1, min(n, round(frac * n)))
        starts.append(_randint(0, n - m + 1))
        lengths.append(m)
    if lengths == list(size):
        return x
    (z, y, xx), (dz, dy, dx) = starts, lengths
    crop = x[:, z : z + dz, y : y + dy, xx : xx + dx]
    return nnf.interpolate(
        crop.unsqueeze(0), size=tuple(size), mode="trilinear", align_corners=False
    ).squeeze(0)


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
    )


# --------------------------------------------------------------------------- SSL views


@dataclass
class ViewConfig:
    """One SSL view (SimCLR/MoCo/BYOL/BarlowTwins/VICReg style), with medical defaults: milder
    crops, no hue/saturation, no grayscale or solarize, light blur."""

    # 2D
    crop_scale_min: float = 0.4
    crop_ratio_min: float = 3 / 4
    crop_ratio_max: float = 4 / 3
    hflip: float = 0.5
    vflip: float = 0.0
    rotate_degrees: float = 10.0
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.0  # RGB only; kept 0 for gray
    hue: float = 0.0  # RGB only
    color_jitter_p: float = 0.8
    gray_p: float = 0.0  # RGB only: random grayscale (3 equal channels)
    blur_p: float = 0.2
    blur_kernel: int | None = None  # None: 3 at 28 px, scaled with the image size (odd)
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    # 3D
    crop_scale_min_3d: float = 0.5  # volume fraction of the random sub-volume
    flip_3d: float = 0.5  # per axis
    rot90_3d: float = 0.5
    rotate_3d_degrees: float = 10.0
    intensity_3d: float = 0.2
    noise_std_3d: float = 0.02
    # both
    fill: float = 0.0  # value outside rotated/sheared images
    n_views: int = 2


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
        if _coin(c.blur_p):
            k = _blur_kernel(c.blur_kernel, min(x.shape[-2:]))
            x = gaussian_blur(x, k, _uniform(c.blur_sigma_min, c.blur_sigma_max))
        if _coin(c.solarize_p):
            x = F.solarize(x.clamp(0.0, 1.0), threshold=c.solarize_threshold)
        return normalize(x.clamp(0.0, 1.0))

    def __repr__(self) -> str:
        return f"View2D({self.cfg})"


class View3D:
    """One random 3D SSL view: random sub-volume resized back, flips, 90-degree rotation, small
    rotations, intensity scale/shift, Gaussian noise; clamp, normalize."""

    def __init__(self, cfg: ViewConfig | None = None, rotate_axes: int = 2) -> None:
        self.cfg = cfg or ViewConfig()
        self.rotate_axes = int(rotate_axes)

    def __call__(self, x: Tensor) -> Tensor:
        c = self.cfg
        x = _as_float(x)
        _check_3d(x)
        x = _random_crop_3d(x, (c.crop_scale_min_3d, 1.0))
        x = _flips_3d(x, c.flip_3d)
        x = _rot90_3d(x, c.rot90_3d)
        x = _rotate_3d(x, c.rotate_3d_degrees, self.rotate_axes, c.fill)
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
