"""DICOM folders -> cached 2D/3D sample arrays, a privacy-safe index and header-tag features.

`ingest_dicom` walks a folder tree in two passes: headers first (to group single-slice files into
series volumes and collect tag values), then pixels, one sample at a time. Pixels go through the
modality LUT (rescale), VOI windowing (first valid WindowCenter/WindowWidth pair, else 0.5/99.5
percentiles), MONOCHROME1 inversion and YBR/palette -> RGB, then an aspect-preserving resize with
zero padding to S x S (2D) or S^3 (3D), stored as uint8.

Nothing identifying is written: the rules are all in privacy.py (read it alone to audit them).

    privacy.py   what may be written: tag deny-list, identifier matching, salted path hashes
    config.py    DicomConfig and its defaults
    headers.py   the header pass, modality / body-part mapping, decodability checks
    pixels.py    decoding, windowing to [0, 1], resize with zero padding
    samples.py   headers -> 2D images and 3D volumes
    features.py  tag values -> feature matrix
    ingest.py    the cache: fingerprint, writing, ingest_dicom, check_dicom_dir
    dataset.py   reading a cache: DicomIndex, SampleRecord, DicomDataset
"""

from ...config.dicom import DEFAULT_BODY_PART_RULES, DEFAULT_TAGS, DicomConfig
from .dataset import DicomDataset, DicomIndex, SampleRecord
from .features import tag_features
from .headers import MODALITY_MAP, impute_body_part, map_modality
from .ingest import CACHE_VERSION, check_dicom_dir, fingerprint, ingest_dicom
from .pixels import decode_values, normalize_pixels, resize_pad, to_unit
from .privacy import (
    DENY_TAGS,
    DROP_VRS,
    NUMERIC_VRS,
    PLAIN_SUFFIXES,
    WITHHELD,
    _Anonymiser,  # noqa: F401 - tests build one to map anonymised paths back
    usable_tags,
)
from .samples import plan_samples

__all__ = [
    "CACHE_VERSION", "DEFAULT_BODY_PART_RULES", "DEFAULT_TAGS", "DENY_TAGS", "DROP_VRS", "MODALITY_MAP",
    "NUMERIC_VRS", "PLAIN_SUFFIXES", "WITHHELD", "DicomConfig", "DicomDataset", "DicomIndex",
    "SampleRecord", "check_dicom_dir", "decode_values", "fingerprint", "impute_body_part",
    "ingest_dicom", "map_modality", "normalize_pixels", "plan_samples", "resize_pad", "tag_features",
    "to_unit", "usable_tags",
]
