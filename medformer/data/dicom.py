"""DICOM folders -> cached 2D/3D sample arrays, a privacy-safe index and header-tag features.

`ingest_dicom` walks a folder tree in two passes: headers first (to group single-slice files into
series volumes and collect tag values), then pixels, one sample at a time. Pixels go through the
modality LUT (rescale), VOI windowing (first valid WindowCenter/WindowWidth pair, else 0.5/99.5
percentiles), MONOCHROME1 inversion and YBR/palette -> RGB, then an aspect-preserving resize with
zero padding to S x S (2D) or S^3 (3D), stored as uint8.

Nothing identifying is written: patient/institution tags are never collected (`DENY_TAGS`), tag
values mentioning the patient are dropped, and no source path is written: every path component of
every file (DICOM or not) becomes a salted hash, so a folder or file named after a patient, an
accession number or a date cannot leak. Files that cannot be used are listed in `skipped.csv` with
reasons that quote neither their path nor any patient identifier seen in the ingest.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import logging
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .domains import MULTI_CLASS, DatasetInfo, register_dataset
from .medmnist import DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: no source path is written (older caches may hold raw file names)

# Tags whose values are never collected, whatever the config asks for.
DENY_TAGS: frozenset[str] = frozenset(
    {
        "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientBirthName",
        "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName", "OtherPatientIDs",
        "OtherPatientIDsSequence", "OtherPatientNames", "IssuerOfPatientID", "PatientComments",
        "PatientAge", "PatientSex", "PatientWeight", "PatientSize", "PatientInsurancePlanCodeSequence",
        "MedicalRecordLocator", "MilitaryRank", "BranchOfService", "EthnicGroup", "Occupation",
        "AdditionalPatientHistory", "PregnancyStatus", "ResponsiblePerson", "ResponsibleOrganization",
        "AccessionNumber", "StudyID", "InstitutionName", "InstitutionAddress",
        "InstitutionalDepartmentName", "ReferringPhysicianName", "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers", "PerformingPhysicianName", "PhysiciansOfRecord",
        "NameOfPhysiciansReadingStudy", "OperatorsName", "RequestingPhysician",
        "ScheduledPerformingPhysicianName", "StationName", "DeviceSerialNumber",
        "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate",
        "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "AcquisitionDateTime",
        "RequestAttributesSequence", "ReferencedPatientSequence", "ClinicalTrialSubjectID",
        "ClinicalTrialSubjectReadingID",
    }
)
# Value representations never used as features: names, UIDs, dates, binary and sequences.
DROP_VRS = frozenset({"PN", "UI", "DA", "DT", "TM", "SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "AT"})
NUMERIC_VRS = frozenset({"DS", "IS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})

DEFAULT_TAGS = [
    "Modality", "BodyPartExamined", "Manufacturer", "ManufacturerModelName",
    "PhotometricInterpretation", "Rows", "Columns", "SamplesPerPixel", "NumberOfFrames",
    "BitsStored", "PixelSpacing", "SliceThickness", "KVP", "XRayTubeCurrent", "Exposure",
    "RepetitionTime", "EchoTime", "MagneticFieldStrength", "ScanningSequence", "ConvolutionKernel",
    "ContrastBolusAgent", "ViewPosition", "PatientPosition", "ImageType", "ProtocolName",
    "SeriesDescription", "StudyDescription",
]

# Order matters: the first body part whose keyword occurs wins (spine before neck and chest).
DEFAULT_BODY_PART_RULES: dict[str, list[str]] = {
    "spine": ["spine", "lumbar", "vertebr", "sacrum", "coccyx", "myelo"],
    "head": ["head", "brain", "skull", "cranial", "neuro", "sinus", "orbit", "face", "iac"],
    "neck": ["neck", "thyroid", "larynx", "carotid"],
    "breast": ["breast", "mammo"],
    "chest": ["chest", "thorax", "thoracic", "lung", "pulmon", "cardiac", "heart", "rib", "cor "],
    "abdomen": ["abdomen", "abd", "liver", "hepat", "kidney", "renal", "pancrea", "adrenal",
                "spleen", "bowel", "colon", "stomach"],
    "pelvis": ["pelvis", "pelvic", "hip", "prostate", "bladder", "uterus", "rectum"],
    "knee": ["knee", "patella", "menisc"],
    "shoulder": ["shoulder", "clavicle", "scapula"],
    "hand": ["hand", "wrist", "finger", "carpal"],
    "foot": ["foot", "ankle", "toe", "calcane"],
    "extremity": ["elbow", "forearm", "humerus", "femur", "tibia", "fibula", "extremit", "leg"],
    "whole_body": ["whole body", "wholebody", "whole_body", "total body"],
}

MODALITY_MAP = {
    "CR": "xray", "DX": "xray", "DR": "xray", "RG": "xray", "PX": "xray", "IO": "xray",
    "MR": "mri", "CT": "ct", "US": "ultrasound", "MG": "mammography", "PT": "pet",
    "NM": "nuclear_medicine", "XA": "angiography", "RF": "fluoroscopy", "OP": "fundus",
    "OPT": "oct", "SM": "pathology", "XC": "photo", "ES": "endoscopy",
}

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class _Skip(Exception):
    """A file that cannot become a sample: `kind` is the report category."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.forms: list[str] = []  # identifier forms of the file, to redact skip reasons


@dataclass
class DicomConfig:
    size_2d: int = 28
    size_3d: int = 28
    min_slices: int = 8  # series (or multi-frame files) with fewer slices become 2D samples
    tags: list[str] = field(default_factory=lambda: list(DEFAULT_TAGS))
    min_fill_rate: float = 0.3
    max_cardinality: int = 50
    body_part_rules: dict[str, list[str]] = field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_BODY_PART_RULES.items()}
    )
    max_text_len: int = 64


@dataclass
class SampleRecord:
    """One row of index.csv."""

    index: int
    sample_id: str
    path: str  # anonymised relative path: every component a salted hash (see _Anonymiser)
    dim: str
    modality: str
    body_part: str
    channels: int
    n_slices: int
    array_index: int  # row in images_{dim}.npy


@dataclass
class DicomIndex:
    """What an ingestion produced (or what its cache holds)."""

    cache_dir: Path
    records: list[SampleRecord]
    tag_features: np.ndarray
    tag_columns: list[str]
    skipped: list[tuple[str, str]]
    report: dict[str, Any]
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.records)

    def column(self, name: str) -> np.ndarray:
        """Per-sample values of an index.csv column, e.g. "modality"."""
        return np.array([getattr(r, name) for r in self.records])

    @classmethod
    def load(cls, cache_dir: str | os.PathLike) -> DicomIndex:
        cache_dir = Path(cache_dir)
        if not (cache_dir / "report.json").is_file():
            raise DataError(f"{cache_dir} holds no DICOM cache; run ingest_dicom first")
        with open(cache_dir / "index.csv", newline="") as fh:
            records = [_record_from_row(row) for row in csv.DictReader(fh)]
        with open(cache_dir / "skipped.csv", newline="") as fh:
            skipped = [(row["path"], row["reason"]) for row in csv.DictReader(fh)]
        return cls(
            cache_dir=cache_dir,
            records=records,
            tag_features=np.load(cache_dir / "tag_features.npy"),
            tag_columns=json.loads((cache_dir / "tag_columns.json").read_text()),
            skipped=skipped,
            report=json.loads((cache_dir / "report.json").read_text()),
            from_cache=True,
        )


def _record_from_row(row: dict[str, str]) -> SampleRecord:
    ints = ("index", "channels", "n_slices", "array_index")
    return SampleRecord(**{k: int(v) if k in ints else v for k, v in row.items()})


# --- small value helpers --------------------------------------------------------------------


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


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


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


# --- identifiers (read transiently, never stored) -------------------------------------------


def _identifier_forms(ds: Any) -> list[str]:
    """Normalised forms of this file's PatientName and PatientID, for matching only."""
    forms = []
    pid = str(ds.get("PatientID", "") or "")
    if len(_norm(pid)) >= 3:
        forms.append(_norm(pid))
    name = ds.get("PatientName")
    if name:
        parts = [p for p in str(name).split("^") if p.strip()]
        forms.append(_norm("".join(parts)))
        if len(parts) >= 2:
            forms.append(_norm(parts[1] + parts[0]))
        forms.extend(_norm(p) for p in parts if len(_norm(p)) >= 4)
    return [f for f in forms if len(f) >= 3]


def _mentions(text: str, forms: list[str]) -> bool:
    low = _norm(text)
    return any(f in low for f in forms)


def _new_salt() -> bytes:
    # A fresh random salt per ingestion, never stored: short numeric IDs cannot be brute-forced back.
    return os.urandom(16)


# Extensions kept on anonymised paths (help to find a skipped file); any other could be a name part.
PLAIN_SUFFIXES = frozenset(
    {".dcm", ".dicom", ".dic", ".ima", ".img", ".raw", ".txt", ".csv", ".json", ".xml", ".pdf", ".png",
     ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".zip", ".gz", ".nii", ".icc", ".md", ".html"}
)
WITHHELD = "details withheld: they quote a patient identifier"


class _Anonymiser:
    """Anonymised paths and skip reasons of one ingestion (its salt is never stored)."""

    def __init__(self, src: Path, forms: set[str], salt: bytes) -> None:
        self.src, self.forms, self.salt = src, sorted(forms), salt

    def _token(self, part: str) -> str:
        return "anon-" + hmac.new(self.salt, part.encode(), hashlib.sha256).hexdigest()[:10]

    def path(self, rel: str) -> str:
        """Every component hashed; a plain extension (".dcm", ".txt") kept to help find a file."""
        parts = [self._token(p) for p in Path(rel).parts]
        suffix = Path(rel).suffix.lower()
        if parts and suffix in PLAIN_SUFFIXES and not _mentions(suffix, self.forms):
            parts[-1] += suffix
        return "/".join(parts)

    def text(self, value: Any) -> Any:
        """A tag value, or "" if it mentions a patient of the ingest (files only check their own)."""
        return "" if isinstance(value, str) and _mentions(value, self.forms) else value

    def reason(self, rel: str, kind: str, text: str) -> str:
        """A skip reason without the file's path, or only its kind if it names a patient."""
        for where in (str(self.src / rel), rel):
            text = text.replace(where, "<file>")
        return f"{kind}: {WITHHELD}" if _mentions(text, self.forms) else text


# --- header pass ----------------------------------------------------------------------------


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


def _safe_text(value: Any, forms: list[str]) -> str:
    text = str(value or "")
    return "" if _mentions(text, forms) else text


def usable_tags(keywords: list[str]) -> tuple[list[str], dict[str, str]]:
    """Config tags that may become features, and why the others may not (static rules)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    keep, decisions = [], {}
    for kw in dict.fromkeys(keywords):
        technical = kw in ("PatientPosition", "PatientOrientation")
        if kw in DENY_TAGS or (kw.startswith("Patient") and not technical):
            decisions[kw] = "dropped: identifying tag (deny-list)"
        elif tag_for_keyword(kw) is None:
            decisions[kw] = "dropped: not a DICOM keyword"
        elif dictionary_VR(kw) in DROP_VRS or kw.endswith("UID"):
            decisions[kw] = f"dropped: VR {dictionary_VR(kw)} (names, UIDs, dates, binary)"
        else:
            keep.append(kw)
    return keep, decisions


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


# --- pixels ---------------------------------------------------------------------------------


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


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


# --- sample planning ------------------------------------------------------------------------


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


# --- building samples -----------------------------------------------------------------------


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


def _gray(frames: np.ndarray, color: bool) -> np.ndarray:
    return frames @ _LUMA if color else frames


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


# --- tag features ---------------------------------------------------------------------------


def tag_features(
    values: list[dict[str, Any]], cfg: DicomConfig
) -> tuple[np.ndarray, list[str], dict[str, str]]:
    """Per-sample tag values -> ([N, F] float32 in [0, 1], column names, per-tag decision).

    Numeric tags are min-max scaled (missing -> column median); categorical tags one-hot
    (missing -> all zeros). Tags filled in < min_fill_rate of samples, constant tags and
    categorical tags with > max_cardinality values are dropped.
    """
    keywords, decisions = usable_tags(cfg.tags)
    blocks, columns = [], []
    n = len(values)
    for kw in keywords:
        present = [v[kw] for v in values if kw in v]
        fill = len(present) / n if n else 0.0
        if fill < cfg.min_fill_rate:
            decisions[kw] = f"dropped: fill rate {fill:.2f} < {cfg.min_fill_rate}"
            continue
        distinct = sorted(set(present), key=str)
        if len(distinct) < 2:
            decisions[kw] = "dropped: constant"
            continue
        if isinstance(present[0], float):
            blocks.append(_numeric_column(values, kw))
            columns.append(kw)
            decisions[kw] = "kept: numeric, min-max scaled"
        elif len(distinct) > cfg.max_cardinality:
            decisions[kw] = f"dropped: {len(distinct)} distinct values > {cfg.max_cardinality}"
        else:
            blocks.append(np.array([[v.get(kw) == d for d in distinct] for v in values], dtype=np.float32))
            columns.extend(f"{kw}={d}" for d in distinct)
            decisions[kw] = f"kept: categorical, {len(distinct)} one-hot columns"
    matrix = np.concatenate([b.reshape(n, -1) for b in blocks], axis=1) if blocks else np.zeros((n, 0))
    return matrix.astype(np.float32), columns, decisions


def _numeric_column(values: list[dict[str, Any]], kw: str) -> np.ndarray:
    col = np.array([v.get(kw, np.nan) for v in values], dtype=np.float64)
    lo, hi = np.nanmin(col), np.nanmax(col)
    scaled = (col - lo) / (hi - lo)
    return np.where(np.isnan(scaled), np.nanmedian(scaled), scaled).astype(np.float32)


# --- cache ----------------------------------------------------------------------------------


def _list_files(src: Path, exclude: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(src):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if (root_path / d).resolve() != exclude)
        files.extend(root_path / n for n in sorted(names))
    return files


def fingerprint(src: Path, files: list[Path], cfg: DicomConfig) -> str:
    """Hash of the file list with sizes and mtimes, the config and the cache format."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, asdict(cfg)], sort_keys=True).encode())
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(src).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _cache_matches(cache_dir: Path, print_: str) -> bool:
    names = ("index.csv", "skipped.csv", "tag_features.npy", "tag_columns.json", "images_2d.npy", "images_3d.npy")
    try:
        report = json.loads((cache_dir / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return report.get("fingerprint") == print_ and all((cache_dir / n).is_file() for n in names)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _stack(images: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    return np.stack(images) if images else np.zeros((0, *shape), dtype=np.uint8)


def _write_cache(
    cache_dir: Path,
    samples: list[_Sample],
    skipped: list[tuple[str, str, str]],
    anon: _Anonymiser,
    cfg: DicomConfig,
    print_: str,
    n_files: int,
) -> DicomIndex:
    records, arrays = [], {"2d": [], "3d": []}
    for i, s in enumerate(samples):
        body_part = anon.text(s.header.body_part) or "unknown"
        records.append(
            SampleRecord(i, f"{i:06d}", anon.path(s.header.rel) + s.part, s.dim, s.header.modality,
                         body_part, s.channels, s.n_slices, len(arrays[s.dim]))
        )
        arrays[s.dim].append(s.image)
    np.save(cache_dir / "images_2d.npy", _stack(arrays["2d"], (cfg.size_2d, cfg.size_2d, 3)))
    np.save(cache_dir / "images_3d.npy", _stack(arrays["3d"], (cfg.size_3d,) * 3))
    tags = [{k: v for k, v in s.header.tags.items() if anon.text(v) == v} for s in samples]
    features, columns, decisions = tag_features(tags, cfg)
    np.save(cache_dir / "tag_features.npy", features)
    (cache_dir / "tag_columns.json").write_text(json.dumps(columns, indent=1))
    fields = list(SampleRecord.__dataclass_fields__)
    _write_csv(cache_dir / "index.csv", fields, [[getattr(r, f) for f in fields] for r in records])
    skipped_rows = [(anon.path(rel), anon.reason(rel, kind, reason)) for rel, kind, reason in skipped]
    _write_csv(cache_dir / "skipped.csv", ["path", "reason"], skipped_rows)
    report = {
        "fingerprint": print_,
        "files": n_files,
        "files_used": n_files - len(skipped),
        "samples": len(samples),
        "samples_by_dim": dict(Counter(r.dim for r in records)),
        "samples_by_modality": dict(Counter(r.modality for r in records)),
        "samples_by_body_part": dict(Counter(r.body_part for r in records)),
        "skipped": len(skipped),
        "skipped_by_reason": dict(Counter(kind for _, kind, _ in skipped)),
        "tag_decisions": decisions,
        "config": asdict(cfg),
    }
    # Written last: a report with a matching fingerprint marks a complete cache.
    (cache_dir / "report.json").write_text(json.dumps(report, indent=1))
    return DicomIndex(cache_dir, records, features, columns, skipped_rows, report)


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings and decoder tracebacks: every failure lands in skipped.csv."""
    import pydicom  # noqa: F401 - importing pydicom resets its logger's level, so import it first

    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def check_dicom_dir(src: str | os.PathLike, exclude: str | os.PathLike | None = None) -> None:
    """Raise a one-line DataError unless `src` is a folder holding at least one file."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"DICOM folder {src} not found; set data.dicom_dir to a folder of DICOM files")
    skip = Path(exclude).resolve() if exclude is not None else None
    for root, dirs, names in os.walk(src):
        if names:
            return
        dirs[:] = [d for d in dirs if (Path(root) / d).resolve() != skip]
    raise DataError(f"DICOM folder {src} is empty; put DICOM files (any extension) in it")


def ingest_dicom(src: str | os.PathLike, cache_dir: str | os.PathLike, cfg: DicomConfig | None = None) -> DicomIndex:
    """Ingest a DICOM folder tree into `cache_dir`, or reuse the cache if nothing changed."""
    cfg = cfg or DicomConfig()
    src, cache_dir = Path(src), Path(cache_dir)
    check_dicom_dir(src, cache_dir)
    files = _list_files(src, cache_dir.resolve())
    print_ = fingerprint(src, files, cfg)
    if _cache_matches(cache_dir, print_):
        index = DicomIndex.load(cache_dir)
        log.info("reusing DICOM cache %s (%d samples, %d files skipped)",
                 cache_dir, len(index), len(index.skipped))
        return index
    with _quiet_pydicom():
        headers, skipped, forms = _read_headers(src, files, cfg)
        samples = _build_samples(plan_samples(headers, cfg.min_slices), cfg, skipped)
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / "report.json").unlink(missing_ok=True)
    anon = _Anonymiser(src, forms, _new_salt())
    index = _write_cache(cache_dir, samples, skipped, anon, cfg, print_, len(files))
    log.info("ingested %d DICOM samples from %d files; %d skipped, reasons in %s",
             len(samples), len(files), len(skipped), cache_dir / "skipped.csv")
    return index


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


# --- torch dataset --------------------------------------------------------------------------


class DicomDataset(Dataset):
    """The 2D or 3D samples of an ingested DICOM cache, as MedMNIST-style dict items.

    `labels` (e.g. pseudo-labels) are indexed by global sample index (index.csv row) or, if
    their length equals this dataset's size, by position; samples labelled -1 are left out.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        dim: str = "2d",
        labels: np.ndarray | None = None,
        task: str = "dicom",
        transform: Any = None,
    ) -> None:
        if dim not in ("2d", "3d"):
            raise DataError(f"dim must be '2d' or '3d', got {dim!r}")
        self.cache_dir = Path(cache_dir)
        self.dim, self.task, self.transform = dim, task, transform
        index = DicomIndex.load(self.cache_dir)
        records = [r for r in index.records if r.dim == dim]
        self.labels = self._align_labels(labels, records, len(index.records))
        if self.labels is not None:
            keep = self.labels >= 0
            records = [r for r, k in zip(records, keep, strict=True) if k]
            self.labels = self.labels[keep]
        self.records = records
        self.sample_indices = np.array([r.index for r in records], dtype=np.int64)
        self.images = np.load(self.cache_dir / f"images_{dim}.npy", mmap_mode="r")
        n_classes = int(self.labels.max()) + 1 if self.labels is not None and len(self.labels) else 1
        self.info = DatasetInfo(f"dicom{dim}", dim, "mixed", "mixed", MULTI_CLASS, n_classes, 3 if dim == "2d" else 1)
        register_dataset(self.info)
        self.domains = sorted({(r.modality, r.body_part) for r in records})

    @staticmethod
    def _align_labels(labels: np.ndarray | None, records: list[SampleRecord], n_total: int) -> np.ndarray | None:
        if labels is None:
            return None
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if len(labels) == n_total:
            return labels[[r.index for r in records]]
        if len(labels) == len(records):
            return labels
        raise DataError(
            f"got {len(labels)} labels but the cache holds {n_total} samples ({len(records)} {records[0].dim if records else ''})"
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.records[i]
        x = torch.from_numpy(np.array(self.images[r.array_index], dtype=np.float32)).div_(255.0)
        x = x.permute(2, 0, 1)[: r.channels].contiguous() if self.dim == "2d" else x[None]
        if self.transform is not None:
            x = self.transform(x)
        item = {
            "image": x,
            "dataset": self.info.flag,
            "index": r.index,
            "modality": r.modality,
            "body_part": r.body_part,
            "task": self.task,
        }
        if self.labels is not None:
            item["label"] = torch.tensor(int(self.labels[i]), dtype=torch.long)
        return item
