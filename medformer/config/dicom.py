"""Settings of a DICOM ingestion and their defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

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
