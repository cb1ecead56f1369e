"""Headers -> sample plans (2D images, multi-frame files, series volumes) -> uint8 sample arrays."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...config.dicom import DicomConfig
from .headers import _Header, _one_line, _Skip
from .pixels import _gray, _to_uint8, decode_values, resize_pad, to_unit

# --- sample planning -----------------------------------------------------------------------------


@dataclass
class _Plan:
    headers: list[_Header]  # one file (2D or multi-frame) or a series of slices in order
    dim: str


def _slice_order(headers: list[_Header]) -> tuple[list[_Header], float | None]:
    """Slices along the normal of ImageOrientationPatient, else by InstanceNumber; slice gap."""
    if all(len(h.position) == 3 and len(h.orientation) == 6 for h in headers):
        o = np.array(headers[0].orientation)
        normal = np.cross(o[:3], o[3:])
        depth = [float(np.dot(normal, h.position)) for h in headers]
        order = np.argsort(depth, kind="stable")
        gaps = np.abs(np.diff(np.sort(depth)))
        gap = float(np.median(gaps)) if gaps.size and np.median(gaps) > 0 else None
        return [headers[i] for i in order], gap
    if all(h.instance is not None for h in headers):
        return sorted(headers, key=lambda h: h.instance), None
    return sorted(headers, key=lambda h: h.rel), None


def plan_samples(headers: list[_Header], min_slices: int) -> list[_Plan]:
    """Group single-frame gray files by series into volumes (>= min_slices), the rest 2D."""
    series: dict[tuple, list[_Header]] = {}
    plans: list[_Plan] = []
    for h in headers:
        if h.frames > 1:
            plans.append(_Plan([h], "3d" if h.frames >= min_slices else "2d"))
        elif h.series is None or h.shape[2] != 1:
            plans.append(_Plan([h], "2d"))
        else:
            series.setdefault((h.series, h.shape), []).append(h)
    for group in series.values():
        if len({h.sop for h in group}) >= min_slices:
            plans.append(_Plan(_slice_order(group)[0], "3d"))
        else:
            plans.extend(_Plan([h], "2d") for h in group)
    return sorted(plans, key=lambda p: p.headers[0].rel)


# --- building samples ----------------------------------------------------------------------------


@dataclass
class _Sample:
    image: np.ndarray  # uint8: [S, S, 3] or [S, S, S]
    header: _Header
    part: str  # "" (the whole file), "#frame<i>" or "#series", appended to the anonymised path
    dim: str
    channels: int
    n_slices: int


def _read_full(path: Path) -> Any:
    from pydicom import dcmread

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dcmread(path, force=False)
    except Exception as err:  # noqa: BLE001
        raise _Skip("unreadable", _one_line(err)) from None


def _sample_2d(frame: np.ndarray, color: bool, h: _Header, part: str, size: int) -> _Sample:
    rgb = frame if color else np.repeat(frame[..., None], 3, axis=-1)
    image = _to_uint8(resize_pad(rgb, size, h.spacing))
    return _Sample(image, h, part, "2d", 3 if color else 1, 1)


def _unit_frames(values: np.ndarray, color: bool, h: _Header) -> np.ndarray:
    return np.clip(values, 0.0, 1.0) if color else to_unit(values, h.window, h.photometric)


def _samples_of_file(h: _Header, dim: str, cfg: DicomConfig) -> list[_Sample]:
    values, color = decode_values(_read_full(h.path))
    frames = _unit_frames(values, color, h)
    if dim == "3d":
        dz = h.slice_spacing or float(np.mean(h.spacing))
        volume = resize_pad(_gray(frames, color), cfg.size_3d, (dz, *h.spacing))
        return [_Sample(_to_uint8(volume), h, "", "3d", 1, len(frames))]
    if len(frames) == 1:
        return [_sample_2d(frames[0], color, h, "", cfg.size_2d)]
    return [_sample_2d(f, color, h, f"#frame{i}", cfg.size_2d) for i, f in enumerate(frames)]


def _samples_of_series(
    plan: _Plan, cfg: DicomConfig, skipped: list[tuple[str, str, str]], seen: set[str]
) -> list[_Sample]:
    """Decode every slice; a volume when enough survive, else the survivors as 2D samples."""
    decoded = []
    for h in plan.headers:
        try:
            _check_new(h, seen)
            values, color = decode_values(_read_full(h.path))
            decoded.append((h, values[0], color))
            seen.add(h.sop)
        except _Skip as skip:
            skipped.append((h.rel, skip.kind, str(skip)))
    if len(decoded) < cfg.min_slices:
        return [
            _sample_2d(_unit_frames(v[None], c, h)[0], c, h, "", cfg.size_2d) for h, v, c in decoded
        ]
    first = decoded[0][0]
    stack = np.stack([_gray(v, c) for _, v, c in decoded])
    volume_values = to_unit(stack, first.window, first.photometric)
    _, gap = _slice_order([h for h, _, _ in decoded])
    dz = gap or first.slice_spacing or float(np.mean(first.spacing))
    volume = resize_pad(volume_values, cfg.size_3d, (dz, *first.spacing))
    return [_Sample(_to_uint8(volume), first, "#series", "3d", 1, len(decoded))]


def _check_new(h: _Header, seen: set[str]) -> None:
    if h.sop in seen:
        raise _Skip("duplicate", "same SOPInstanceUID as a file already used")


def _build_samples(plans: list[_Plan], cfg: DicomConfig, skipped: list[tuple[str, str, str]]) -> list[_Sample]:
    samples: list[_Sample] = []
    seen: set[str] = set()
    for plan in plans:
        try:
            if len(plan.headers) > 1:
                samples.extend(_samples_of_series(plan, cfg, skipped, seen))
            else:
                _check_new(plan.headers[0], seen)
                samples.extend(_samples_of_file(plan.headers[0], plan.dim, cfg))
                seen.add(plan.headers[0].sop)
        except _Skip as skip:
            skipped.append((plan.headers[0].rel, skip.kind, str(skip)))
        except Exception as err:  # noqa: BLE001 - one odd file must not stop an ingestion
            skipped.append((plan.headers[0].rel, "decode_failed", f"decode_failed: {_one_line(err)}"))
    return samples
