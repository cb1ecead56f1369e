"""Per-sample predictions of a run, in the layout medmnist.Evaluator writes (one row per image: its
position in the split, then the scores), with the labels beside them, so they can be re-scored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

PREDICTIONS_DIR = "predictions"


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, header=None)
    tmp.replace(path)


def write_predictions(run_dir: str | Path, flag: str, split: str, scores: np.ndarray, labels: np.ndarray) -> None:
    """`predictions/{flag}_{split}.csv` (Evaluator layout) and `{flag}_{split}_labels.csv`."""
    folder = Path(run_dir) / PREDICTIONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(pd.DataFrame(np.asarray(scores).reshape(len(scores), -1)), folder / f"{flag}_{split}.csv")
    _write_csv(pd.DataFrame(np.asarray(labels).reshape(len(labels), -1)), folder / f"{flag}_{split}_labels.csv")


def read_predictions(run_dir: str | Path, flag: str, split: str = "test") -> tuple[np.ndarray, np.ndarray] | None:
    """(labels [N, L], scores [N, K]) of a run, or None when it saved none."""
    folder = Path(run_dir) / PREDICTIONS_DIR
    scores, labels = folder / f"{flag}_{split}.csv", folder / f"{flag}_{split}_labels.csv"
    if not (scores.is_file() and labels.is_file()):
        return None
    read = lambda p: pd.read_csv(p, header=None, index_col=0).to_numpy()  # noqa: E731
    return read(labels), read(scores)
