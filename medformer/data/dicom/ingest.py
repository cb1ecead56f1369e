"""`ingest_dicom`: a DICOM folder tree -> a cache folder, reused while its inputs are unchanged.

Headers first (headers.py), then pixels one sample at a time (samples.py), then the cache is
written through the anonymiser of privacy.py. `fingerprint` decides when a cache can be reused.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ...config.dicom import DicomConfig
from ..medmnist import DataError
from .dataset import DicomIndex, SampleRecord
from .features import tag_features
from .headers import _read_headers
from .privacy import _Anonymiser, _new_salt
from .samples import _build_samples, _Sample, plan_samples

log = logging.getLogger(__package__)  # "medformer.data.dicom", the logger name before the split

CACHE_VERSION = 2  # 2: no source path is written (older caches may hold raw file names)


# --- cache ---------------------------------------------------------------------------------------


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
