"""Pseudo-label outputs: labels, per-k quality table, markdown report, elbow and t-SNE plots."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .clustering import limit_threads


@dataclass
class ClusteringResult:
    """Everything a pseudo-labelling run decided, for the report."""

    ks: list[int]
    inertias: list[float]
    quality: dict[int, dict[str, float]]  # per k
    elbow_k: int
    chosen_k: int
    cluster_labels: np.ndarray  # k-means ids at the chosen k
    labels: np.ndarray  # final pseudo-labels 0..K'-1, -1 for dropped clusters
    entropy: dict[int, float]  # per k-means cluster, normalized, on entropy_attribute
    entropy_attribute: str
    threshold: float
    attributes: dict[str, np.ndarray]
    samples: dict[str, list] = field(default_factory=dict)  # extra labels.csv columns per sample
    features_used: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> list[int]:
        return sorted(c for c, h in self.entropy.items() if h > self.threshold)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _fmt(v: float) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_labels(out_dir: Path, result: ClusteringResult) -> None:
    np.save(out_dir / "labels.npy", result.labels.astype(np.int64))
    extra = list(result.samples)
    rows = [
        [i, *(result.samples[c][i] for c in extra), int(result.cluster_labels[i]), int(result.labels[i])]
        for i in range(len(result.labels))
    ]
    _write_csv(out_dir / "labels.csv", ["sample", *extra, "cluster", "label"], rows)


def write_quality(out_dir: Path, result: ClusteringResult) -> None:
    keys = list(next(iter(result.quality.values())))
    rows = [
        [k, _fmt(inertia), *(_fmt(result.quality[k][key]) for key in keys)]
        for k, inertia in zip(result.ks, result.inertias, strict=True)
    ]
    _write_csv(out_dir / "quality.csv", ["k", "inertia", *keys], rows)


def plot_elbow(path: Path, result: ClusteringResult) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(result.ks, result.inertias, "o-", color="tab:blue")
    ax.axvline(result.elbow_k, color="tab:orange", ls="--", label=f"elbow k={result.elbow_k}")
    if result.chosen_k != result.elbow_k:
        ax.axvline(result.chosen_k, color="tab:red", ls=":", label=f"chosen k={result.chosen_k}")
    ax.set_xlabel("k")
    ax.set_ylabel("k-means inertia")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def tsne_embedding(features: np.ndarray, max_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """2D t-SNE of at most max_points samples (PCA to 50 dims first); (coords, sample rows)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(features), size=min(max_points, len(features)), replace=False))
    x = features[rows]
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", max_iter=500, random_state=seed)
    with limit_threads(len(x)):
        coords = tsne.fit_transform(x)
    return coords, rows


def _scatter_categories(ax, coords: np.ndarray, values: np.ndarray, title: str) -> None:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20")
    cats = sorted(set(values.tolist()), key=str)
    for i, cat in enumerate(cats):
        mask = values == cat
        dropped = cat == -1 or cat == "dropped"
        color = "lightgrey" if dropped else cmap(i % 20)
        ax.scatter(coords[mask, 0], coords[mask, 1], s=6, color=color, label=str(cat))
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(cats) <= 20:
        ax.legend(fontsize=6, markerscale=2, loc="best")


def plot_tsne(path: Path, result: ClusteringResult, features: np.ndarray, max_points: int, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coords, rows = tsne_embedding(features, max_points, seed)
    name = result.entropy_attribute
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    _scatter_categories(axes[0], coords, result.labels[rows], "pseudo-label (-1: dropped)")
    _scatter_categories(axes[1], coords, np.asarray(result.attributes[name])[rows].astype(str), name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cluster_rows(result: ClusteringResult) -> list[str]:
    attr = np.asarray(result.attributes[result.entropy_attribute])
    lines = []
    for c in sorted(result.entropy):
        members = result.cluster_labels == c
        top = Counter(attr[members].tolist()).most_common(3)
        comp = ", ".join(f"{v} {n / members.sum():.0%}" for v, n in top)
        new = sorted(set(result.labels[members].tolist()))[0]
        status = "dropped" if new < 0 else f"label {new}"
        lines.append(f"| {c} | {int(members.sum())} | {comp} | {abs(result.entropy[c]):.3f} | {status} |")
    return lines


def render_markdown(result: ClusteringResult, title: str) -> str:
    q = result.quality[result.chosen_k]
    keys = list(q)
    kept = int((result.labels >= 0).sum())
    lines = [
        f"# {title}",
        "",
        f"- samples: {len(result.labels)} ({kept} labelled, {len(result.labels) - kept} in dropped clusters)",
        f"- features: {', '.join(result.features_used) or 'n/a'}",
        f"- k grid: {result.ks}; elbow k = {result.elbow_k}; chosen k = {result.chosen_k}",
        f"- clusters dropped (normalized {result.entropy_attribute} entropy > {result.threshold}): "
        f"{result.dropped or 'none'}; pseudo-label classes: {len(set(result.labels[result.labels >= 0].tolist()))}",
        *(f"- note: {n}" for n in result.notes),
        "",
        "## Quality per k",
        "",
        "| k | inertia | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 2) + "|",
        *(
            f"| {k} | {inertia:.1f} | " + " | ".join(f"{result.quality[k][key]:.3f}" for key in keys) + " |"
            for k, inertia in zip(result.ks, result.inertias, strict=True)
        ),
        "",
        f"## Clusters at k = {result.chosen_k}",
        "",
        f"| cluster | size | top {result.entropy_attribute} | entropy | status |",
        "|---|---|---|---|---|",
        *_cluster_rows(result),
        "",
        "![elbow](elbow.png)",
        "",
        "![t-SNE](tsne.png)",
        "",
        "Files: `labels.npy` / `labels.csv` (pseudo-label per sample, -1 dropped), `quality.csv`.",
        "",
    ]
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    result: ClusteringResult,
    features: np.ndarray,
    seed: int = 0,
    tsne_points: int = 2000,
    title: str = "Pseudo-labels",
) -> dict[str, Path]:
    """Write labels.npy/.csv, quality.csv, report.md, elbow.png, tsne.png; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_labels(out_dir, result)
    write_quality(out_dir, result)
    plot_elbow(out_dir / "elbow.png", result)
    plot_tsne(out_dir / "tsne.png", result, features, tsne_points, seed)
    (out_dir / "report.md").write_text(render_markdown(result, title))
    names = ("labels.npy", "labels.csv", "quality.csv", "report.md", "elbow.png", "tsne.png")
    return {n: out_dir / n for n in names}
