"""Augmentation of a whole batch on the device that holds it, with per-sample random parameters.

The same distributions as the per-sample transforms (`augment`, `views`), drawn per sample from a
`SampleRandom` stream, so a sample's view does not depend on its batch. Geometry (resized crop,
flips, rotations, 90-degree turns, RandAugment's shear, translate and rotate) is composed into one
affine map per sample and resampled once with `grid_sample`; that moves RandAugment's geometric ops
before its intensity ops, the one difference from the per-sample order. Intensity ops run as masked
tensor ops. Inputs are uint8 or float in [0, 1]: [B, C, H, W] or [B, C, D, H, W]; outputs are
normalized float32 of the same shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as nnf
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from medformer.config import AugmentConfig

from .augment import RAND_AUGMENT_OPS, RandAugment
from .primitives import normalize
from .sample_random import SampleRandom
from .views import ViewConfig, _blur_kernel

_GEOMETRIC_OPS = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})


def as_unit_float(x: Tensor) -> Tensor:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


# --------------------------------------------------------------------------- affine maps (pixel units)
# A map takes output pixel coordinates (x, y[, z]: W, H[, D] axes, origin at the corner) to input
# ones, as [B, n+1, n+1] homogeneous matrices; maps compose by matrix product, outermost first.


def _eye(b: int, n: int, device) -> Tensor:
    return torch.eye(n + 1, device=device).repeat(b, 1, 1)


def _about(center: Tensor, linear: Tensor) -> Tensor:
    """The map p -> center + linear (p - center); center [n], linear [B, n, n]."""
    b, n = linear.shape[0], linear.shape[1]
    m = _eye(b, n, linear.device)
    m[:, :n, :n] = linear
    m[:, :n, n] = center - (linear @ center)
    return m


def crop_map(start: Tensor, frac: Tensor) -> Tensor:
    """Output covers the box [start, start + frac * size) of the input; start [B, n] px, frac [B, n]."""
    b, n = start.shape
    m = _eye(b, n, start.device)
    m[:, range(n), range(n)] = frac
    m[:, :n, n] = start
    return m


def flip_map(size: Sequence[int], flips: Tensor) -> Tensor:
    """Mirror axis j where flips[:, j]; flips [B, n] bool."""
    b, n = flips.shape
    sign = torch.where(flips, -1.0, 1.0)
    center = torch.tensor(size, dtype=torch.float32, device=flips.device) / 2
    return _about(center, torch.diag_embed(sign))


def rotation_2d(angle: Tensor) -> Tensor:
    """[B, 2, 2] rotations by `angle` [B] radians (x, y)."""
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def rotation_3d(axis: Tensor, angle: Tensor) -> Tensor:
    """[B, 3, 3] rotations about grid axis 0 (x = W), 1 (y = H) or 2 (z = D)."""
    b = angle.shape[0]
    r = torch.eye(3, device=angle.device).repeat(b, 1, 1)
    planes = torch.tensor([[1, 2], [0, 2], [0, 1]], device=angle.device)[axis]  # [B, 2]
    i, j = planes[:, 0], planes[:, 1]
    rows = torch.arange(b, device=angle.device)
    c, s = torch.cos(angle), torch.sin(angle)
    r[rows, i, i], r[rows, i, j], r[rows, j, i], r[rows, j, j] = c, -s, s, c
    return r


def _affine_grid(theta: Tensor, size: Sequence[int]) -> Tensor:
    """`affine_grid(theta, align_corners=False)` as a sum of broadcast per-axis terms: on CPU about 4x
    faster than affine_grid's batched matmul for 3D volumes."""
    b, n = theta.shape[0], len(size)
    grid = theta[:, :, n].reshape(b, *[1] * n, n)
    for axis, length in enumerate(reversed(size)):  # x (last dim), y, z
        coords = (torch.arange(length, device=theta.device, dtype=theta.dtype) * 2 + 1) / length - 1
        shape = [1] * n
        shape[n - 1 - axis] = length
        grid = grid + coords.reshape(1, *shape, 1) * theta[:, :, axis].reshape(b, *[1] * n, n)
    return grid


def resample(x: Tensor, maps: Tensor, fill: float = 0.0) -> Tensor:
    """x [B, C, *size] sampled (bilinear / trilinear) through pixel maps [B, n+1, n+1]; outside: fill."""
    size = x.shape[2:]
    n = len(size)
    extent = torch.tensor(list(reversed(size)), dtype=torch.float32, device=x.device)  # x, y[, z]
    to_norm = _eye(1, n, x.device)[0]
    to_norm[range(n), range(n)] = 2.0 / extent
    to_norm[:n, n] = -1.0
    theta = to_norm @ maps @ torch.linalg.inv(to_norm)
    grid = _affine_grid(theta[:, :n], size)
    out = nnf.grid_sample(x - fill if fill else x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill if fill else out


# --------------------------------------------------------------------------- 2D geometry draws


def draw_resized_crop(rng: SampleRandom, hw: tuple[int, int], scale: tuple[float, float],
                      ratio: tuple[float, float], attempts: int = 10) -> tuple[Tensor, Tensor]:
    """torchvision's RandomResizedCrop draw per sample: (start [B, 2] px, frac [B, 2]) in (x, y).

    Area fraction uniform in `scale`, log aspect ratio uniform in `ratio`; the first of `attempts`
    that fits is used, else the whole image.
    """
    h, w = hw
    area = rng.uniform(attempts, *scale)
    aspect = torch.exp(rng.uniform(attempts, math.log(ratio[0]), math.log(ratio[1])))
    fw = torch.sqrt(area * aspect * h / w)
    fh = torch.sqrt(area / aspect * w / h)
    fits = (fw <= 1) & (fh <= 1)
    first = fits.float().argmax(1, keepdim=True)
    any_fit = fits.any(1)
    fw = torch.where(any_fit, fw.gather(1, first)[:, 0], 1.0)
    fh = torch.where(any_fit, fh.gather(1, first)[:, 0], 1.0)
    frac = torch.stack([fw, fh], 1)
    u = rng.uniform(2)
    start = u * (1 - frac) * torch.tensor([w, h], dtype=torch.float32, device=frac.device)
    return start, frac


def _randaugment_geometry(op: str, m: float, sign: Tensor, hw: tuple[int, int]) -> Tensor:
    """Pixel maps [B, 3, 3] of RandAugment's geometric ops, at magnitude m in [0, 1]."""
    h, w = hw
    b = sign.shape[0]
    m3 = _eye(b, 2, sign.device)
    if op == "ShearX":  # about the top-left corner, as torchvision's RandAugment (PIL's convention)
        m3[:, 0, 1] = 0.3 * m * sign
    elif op == "ShearY":
        m3[:, 1, 0] = 0.3 * m * sign
    elif op == "TranslateX":
        m3[:, 0, 2] = -float(int(150.0 / 331.0 * m * w)) * sign
    elif op == "TranslateY":
        m3[:, 1, 2] = -float(int(150.0 / 331.0 * m * h)) * sign
    elif op == "Rotate":
        center = torch.tensor([w / 2, h / 2], device=sign.device)
        m3 = _about(center, rotation_2d(torch.deg2rad(30.0 * m * sign)))
    return m3


# --------------------------------------------------------------------------- intensity ops


def _gray(x: Tensor) -> Tensor:
    """[B, 1, H, W] luminance (the image itself when gray)."""
    return F.rgb_to_grayscale(x) if x.shape[1] == 3 else x


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(mask.reshape(-1, *[1] * (a.ndim - 1)), a, b)


def _per_sample(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *[1] * (like.ndim - 1))


def brightness(x: Tensor, f: Tensor) -> Tensor:
    return (x * _per_sample(f, x)).clamp(0, 1)


def contrast(x: Tensor, f: Tensor) -> Tensor:
    mean = _gray(x).mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    f = _per_sample(f, x)
    return (f * x + (1 - f) * mean).clamp(0, 1)


def saturation(x: Tensor, f: Tensor) -> Tensor:
    if x.shape[1] != 3:
        return x
    f = _per_sample(f, x)
    return (f * x + (1 - f) * _gray(x)).clamp(0, 1)


def gamma(x: Tensor, g: Tensor) -> Tensor:
    return x.clamp(0, 1).pow(_per_sample(g, x))


def sharpness(x: Tensor, f: Tensor) -> Tensor:
    """torchvision's sharpness: blend with the [[1,1,1],[1,5,1],[1,1,1]] / 13 smoothed image (borders kept)."""
    if x.shape[-1] <= 2 or x.shape[-2] <= 2:
        return x
    c = x.shape[1]
    kernel = torch.ones(3, 3, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(c, 1, 3, 3)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = nnf.conv2d(x, kernel, groups=c)
    f = _per_sample(f, x)
    return (f * x + (1 - f) * smooth).clamp(0, 1)


def posterize(x: Tensor, bits: int) -> Tensor:
    levels = 1 << bits
    return x.mul(levels).floor_().clamp_(0, levels - 1).mul_(1.0 / levels)


def autocontrast(x: Tensor) -> Tensor:
    """Each channel of each image stretched to [0, 1]."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    scale = torch.where(hi > lo, 1.0 / (hi - lo).clamp_min(1e-12), 1.0)
    lo = torch.where(hi > lo, lo, 0.0)
    return ((x - lo) * scale).clamp(0, 1)


def equalize(x: Tensor) -> Tensor:
    """Histogram equalisation of each channel of each image (torchvision's uint8 algorithm)."""
    b, c = x.shape[:2]
    q = (x * 255).round().clamp(0, 255).long().reshape(b * c, -1)
    hist = torch.zeros(b * c, 256, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float32))
    last = hist.gather(1, (torch.arange(256, device=x.device) * (hist > 0)).amax(1, keepdim=True))[:, 0]
    step = torch.div(hist.sum(1) - last, 255, rounding_mode="floor")
    safe = step.clamp_min(1)[:, None]
    lut = torch.div(hist.cumsum(1) + torch.div(safe, 2, rounding_mode="floor"), safe, rounding_mode="floor")
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut[:, :-1]], 1).clamp(0, 255)
    out = lut.gather(1, q) / 255.0
    out = torch.where(step[:, None] > 0, out, q / 255.0)
    return out.reshape(x.shape)


def solarize(x: Tensor, threshold: float) -> Tensor:
    return torch.where(x >= threshold, 1.0 - x, x)


def gaussian_blur(x: Tensor, kernel_size: int, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with each sample's own sigma [B] (reflect padding)."""
    b, c, h, w = x.shape
    half = kernel_size // 2
    if half >= min(h, w):
        return x
    t = torch.arange(-half, half + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t[None] / sigma.clamp_min(1e-6)[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B*C, K]
    y = nnf.pad(x.reshape(1, b * c, h, w), (half, half, half, half), mode="reflect")
    y = nnf.conv2d(y, k[:, None, None, :], groups=b * c)
    y = nnf.conv2d(y, k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def _masked(x: Tensor, mask: Tensor, fn) -> Tensor:
    """fn applied to the rows in `mask` only (none: x itself)."""
    if not bool(mask.any()):
        return x
    rows = mask.nonzero()[:, 0]
    out = x.clone()
    out[rows] = fn(x[rows], rows)
    return out


# --------------------------------------------------------------------------- RandAugment


class BatchRandAugment:
    """RandAugment (N ops at magnitude M) with an op and a sign per sample and slot; its geometric
    ops are returned as pixel maps for the caller's one resampling, its intensity ops applied here."""

    def __init__(self, num_ops: int = 2, magnitude: float = 9, num_magnitude_bins: int = 31,
                 ops: Sequence[str] = RAND_AUGMENT_OPS):
        spec = RandAugment(num_ops, magnitude, num_magnitude_bins, ops)  # the per-sample one checks the settings
        self.num_ops = spec.num_ops
        self.m = spec.magnitude / (spec.num_magnitude_bins - 1)
        self.ops, self.gray_ops = spec.ops, spec.gray_ops

    def draw(self, rng: SampleRandom, channels: int) -> list[tuple[Tensor, Tensor]]:
        """(op index [B], sign [B]) per slot."""
        ops = self.gray_ops if channels == 1 else self.ops
        return [(rng.randint(len(ops))[:, 0], rng.sign()) for _ in range(self.num_ops)]

    def op_names(self, channels: int) -> tuple[str, ...]:
        return self.gray_ops if channels == 1 else self.ops

    def geometry(self, slots: list[tuple[Tensor, Tensor]], channels: int, hw: tuple[int, int]) -> Tensor:
        names = self.op_names(channels)
        b = slots[0][0].shape[0] if slots else 0
        total = _eye(b, 2, slots[0][0].device) if slots else None
        for op, sign in slots:
            m3 = _eye(b, 2, op.device)
            for k, name in enumerate(names):
                if name in _GEOMETRIC_OPS:
                    m3 = torch.where((op == k)[:, None, None], _randaugment_geometry(name, self.m, sign, hw), m3)
            total = total @ m3
        return total

    def intensity(self, x: Tensor, slots: list[tuple[Tensor, Tensor]]) -> Tensor:
        names = self.op_names(x.shape[1])
        m = self.m
        for op, sign in slots:
            for k, name in enumerate(names):
                if name in _GEOMETRIC_OPS or name == "Identity":
                    continue
                factor = 1.0 + 0.9 * m * sign
                x = _masked(x, op == k, lambda xs, rows, name=name, factor=factor: self._apply(name, xs, factor[rows]))
        return x

    def _apply(self, name: str, x: Tensor, factor: Tensor) -> Tensor:
        if name == "Brightness":
            return brightness(x, factor)
        if name == "Color":
            return saturation(x, factor)
        if name == "Contrast":
            return contrast(x, factor)
        if name == "Sharpness":
            return sharpness(x, factor)
        if name == "Posterize":
            return posterize(x, int(round(8 - 4 * self.m)))
        if name == "Solarize":
            return solarize(x, 1.0 - self.m)
        if name == "AutoContrast":
            return autocontrast(x)
        if name == "Equalize":
            return equalize(x)
        if name == "Invert":
            return 1.0 - x
        raise ValueError(f"unknown RandAugment op {name!r}")


# --------------------------------------------------------------------------- supervised augmentation


class BatchAugment2D:
    """Augment2D for a batch: resized crop, flips, rotation and RandAugment; clamp, normalize."""

    def __init__(self, cfg: AugmentConfig, fill: float = 0.0):
        self.cfg = cfg
        self.fill = fill
        self.randaugment = BatchRandAugment(cfg.randaugment_n, cfg.randaugment_m)

    def __call__(self, x: Tensor, rng: SampleRandom) -> Tensor:
        c = self.cfg
        x = as_unit_float(x)
        hw = (x.shape[-2], x.shape[-1])
        maps = geometry_2d(rng, hw, (c.crop_scale, 1.0), (3 / 4, 4 / 3), c.hflip, c.vflip, c.rotate_degrees)
        slots = self.randaugment.draw(rng, x.shape[1])
        if slots:
            maps = maps @ self.randaugment.geometry(slots, x.shape[1], hw)
        x = resample(x, maps, self.fill)
        x = self.randaugment.intensity(x, slots)
        return normalize(x.clamp(0.0, 1.0))


def geometry_2d(rng: SampleRandom, hw: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float],
                hflip: float, vflip: float, degrees: float) -> Tensor:
    """Pixel maps [B, 3, 3]: resized crop, then flips, then a rotation in +-degrees (the per-sample order)."""
    h, w = hw
    start, frac = draw_resized_crop(rng, hw, scale, ratio)
    flips = torch.stack([rng.coin(hflip), rng.coin(vflip)], 1)
    angle = torch.deg2rad(rng.uniform(1, -degrees, degrees)[:, 0])
    center = torch.tensor([w / 2, h / 2], device=angle.device)
    return crop_map(start, frac) @ flip_map((w, h), flips) @ _about(center, rotation_2d(angle))


def geometry_3d(rng: SampleRandom, dhw: tuple[int, int, int], scale_min: float, flip: float, rot90: float,
                degrees: float, rotate_axes: int) -> Tensor:
    """Voxel maps [B, 4, 4]: sub-volume (same fraction per axis), flips per axis, a 90-degree turn
    in a random plane, small rotations about `rotate_axes` random axes (the per-sample order)."""
    d, h, w = dhw
    size = torch.tensor([w, h, d], dtype=torch.float32, device=rng.seeds.device)
    frac = rng.uniform(1, scale_min, 1.0).pow(1.0 / 3.0).expand(-1, 3) if scale_min < 1 else torch.ones(rng.batch, 3, device=size.device)
    start = rng.uniform(3) * (1 - frac) * size
    flips = torch.stack([rng.coin(flip) for _ in range(3)], 1)
    center = size / 2
    maps = crop_map(start, frac) @ flip_map((w, h, d), flips)
    # 90-degree turn: plane (D,H), (D,W) or (H,W) of the volume = about grid axis x, y or z
    turn, axis, k = rng.coin(rot90), rng.randint(3)[:, 0], rng.randint(3)[:, 0] + 1
    square = torch.tensor([h == d, w == d, w == h], device=size.device)[axis]
    k = torch.where(square, k, 2)
    angle = torch.where(turn, k.float() * (math.pi / 2), 0.0)
    maps = maps @ _about(center, rotation_3d(axis, angle))
    if degrees > 0 and rotate_axes > 0:
        order = rng.uniform(3).argsort(1)  # a random permutation of the 3 axes per sample
        rot = torch.eye(3, device=size.device).repeat(rng.batch, 1, 1)
        for j in range(min(rotate_axes, 3)):
            theta = torch.deg2rad(rng.uniform(1, -degrees, degrees)[:, 0])
            rot = rotation_3d(order[:, j], theta) @ rot
        # rotate in voxel units, so non-cubic volumes stay rigid (pixel maps are in voxels already)
        maps = maps @ _about(center, rot)
    return maps


class BatchAugment3D:
    """Augment3D for a batch: flips per axis, a 90-degree turn, small rotations, intensity scale/shift."""

    def __init__(self, cfg: AugmentConfig, fill: float = 0.0):
        self.cfg = cfg
        self.fill = fill

    def __call__(self, x: Tensor, rng: SampleRandom) -> Tensor:
        c = self.cfg
        x = as_unit_float(x)
        maps = geometry_3d(rng, tuple(x.shape[-3:]), 1.0, c.flip_3d, c.rot90_3d, c.rotate_3d_degrees, c.rotate_3d_axes)
        x = resample(x, maps, self.fill)
        x = intensity_3d(x, rng, c.intensity_3d)
        return normalize(x.clamp(0.0, 1.0))


def intensity_3d(x: Tensor, rng: SampleRandom, strength: float) -> Tensor:
    """x * (1 + a) + b with a, b uniform in +-strength per sample."""
    ab = rng.uniform(2, -strength, strength)
    return x * _per_sample(1 + ab[:, 0], x) + _per_sample(ab[:, 1], x) if strength > 0 else x


# --------------------------------------------------------------------------- SSL views


class BatchView2D:
    """View2D for a batch: resized crop, flips, rotation, colour jitter (random order per sample),
    grayscale (RGB), gamma, blur, solarize, noise; clamp, normalize."""

    def __init__(self, cfg: ViewConfig):
        self.cfg = cfg

    def __call__(self, x: Tensor, rng: SampleRandom) -> Tensor:
        c = self.cfg
        x = as_unit_float(x)
        hw = (x.shape[-2], x.shape[-1])
        maps = geometry_2d(rng, hw, (c.crop_scale_min, 1.0), (c.crop_ratio_min, c.crop_ratio_max),
                           c.hflip, c.vflip, c.rotate_degrees)
        x = resample(x, maps, c.fill)
        x = self._color_jitter(x, rng)
        rgb = x.shape[1] == 3
        gray = rng.coin(c.gray_p)
        if rgb:
            x = _where(gray, _gray(x).expand_as(x), x)
        g = rng.uniform(1, max(0.01, 1 - c.gamma), 1 + c.gamma)[:, 0]
        if c.gamma > 0:
            x = gamma(x, g)
        blur, sigma = rng.coin(c.blur_p), rng.uniform(1, c.blur_sigma_min, c.blur_sigma_max)[:, 0]
        k = _blur_kernel(c.blur_kernel, min(hw))
        x = _masked(x, blur, lambda xs, rows: gaussian_blur(xs, k, sigma[rows]))
        x = _masked(x, rng.coin(c.solarize_p), lambda xs, rows: solarize(xs.clamp(0, 1), c.solarize_threshold))
        if c.noise_std > 0:
            x = x + c.noise_std * rng.normal(tuple(x.shape[1:]))
        return normalize(x.clamp(0.0, 1.0))

    def _color_jitter(self, x: Tensor, rng: SampleRandom) -> Tensor:
        c = self.cfg
        on = rng.coin(c.color_jitter_p)
        order = rng.uniform(4).argsort(1)  # torchvision's random op order, per sample
        factors = [rng.uniform(1, max(0.0, 1 - s), 1 + s)[:, 0] for s in (c.brightness, c.contrast, c.saturation)]
        hue = rng.uniform(1, -min(c.hue, 0.5), min(c.hue, 0.5))[:, 0]
        if not (c.brightness > 0 or c.contrast > 0 or c.saturation > 0 or c.hue > 0):
            return x
        rgb = x.shape[1] == 3
        ops = [
            (c.brightness > 0, lambda xs, rows: brightness(xs, factors[0][rows])),
            (c.contrast > 0, lambda xs, rows: contrast(xs, factors[1][rows])),
            (c.saturation > 0 and rgb, lambda xs, rows: saturation(xs, factors[2][rows])),
            (c.hue > 0 and rgb, lambda xs, rows: torch.stack([F.adjust_hue(xi, float(hue[r]))
                                                              for xi, r in zip(xs, rows.tolist(), strict=True)])),
        ]
        for position in range(4):
            for k, (enabled, fn) in enumerate(ops):
                if enabled:
                    x = _masked(x, on & (order[:, position] == k), fn)
        return x


class BatchView3D:
    """View3D for a batch: sub-volume, flips, 90-degree turn, small rotations, intensity, noise."""

    def __init__(self, cfg: ViewConfig):
        self.cfg = cfg

    def __call__(self, x: Tensor, rng: SampleRandom) -> Tensor:
        c = self.cfg
        x = as_unit_float(x)
        maps = geometry_3d(rng, tuple(x.shape[-3:]), c.crop_scale_min_3d, c.flip_3d, c.rot90_3d,
                           c.rotate_3d_degrees, c.rotate_3d_axes)
        x = resample(x, maps, c.fill)
        x = intensity_3d(x, rng, c.intensity_3d)
        if c.noise_std_3d > 0:
            x = x + c.noise_std_3d * rng.normal(tuple(x.shape[1:]))
        return normalize(x.clamp(0.0, 1.0))


def batch_train_transform(cfg: AugmentConfig, dim: str):
    """The batched counterpart of `train_transform`; None when augmentation is off (normalize only)."""
    if not cfg.enabled:
        return None
    return BatchAugment2D(cfg) if dim == "2d" else BatchAugment3D(cfg)


def batch_view_transform(cfg: ViewConfig, dim: str):
    return BatchView2D(cfg) if dim == "2d" else BatchView3D(cfg)
