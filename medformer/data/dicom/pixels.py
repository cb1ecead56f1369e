"""Pixels: decoding (modality LUT, colour), VOI windowing to [0, 1], resizing with zero padding."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .headers import _first_window, _n_frames, _one_line, _Skip

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def decode_values(ds: Any) -> tuple[np.ndarray, bool]:
    """Pixel data after the modality LUT: ([F, H, W] float, False) or ([F, H, W, 3] RGB, True)."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space, pixel_array

    if "PixelData" not in ds:
        raise _Skip("no_pixel_data", "no PixelData element")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(ds, raw=True)
    except Exception as err:  # noqa: BLE001 - decoders raise many types
        raise _classify_decode_error(err) from None
    frames = _n_frames(ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1:
        arr = arr[None]
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        scale = 65535.0 if arr.max() > 255 else 255.0
        return arr.astype(np.float32) / scale, True
    if samples == 3:
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            arr = convert_color_space(arr, photometric, "RGB", per_frame=True)
        bits = int(ds.get("BitsStored", 8) or 8)
        return arr.astype(np.float32) / float(2**bits - 1), True
    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32), False


def _classify_decode_error(err: BaseException) -> _Skip:
    text = _one_line(err)
    low = text.lower()
    if "less than expected" in low or "truncat" in low or isinstance(err, EOFError):
        return _Skip("truncated", text)
    if "plugins are missing" in low or "missing dependencies" in low:
        return _Skip("no_decoder", text)
    return _Skip("decode_failed", text)


def to_unit(values: np.ndarray, window: tuple[float, float] | None, photometric: str) -> np.ndarray:
    """Gray values after rescale -> [0, 1]: VOI window (DICOM linear) or robust percentiles."""
    if window is not None:
        center, width = window
        out = (values - (center - 0.5)) / (width - 1.0) + 0.5
    else:
        finite = values[np.isfinite(values)]
        lo, hi = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
        out = (values - lo) / max(hi - lo, 1e-6)
    out = np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0).astype(np.float32)
    return 1.0 - out if photometric == "MONOCHROME1" else out


def normalize_pixels(ds: Any) -> np.ndarray:
    """One dataset's frames in [0, 1]: [F, H, W] gray or [F, H, W, 3] RGB."""
    values, color = decode_values(ds)
    if color:
        return np.clip(values, 0.0, 1.0)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    return to_unit(values, _first_window(ds), photometric)


def resize_pad(image: np.ndarray, size: int, spacing: tuple[float, ...] | None = None) -> np.ndarray:
    """[H, W, C] or [D, H, W] in [0, 1] -> the same layout at size^2 / size^3, aspect kept, zero pad."""
    is_2d = image.ndim == 3 and image.shape[-1] in (1, 3) and (spacing is None or len(spacing) == 2)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    x = x.permute(2, 0, 1)[None] if is_2d else x[None, None]
    grid = tuple(x.shape[2:])
    spacing = tuple(spacing) if spacing is not None else (1.0,) * len(grid)
    extent = [n * s for n, s in zip(grid, spacing, strict=True)]
    scale = size / max(extent)
    target = tuple(max(1, min(size, round(e * scale))) for e in extent)
    if len(grid) == 2:
        x = F.interpolate(x, size=target, mode="bilinear", antialias=True, align_corners=False)
    elif all(t <= g for t, g in zip(target, grid, strict=True)):
        x = F.interpolate(x, size=target, mode="area")
    else:
        x = F.interpolate(x, size=target, mode="trilinear", align_corners=False)
    pad = []
    for t in reversed(target):
        before = (size - t) // 2
        pad += [before, size - t - before]
    x = F.pad(x, pad).clamp_(0.0, 1.0)[0]
    return (x.permute(1, 2, 0) if is_2d else x[0]).numpy()


def _gray(frames: np.ndarray, color: bool) -> np.ndarray:
    return frames @ _LUMA if color else frames


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
