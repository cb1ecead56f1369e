"""Per-sample transform primitives: normalization, RNG draws, 2D crops/flips/rotations/filters and
3D crops/flips/rotations/intensity, on one float image [C, H, W] or volume [C, D, H, W] in [0, 1].

All randomness comes from torch's global RNG, so `torch.manual_seed` makes a transform reproducible.
Small-kernel filters (blur, sharpness) are written as shifted sums rather than conv2d: on tiny
images conv2d's thread pool costs far more than the filter itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as nnf
from torch import Tensor
from torchvision.transforms import RandomResizedCrop as _RRC
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional import InterpolationMode

MEAN = 0.5
STD = 0.5

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
