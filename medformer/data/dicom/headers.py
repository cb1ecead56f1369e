"""The header pass: one file's header (pixels not read) -> what the later steps need, no identifiers.

Also the modality and body-part mapping, the check that a file's pixels can be decoded, and the
`_Skip` exception with which every step reports a file that cannot become a sample.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...config.dicom import DicomConfig
from .privacy import NUMERIC_VRS, _identifier_forms, _mentions, _safe_text, usable_tags

MODALITY_MAP = {
    "CR": "xray", "DX": "xray", "DR": "xray", "RG": "xray", "PX": "xray", "IO": "xray",
    "MR": "mri", "CT": "ct", "US": "ultrasound", "MG": "mammography", "PT": "pet",
    "NM": "nuclear_medicine", "XA": "angiography", "RF": "fluoroscopy", "OP": "fundus",
    "OPT": "oct", "SM": "pathology", "XC": "photo", "ES": "endoscopy",
}


class _Skip(Exception):
    """A file that cannot become a sample: `kind` is the report category."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.forms: list[str] = []  # identifier forms of the file, to redact skip reasons


# --- small value helpers -------------------------------------------------------------------------


def _one_line(err: BaseException | str) -> str:
    text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return " ".join(text.split())[:200]


def _floats(value: Any) -> list[float]:
    """A (possibly multi-valued) numeric tag as floats; [] when missing or not numeric."""
    if value is None or value == "":
        return []
    items = list(value) if _is_multi(value) else [value]
    try:
        return [float(v) for v in items]
    except (TypeError, ValueError):
        return []


def _is_multi(value: Any) -> bool:
    return hasattr(value, "__iter__") and not isinstance(value, (str, bytes))


def _n_frames(ds: Any) -> int:
    frames = _floats(ds.get("NumberOfFrames"))
    return max(1, int(frames[0])) if frames else 1


def map_modality(value: str | None) -> str:
    """DICOM Modality code -> the domain table's modality name."""
    code = (value or "").strip().upper()
    if not code:
        return "unknown"
    return MODALITY_MAP.get(code, code.lower())


def impute_body_part(
    body_part_examined: str | None, descriptions: list[str], rules: dict[str, list[str]]
) -> str:
    """BodyPartExamined (normalised by the rules), else keyword rules over descriptions."""
    examined = (body_part_examined or "").strip()
    if examined:
        return _match_rules(examined, rules) or re.sub(r"\s+", "_", examined.lower())
    for text in descriptions:
        found = _match_rules(text or "", rules)
        if found:
            return found
    return "unknown"


def _match_rules(text: str, rules: dict[str, list[str]]) -> str | None:
    low = f" {text.lower()} "
    for part, keywords in rules.items():
        if any(k.lower() in low for k in keywords):
            return part
    return None


# --- header pass ---------------------------------------------------------------------------------


@dataclass
class _Header:
    """What the pixel pass and the tag features need from one file (no identifiers)."""

    path: Path
    rel: str
    sop: str  # SOPInstanceUID (else the path): the same image exported twice is used once
    series: str | None
    shape: tuple[int, int, int]  # rows, columns, samples per pixel
    frames: int
    instance: float | None
    position: list[float]
    orientation: list[float]
    spacing: tuple[float, float]
    slice_spacing: float | None  # SpacingBetweenSlices, else SliceThickness
    photometric: str
    window: tuple[float, float] | None
    modality: str
    body_part: str
    tags: dict[str, Any]


def _first_window(ds: Any) -> tuple[float, float] | None:
    centers, widths = _floats(ds.get("WindowCenter")), _floats(ds.get("WindowWidth"))
    for c, w in zip(centers, widths, strict=False):
        if np.isfinite(c) and np.isfinite(w) and w > 1:
            return c, w
    return None


def _spacing(ds: Any) -> tuple[float, float]:
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        values = _floats(ds.get(key))
        if len(values) >= 2 and values[0] > 0 and values[1] > 0:
            return values[0], values[1]
    return 1.0, 1.0


def _check_decodable(ds: Any) -> None:
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise _Skip("no_decoder", f"no pixel decoder for {syntax.name}") from None
    if not decoder.is_available:
        raise _Skip("no_decoder", f"{syntax.name} needs a decoder plugin that is not installed")


def _read_header(path: Path, rel: str, cfg: DicomConfig, keywords: list[str]) -> tuple[_Header, list[str]]:
    """Header of one file (pixels not read) plus its identifier forms, to redact what is written."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path, stop_before_pixels=True, force=False)
    except InvalidDicomError as err:
        raise _Skip("not_dicom", _one_line(err)) from None
    except Exception as err:  # noqa: BLE001 - pydicom raises many types on damaged files
        raise _Skip("unreadable", _one_line(err)) from None
    forms: list[str] = []
    try:
        forms = _identifier_forms(ds)
        if not ds.get("Rows") or not ds.get("Columns"):
            raise _Skip("no_pixel_data", f"no image (SOP class {_sop_name(ds)})")
        _check_decodable(ds)
        return _header_of(ds, path, rel, cfg, keywords, forms), forms
    except _Skip as skip:
        skip.forms = forms
        raise
    except Exception as err:  # noqa: BLE001 - malformed values surface only when converted
        skip = _Skip("unreadable", f"malformed header: {_one_line(err)}")
        skip.forms = forms
        raise skip from None


def _header_of(ds: Any, path: Path, rel: str, cfg: DicomConfig, keywords: list[str], forms: list[str]) -> _Header:
    rows, cols = ds.get("Rows"), ds.get("Columns")
    return _Header(
        path=path,
        rel=rel,
        sop=str(ds.get("SOPInstanceUID", "") or "") or rel,
        series=str(ds.get("SeriesInstanceUID", "") or "") or None,
        shape=(int(rows), int(cols), int(ds.get("SamplesPerPixel", 1) or 1)),
        frames=_n_frames(ds),
        instance=(_floats(ds.get("InstanceNumber")) or [None])[0],
        position=_floats(ds.get("ImagePositionPatient")),
        orientation=_floats(ds.get("ImageOrientationPatient")),
        spacing=_spacing(ds),
        slice_spacing=(_floats(ds.get("SpacingBetweenSlices")) or _floats(ds.get("SliceThickness")) or [None])[0],
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper(),
        window=_first_window(ds),
        modality=map_modality(ds.get("Modality")),
        body_part=impute_body_part(
            _safe_text(ds.get("BodyPartExamined"), forms),
            # Only a rule's key comes out of the descriptions, so they need no redaction here.
            [str(ds.get(k) or "") for k in ("ProtocolName", "StudyDescription", "SeriesDescription")],
            cfg.body_part_rules,
        ),
        tags=_collect_tags(ds, keywords, cfg.max_text_len, forms),
    )


def _sop_name(ds: Any) -> str:
    uid = ds.get("SOPClassUID")
    return getattr(uid, "name", None) or "unknown"


def _collect_tags(ds: Any, keywords: list[str], max_len: int, forms: list[str]) -> dict[str, Any]:
    """Feature values of the allowed keywords: floats for numeric VRs, short strings otherwise."""
    from pydicom.datadict import dictionary_VR

    out: dict[str, Any] = {}
    for kw in keywords:
        value = ds.get(kw)
        if value is None or value == "":
            continue
        if dictionary_VR(kw) in NUMERIC_VRS:
            numbers = _floats(value)
            if numbers and np.isfinite(numbers[0]):
                out[kw] = numbers[0]
            continue
        text = "\\".join(str(v) for v in value) if _is_multi(value) else str(value)
        text = " ".join(text.split())
        if text and len(text) <= max_len and not _mentions(text, forms):
            out[kw] = text
    return out


def _read_headers(
    src: Path, files: list[Path], cfg: DicomConfig
) -> tuple[list[_Header], list[tuple[str, str, str]], set[str]]:
    """Headers of usable files, skipped (rel, kind, reason), identifier forms of every file read."""
    keywords, _ = usable_tags(cfg.tags)
    headers, skipped, forms = [], [], set()
    for path in files:
        rel = path.relative_to(src).as_posix()
        try:
            header, file_forms = _read_header(path, rel, cfg, keywords)
        except _Skip as skip:
            skipped.append((rel, skip.kind, str(skip)))
            forms.update(skip.forms)
            continue
        forms.update(file_forms)
        headers.append(header)
    return headers, skipped, forms
