"""Study figures: label efficiency (metric vs label fraction) and convergence (val AUC vs epoch)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def series_key(row: dict, with_mode: bool, with_model: bool) -> str:
    """Legend label of a row: its init, plus mode / model when the study varies them."""
    parts = [row["init"]]
    if with_model:
        parts.append(row["model"])
    if with_mode:
        parts.append(row["mode"])
    return " / ".join(parts)


def _mean_sd(values: list[float]) -> tuple[float, float, int]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan, 0
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals)


def label_efficiency_plot(rows: list[dict], dataset: str, path: Path, metric: str = "test_auc") -> Path | None:
    """One line per init (x mode x model): mean +- sd over seeds of `metric` vs label fraction."""
    rows = [r for r in rows if r["dataset"] == dataset and r["status"] == "done"]
    if not rows:
        return None
    with_mode = len({r["mode"] for r in rows}) > 1
    with_model = len({r["model"] for r in rows}) > 1
    series: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        series[series_key(r, with_mode, with_model)][r["fraction"]].append(float(r[metric]))
    fractions = sorted({r["fraction"] for r in rows})
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, by_frac in sorted(series.items()):
        xs = sorted(by_frac)
        stats = [_mean_sd(by_frac[x]) for x in xs]
        ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3, label=label)
    if len(fractions) > 1 and fractions[-1] / fractions[0] >= 5:
        ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
    ax.set_xlabel("label fraction")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{dataset}: label efficiency (mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def convergence_plot(
    histories: dict[tuple[str, float], list[list[tuple[int, float]]]], dataset: str, path: Path,
    metric: str = "auc",
) -> Path | None:
    """Val `metric` (AUC; Dice or R2 for dense tasks) vs epoch, mean over seeds; one panel per label
    fraction, one line per series.

    `histories[(series label, fraction)]` holds one [(epoch, val metric), ...] list per seed.
    """
    histories = {k: [h for h in v if h] for k, v in histories.items()}
    histories = {k: v for k, v in histories.items() if v}
    if not histories:
        return None
    fractions = sorted({f for _, f in histories})
    fig, axes = plt.subplots(1, len(fractions), figsize=(4.5 * len(fractions), 3.6), squeeze=False)
    for ax, frac in zip(axes[0], fractions, strict=True):
        for (label, f), runs in sorted(histories.items()):
            if f != frac:
                continue
            by_epoch: dict[int, list[float]] = defaultdict(list)
            for run in runs:
                for epoch, value in run:
                    by_epoch[epoch].append(value)
            epochs = sorted(by_epoch)
            ax.plot([e + 1 for e in epochs], [np.nanmean(by_epoch[e]) for e in epochs], marker=".", label=label)
        ax.set_title(f"{dataset}, fraction {frac:g}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"val {metric.upper() if metric == 'auc' else metric} (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def critical_difference_plot(ranking, path: Path, title: str = "") -> Path | None:
    """Demsar's critical-difference diagram: mean ranks on an axis, the CD as a bar, and a thick line
    under each group of inits whose ranks differ by less than the CD (not told apart)."""
    if not ranking.mean_rank or math.isnan(ranking.critical_difference):
        return None
    order = sorted(ranking.inits, key=lambda i: ranking.mean_rank[i])
    k = len(order)
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.3 * k))
    ax.set_xlim(0.5, k + 0.5)
    ax.set_ylim(-k - 1.5, 1.5)
    ax.invert_xaxis()  # best (rank 1) on the right, as in benchmark papers
    ax.axhline(0, color="black", lw=1)
    for r in range(1, k + 1):
        ax.plot([r, r], [0, 0.15], color="black", lw=1)
        ax.text(r, 0.3, str(r), ha="center", fontsize=8)
    for n, name in enumerate(order):
        x, y = ranking.mean_rank[name], -(n + 1)
        ax.plot([x, x], [0, y], color="gray", lw=0.8)
        ax.text(x, y, f" {name} ({x:.2f}) ", ha="right" if n % 2 else "left", va="center", fontsize=8)
    cd = ranking.critical_difference
    ax.plot([1, 1 + cd], [1.0, 1.0], color="crimson", lw=2)
    ax.text(1 + cd / 2, 1.15, f"CD {cd:.2f}", ha="center", fontsize=8, color="crimson")
    groups = []
    for i in range(k):
        j = max(j for j in range(i, k) if ranking.mean_rank[order[j]] - ranking.mean_rank[order[i]] <= cd)
        if j > i and not any(g[0] <= i and j <= g[1] for g in groups):
            groups.append((i, j))
    for n, (i, j) in enumerate(groups):
        y = -0.35 - 0.2 * n
        ax.plot([ranking.mean_rank[order[i]], ranking.mean_rank[order[j]]], [y, y], color="black", lw=3)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
