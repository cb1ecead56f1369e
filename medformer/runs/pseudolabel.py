"""`medformer pseudolabel`: embed a pool of images (+ DICOM tags), cluster, pick k, report.

RadiologyNET-style: features from an encoder (or raw pixels) fused with header-tag features,
k-means over a grid of k, k chosen at the elbow of the inertia curve, clusters scored against
known attributes (dataset of origin; modality, body part), heterogeneous clusters dropped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from ..cli import run_entry
from ..config import ConfigError, save_config
from ..config.pseudolabel import PseudoLabelConfig, PseudoLabelDataConfig
from ..data.dicom import DicomDataset, check_dicom_dir, ingest_dicom
from ..data.medmnist import MedMNISTDataset
from ..pseudolabels.clustering import (
    choose_k_elbow,
    cluster_entropy,
    cluster_grid,
    cluster_quality,
    compact_labels,
    drop_heterogeneous,
)
from ..pseudolabels.features import encoder_embeddings, fuse, pca, pixel_features
from ..pseudolabels.report import ClusteringResult, write_report

log = logging.getLogger(__name__)


@dataclass
class Pool:
    """The images to cluster with what is known about each."""

    dataset: Dataset
    attributes: dict[str, np.ndarray]
    samples: dict[str, list]
    tags: np.ndarray | None
    image_sizes: dict[str, int]
    title: str


def medmnist_pool(data: PseudoLabelDataConfig, seed: int) -> Pool:
    """Pool of MedMNIST splits; attributes: dataset of origin, modality, body part."""
    rng = np.random.default_rng(seed)
    parts, attrs, samples = [], {"dataset": [], "modality": [], "body_part": []}, {"source": [], "source_index": []}
    for flag in data.datasets:
        ds = MedMNISTDataset(flag, data.split, data.size, data.root, verify_md5=data.verify_md5)
        cap = data.max_samples_per_dataset
        if cap is not None and len(ds) > cap:
            ds = ds.subset(np.sort(rng.choice(len(ds), size=cap, replace=False)))
        parts.append(ds)
        n = len(ds)
        attrs["dataset"] += [flag] * n
        attrs["modality"] += [ds.info.modality] * n
        attrs["body_part"] += [ds.info.body_part] * n
        samples["source"] += [flag] * n
        samples["source_index"] += ds.indices.tolist()
    sizes = {"image_size_2d": data.size, "image_size_3d": data.size}
    title = f"Pseudo-labels: MedMNIST pool ({', '.join(data.datasets)}, {data.split})"
    return Pool(ConcatDataset(parts), {k: np.array(v) for k, v in attrs.items()}, samples, None, sizes, title)


def dicom_cache_dir(data: PseudoLabelDataConfig, output_dir: Path) -> Path:
    return Path(data.dicom_cache_dir) if data.dicom_cache_dir else output_dir / "dicom_cache"


def dicom_pool(data: PseudoLabelDataConfig, output_dir: Path) -> Pool:
    """Pool of an ingested DICOM folder; attributes: modality and body part from the tags."""
    cache = dicom_cache_dir(data, output_dir)
    index = ingest_dicom(Path(data.dicom_dir), cache, data.dicom)
    dims = [d for d in ("2d", "3d") if any(r.dim == d for r in index.records)]
    if not dims:
        raise ConfigError(f"no usable DICOM images in {data.dicom_dir}; see {cache / 'skipped.csv'}")
    parts = [DicomDataset(cache, d) for d in dims]
    order = np.concatenate([p.sample_indices for p in parts])
    records = [index.records[i] for i in order]
    attrs = {
        "modality": np.array([r.modality for r in records]),
        "body_part": np.array([r.body_part for r in records]),
    }
    samples = {"sample_id": [r.sample_id for r in records], "dim": [r.dim for r in records]}
    sizes = {"image_size_2d": data.dicom.size_2d, "image_size_3d": data.dicom.size_3d}
    return Pool(ConcatDataset(parts), attrs, samples, index.tag_features[order], sizes, "Pseudo-labels: DICOM folder")


def check_pool_source(cfg: PseudoLabelConfig) -> None:
    """Fail before anything is written: exactly one source, and a DICOM folder must hold files."""
    data = cfg.data
    if bool(data.datasets) == bool(data.dicom_dir):
        raise ConfigError("set exactly one of data.datasets (MedMNIST flags) or data.dicom_dir")
    if data.dicom_dir:
        check_dicom_dir(data.dicom_dir, dicom_cache_dir(data, Path(cfg.output_dir)))


def build_pool(cfg: PseudoLabelConfig) -> Pool:
    check_pool_source(cfg)
    data = cfg.data
    if data.dicom_dir:
        return dicom_pool(data, Path(cfg.output_dir))
    return medmnist_pool(data, cfg.seed)


def pool_features(cfg: PseudoLabelConfig, pool: Pool) -> tuple[np.ndarray, list[str]]:
    """Encoder (or pixel) features, fused with tag features when asked, optionally PCA'd."""
    if cfg.encoder == "pixels":
        parts, names = [pixel_features(pool.dataset)], ["raw pixels (16x16 thumbnails)"]
    else:
        scratch = cfg.encoder.lower() in ("scratch", "none", "")
        # A checkpoint fixes its own position-embedding sizes; inputs of other sizes are resampled.
        overrides = {**(pool.image_sizes if scratch else {}), **cfg.model_overrides}
        emb = encoder_embeddings(
            None if scratch else cfg.encoder, pool.dataset, cfg.model_name, cfg.batch_size,
            image_size=overrides.get("image_size_2d", 28), overrides=overrides, seed=cfg.seed,
        )
        parts, names = [emb], [f"{cfg.model_name} embeddings ({'random init' if scratch else cfg.encoder})"]
    weights = [1.0]
    if cfg.use_tags and pool.tags is not None and pool.tags.shape[1] > 0:
        parts.append(pool.tags)
        weights.append(cfg.tag_weight)
        names.append(f"{pool.tags.shape[1]} DICOM tag columns (weight {cfg.tag_weight})")
    x = fuse(parts, weights)
    if cfg.pca_components:
        x = pca(x, cfg.pca_components, cfg.seed)
        names.append(f"PCA to {x.shape[1]} components")
    return x, names


def cluster_pool(cfg: PseudoLabelConfig, pool: Pool, x: np.ndarray) -> ClusteringResult:
    """k-means grid, elbow, quality per k, entropy-based dropping at the chosen k."""
    attribute = cfg.entropy_attribute or ("dataset" if "dataset" in pool.attributes else "modality")
    if attribute not in pool.attributes:
        raise ConfigError(f"entropy_attribute {attribute!r} unknown; use one of {sorted(pool.attributes)}")
    grid = cluster_grid(x, list(cfg.ks) + ([cfg.k] if cfg.k else []), cfg.seed)
    ks = sorted(grid)
    inertias = [grid[k]["inertia"] for k in ks]
    elbow_k = choose_k_elbow(ks, inertias)
    if cfg.k is not None and cfg.k not in grid:
        raise ConfigError(f"k={cfg.k} does not fit {len(x)} samples")
    chosen = cfg.k or elbow_k
    quality = {k: cluster_quality(grid[k]["labels"], pool.attributes, x) for k in ks}
    raw = grid[chosen]["labels"]
    entropy = cluster_entropy(raw, pool.attributes[attribute])
    labels, _ = compact_labels(drop_heterogeneous(raw, pool.attributes[attribute], cfg.entropy_threshold))
    return ClusteringResult(
        ks=ks, inertias=inertias, quality=quality, elbow_k=elbow_k, chosen_k=chosen,
        cluster_labels=raw, labels=labels, entropy=entropy, entropy_attribute=attribute,
        threshold=cfg.entropy_threshold, attributes=pool.attributes, samples=pool.samples,
    )


def shuffled_baseline(result: ClusteringResult, seed: int) -> float:
    """Harmonic mean of the chosen clustering with its labels permuted across samples."""
    rng = np.random.default_rng(seed)
    return cluster_quality(rng.permutation(result.cluster_labels), result.attributes)["harmonic_mean"]


def run_pseudolabel(cfg: PseudoLabelConfig) -> dict[str, Any]:
    """Build the pool, cluster it, write the report into output_dir; return the metrics."""
    check_pool_source(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    torch.manual_seed(cfg.seed)
    pool = build_pool(cfg)
    x, used = pool_features(cfg, pool)
    result = cluster_pool(cfg, pool, x)
    result.features_used = used
    baseline = shuffled_baseline(result, cfg.seed)
    result.notes.append(f"shuffled-label baseline harmonic mean at k={result.chosen_k}: {baseline:.3f}")
    write_report(out, result, x, cfg.seed, cfg.tsne_points, pool.title)
    metrics = {
        "n_samples": len(result.labels),
        "elbow_k": result.elbow_k,
        "chosen_k": result.chosen_k,
        "n_labels": int(result.labels.max()) + 1 if (result.labels >= 0).any() else 0,
        "dropped_clusters": result.dropped,
        "n_dropped_samples": int((result.labels < 0).sum()),
        "quality": result.quality[result.chosen_k],
        "shuffled_baseline_harmonic_mean": baseline,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log.info("pseudo-labels: k=%d, harmonic mean %.3f -> %s", result.chosen_k, metrics["quality"]["harmonic_mean"], out)
    return metrics


def main(argv: list[str] | None = None) -> int:
    """`medformer pseudolabel --config configs/pseudolabel/<x>.yaml [key=value ...]`."""
    return run_entry(PseudoLabelConfig, run_pseudolabel, argv, "pseudolabel")


if __name__ == "__main__":
    raise SystemExit(main())
