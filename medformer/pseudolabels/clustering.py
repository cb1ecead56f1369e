"""k-means over a grid of k, elbow choice of k, cluster quality against known attributes."""

from __future__ import annotations

import logging
import warnings
from contextlib import AbstractContextManager, nullcontext

import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)

MINIBATCH_ABOVE = 20_000  # samples; full k-means is exact but slow beyond this
SINGLE_THREAD_BELOW = 20_000  # samples


def limit_threads(n_samples: int) -> AbstractContextManager:
    """One BLAS/OpenMP thread for small problems.

    On a busy machine OpenMP threads spin against each other: k-means on 600 points took
    10 s with the default pool and 0.4 s with one thread; small problems gain nothing from more.
    """
    if n_samples >= SINGLE_THREAD_BELOW:
        return nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def cluster_grid(x: np.ndarray, ks: list[int], seed: int = 0) -> dict[int, dict]:
    """k-means for every k < n_samples: {k: {"inertia": float, "labels": int array}}."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    out: dict[int, dict] = {}
    for k in sorted(set(ks)):
        if k < 2 or k >= len(x):
            log.warning("skipping k=%d: needs 2 <= k < %d samples", k, len(x))
            continue
        if len(x) > MINIBATCH_ABOVE:
            km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
        else:
            km = KMeans(n_clusters=k, random_state=seed, n_init=4)
        # Some OpenBLAS kernels leave floating-point flags set after a finite matmul, so numpy
        # prints "divide by zero encountered in matmul" with no cause; sklearn already refuses
        # non-finite input, and the result is checked below instead.
        with limit_threads(len(x)), np.errstate(all="ignore"):
            labels = km.fit_predict(x)
        if not np.isfinite(km.inertia_):
            raise UserError(f"k-means with k={k} gave a non-finite inertia: the features overflow float32; "
                            "check that the `encoder` checkpoint gives finite, moderate embeddings")
        out[k] = {"inertia": float(km.inertia_), "labels": labels.astype(np.int64)}
    if not out:
        raise UserError(f"no k in {sorted(set(ks))} fits {len(x)} samples (need 2 <= k < n_samples)")
    return out


def choose_k_elbow(ks: list[int], inertias: list[float]) -> int:
    """Knee of the inertia curve (kneed, convex decreasing); the middle k when there is none."""
    from kneed import KneeLocator

    order = np.argsort(ks)
    ks_sorted = [int(ks[i]) for i in order]
    values = [float(inertias[i]) for i in order]
    knee = None
    if len(ks_sorted) >= 3 and max(values) > min(values):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # kneed warns when it finds no knee
            knee = KneeLocator(ks_sorted, values, curve="convex", direction="decreasing").knee
    return int(knee) if knee is not None else ks_sorted[len(ks_sorted) // 2]


def intra_cluster_cosine_distance(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean pairwise cosine distance within clusters, weighted by pairs (exact, O(N d)).

    For unit vectors u_i the sum of all pairwise similarities in a cluster is ||sum u_i||^2,
    so no N x N matrix is needed.
    """
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = features / np.where(norms > 0, norms, 1.0)
    total_sim, total_pairs = 0.0, 0
    for c in np.unique(labels[labels >= 0]):
        members = unit[labels == c]
        n = len(members)
        if n < 2:
            continue
        s = members.sum(0)
        total_sim += float(s @ s) - float((members * members).sum())
        total_pairs += n * (n - 1)
    return 1.0 - total_sim / total_pairs if total_pairs else 0.0


def _hmean(values: list[float]) -> float:
    values = [max(v, 0.0) for v in values]
    if not values or min(values) == 0.0:
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def cluster_quality(
    labels: np.ndarray, attributes: dict[str, np.ndarray], features: np.ndarray | None = None
) -> dict[str, float]:
    """Homogeneity and NMI of the clusters per attribute, their harmonic mean, cosine spread.

    Keys: `homogeneity_<attr>`, `nmi_<attr>`, `hmean_<attr>` (of the two), `harmonic_mean`
    (of all homogeneity and NMI values) and, given features, `intra_cosine_distance`.
    Samples labelled -1 (dropped) are left out.
    """
    from sklearn.metrics import homogeneity_score, normalized_mutual_info_score

    labels = np.asarray(labels)
    keep = labels >= 0
    out: dict[str, float] = {}
    scores = []
    for name, values in attributes.items():
        truth = np.asarray(values)[keep]
        h = float(homogeneity_score(truth, labels[keep]))
        nmi = float(normalized_mutual_info_score(truth, labels[keep]))
        out[f"homogeneity_{name}"], out[f"nmi_{name}"], out[f"hmean_{name}"] = h, nmi, _hmean([h, nmi])
        scores += [h, nmi]
    out["harmonic_mean"] = _hmean(scores)
    if features is not None:
        out["intra_cosine_distance"] = intra_cluster_cosine_distance(np.asarray(features)[keep], labels[keep])
    return out


def cluster_entropy(labels: np.ndarray, attribute: np.ndarray) -> dict[int, float]:
    """Per cluster: entropy of the attribute inside it / log(number of attribute values)."""
    labels, attribute = np.asarray(labels), np.asarray(attribute)
    n_values = len(np.unique(attribute))
    out = {}
    for c in np.unique(labels[labels >= 0]):
        _, counts = np.unique(attribute[labels == c], return_counts=True)
        p = counts / counts.sum()
        entropy = max(0.0, float(-(p * np.log(p)).sum()))
        out[int(c)] = entropy / np.log(n_values) if n_values > 1 else 0.0
    return out


def drop_heterogeneous(labels: np.ndarray, attribute: np.ndarray, threshold: float) -> np.ndarray:
    """Labels with -1 for every cluster whose normalized attribute entropy exceeds `threshold`."""
    labels = np.asarray(labels).copy()
    for c, h in cluster_entropy(labels, attribute).items():
        if h > threshold:
            labels[labels == c] = -1
    return labels


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Renumber kept clusters 0..K'-1 (dropped stay -1); returns the labels and old -> new map."""
    labels = np.asarray(labels)
    mapping = {int(c): i for i, c in enumerate(np.unique(labels[labels >= 0]))}
    out = np.array([mapping.get(int(v), -1) for v in labels], dtype=np.int64)
    return out, mapping
