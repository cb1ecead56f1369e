"""Collect the cells' outputs into rows (results.csv) and per-epoch validation histories."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .cells import Cell
from .runner import read_status

METRICS = ("auc", "acc", "f1", "balanced_acc", "mcc")
DENSE_METRICS = ("dice", "iou", "mae", "rmse", "r2")  # segmentation, regression cells (empty for classification)
KEY_COLUMNS = ("cell_id", "init", "init_source", "model", "dataset", "fraction", "seed", "mode", "status")
COLUMNS = (
    *KEY_COLUMNS,
    *(f"test_{m}" for m in METRICS),
    *(f"val_{m}" for m in METRICS),
    "epochs_to_best", "train_seconds", "train_samples", "error",
    *(f"{split}_{m}" for split in ("test", "val") for m in DENSE_METRICS),
)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def cell_row(cell: Cell, directory: Path) -> dict:
    """One results.csv row: the cell's keys, status, test/val metrics, epochs_to_best, train_seconds."""
    status = read_status(directory) or {}
    metrics = (_read_json(directory / "metrics.json") or {}).get(cell.dataset, {})
    stats = _read_json(directory / "train_stats.json") or {}
    done = bool(metrics) and status.get("status") == "done"  # metrics of a cut-short run are not a result
    row: dict = {
        "cell_id": cell.id, "init": cell.init_name, "init_source": cell.init, "model": cell.model,
        "dataset": cell.dataset, "fraction": cell.fraction, "seed": cell.seed, "mode": cell.mode,
        "status": "done" if done else status.get("status", "pending"),
        "error": None if done else status.get("error"),
    }
    for split in ("test", "val"):
        for m in (*METRICS, *DENSE_METRICS):
            row[f"{split}_{m}"] = metrics.get(split, {}).get(m, math.nan)
    best = stats.get("epochs_to_best", stats["best_epoch"] + 1 if "best_epoch" in stats else None)
    row["epochs_to_best"] = best if best is not None else math.nan
    row["train_seconds"] = stats.get("train_seconds", math.nan)
    samples = stats.get("steps", 0) * stats.get("batch_size", 0) * stats.get("num_processes", 1)
    row["train_samples"] = samples or math.nan
    return row


def collect_rows(cells: list[Cell], cells_root: Path) -> list[dict]:
    return [cell_row(c, cells_root / c.id) for c in cells]


def write_csv(rows: list[dict], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if _missing(row.get(k)) else row.get(k)) for k in COLUMNS})
    tmp.replace(path)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def val_history(directory: Path, dataset: str, metric: str = "auc") -> list[tuple[int, float]]:
    """(epoch, val metric) per evaluated epoch from train_stats.json's history."""
    stats = _read_json(directory / "train_stats.json") or {}
    out = []
    for record in stats.get("history", []):
        value = record.get("val", {}).get(dataset, {}).get(metric)
        if value is not None:
            out.append((int(record["epoch"]), float(value)))
    return out
