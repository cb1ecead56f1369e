"""Published MedMNIST results (CSV with `#` comment lines) to print beside the study's own."""

from __future__ import annotations

import csv
from pathlib import Path


def read_baselines(path: Path | None) -> list[dict]:
    """Rows of the CSV (dataset, size, method, auc, acc, source, note); [] when there is none."""
    if path is None or not Path(path).is_file():
        return []
    with open(path, newline="") as fh:
        lines = [ln for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    rows = []
    for row in csv.DictReader(lines):
        for key in ("auc", "acc"):
            try:
                row[key] = float(row.get(key) or "nan")
            except ValueError:
                row[key] = float("nan")
        rows.append(row)
    return rows


def baselines_for(rows: list[dict], dataset: str) -> list[dict]:
    return [r for r in rows if r.get("dataset") == dataset]
