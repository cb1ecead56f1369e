"""Per-sample header tag values -> a feature matrix (numeric min-max scaled, categorical one-hot)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...config.dicom import DicomConfig
from .privacy import usable_tags


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
