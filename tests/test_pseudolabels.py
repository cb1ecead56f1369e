"""Pseudo-labelling: fusion, k-means grid, elbow, cluster quality, entropy dropping, CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medformer.cli import main
from medformer.config.pseudolabel import PseudoLabelConfig, PseudoLabelDataConfig
from medformer.errors import UserError
from medformer.pseudolabels.clustering import (
    choose_k_elbow,
    cluster_entropy,
    cluster_grid,
    cluster_quality,
    compact_labels,
    drop_heterogeneous,
    intra_cluster_cosine_distance,
)
from medformer.pseudolabels.features import encoder_embeddings, fuse, pca, standardize
from medformer.runs.pseudolabel import medmnist_pool

POOL = ["pneumoniamnist", "breastmnist", "retinamnist", "adrenalmnist3d"]
KS = [2, 3, 4, 5, 6, 8, 10, 12, 16]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def pool_root(shared_root):
    missing = [f for f in POOL if not (shared_root / f"{f}.npz").is_file()]
    if missing:
        pytest.skip(f"shared MedMNIST files missing: {missing}")
    return shared_root


def test_fuse_standardizes_and_balances_blocks():
    rng = np.random.default_rng(0)
    wide, narrow = rng.normal(5, 3, (200, 64)), rng.normal(-2, 10, (200, 4))
    x = fuse([wide, narrow], [1.0, 2.0])
    assert x.shape == (200, 68) and x.dtype == np.float32
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-5)
    # Each block's total variance equals its weight squared, whatever its width.
    assert x[:, :64].var(0).sum() == pytest.approx(1.0, rel=1e-4)
    assert x[:, 64:].var(0).sum() == pytest.approx(4.0, rel=1e-4)
    assert np.all(standardize(np.ones((5, 2))) == 0)
    assert pca(x, 8).shape == (200, 8) and pca(x[:5], 8).shape == (5, 5)
    with pytest.raises(ValueError, match="sample counts"):
        fuse([wide, narrow[:10]])


def test_elbow_picks_the_knee_or_falls_back_to_the_middle():
    ks = [2, 3, 4, 5, 6, 8, 10]
    assert choose_k_elbow(ks, [1000, 600, 200, 150, 140, 120, 100]) == 4
    assert choose_k_elbow(ks, [100 - k for k in ks]) == 5  # a straight line has no knee
    assert choose_k_elbow(ks, [7.0] * len(ks)) == 5


def test_cluster_grid_finds_separated_blobs():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 10, (4, 6))
    x = np.concatenate([c + rng.normal(0, 0.5, (50, 6)) for c in centers])
    truth = np.repeat(np.arange(4), 50)
    grid = cluster_grid(x, KS + [500], seed=0)
    assert sorted(grid) == KS  # k >= n_samples is skipped
    inertias = [grid[k]["inertia"] for k in KS]
    assert all(a >= b for a, b in zip(inertias, inertias[1:], strict=False))
    assert choose_k_elbow(KS, inertias) == 4
    q = cluster_quality(grid[4]["labels"], {"blob": truth}, x)
    assert q["homogeneity_blob"] == pytest.approx(1.0) and q["nmi_blob"] == pytest.approx(1.0)
    assert q["harmonic_mean"] == pytest.approx(1.0) and q["intra_cosine_distance"] < 0.05


def test_cluster_grid_keeps_numpy_float_warnings_off_the_console_and_refuses_overflow(recwarn):
    """Floating-point flags inside k-means print no RuntimeWarning (some OpenBLAS kernels raise
    them spuriously); features that truly overflow get a one-line error instead of garbage labels."""
    rng = np.random.default_rng(0)
    with pytest.raises(UserError, match="non-finite inertia"):
        cluster_grid((rng.normal(0, 1, (40, 8)) * 1e20).astype(np.float32), [2])
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_intra_cluster_cosine_distance_matches_brute_force():
    rng = np.random.default_rng(1)
    x, labels = rng.normal(size=(40, 5)), rng.integers(0, 3, 40)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    dists = [
        1 - u[i] @ u[j]
        for c in range(3) for i in np.flatnonzero(labels == c) for j in np.flatnonzero(labels == c) if i != j
    ]
    assert intra_cluster_cosine_distance(x, labels) == pytest.approx(np.mean(dists))


def test_entropy_dropping_removes_the_mixed_cluster():
    labels = np.repeat([0, 1, 2, 3], 40)
    origin = np.array(["a"] * 40 + ["b"] * 40 + ["a", "b"] * 20 + ["c"] * 38 + ["a"] * 2)
    entropy = cluster_entropy(labels, origin)
    assert entropy[0] == entropy[1] == 0.0
    assert entropy[2] == pytest.approx(np.log(2) / np.log(3))  # half a, half b, of 3 values
    assert 0 < entropy[3] < 0.3
    dropped = drop_heterogeneous(labels, origin, threshold=0.5)
    assert set(dropped[labels == 2]) == {-1} and np.array_equal(dropped[labels != 2], labels[labels != 2])
    compact, mapping = compact_labels(dropped)
    assert mapping == {0: 0, 1: 1, 3: 2} and set(compact[labels == 3]) == {2}
    q = cluster_quality(dropped, {"origin": origin})  # dropped samples are left out of the scores
    assert q["homogeneity_origin"] > cluster_quality(labels, {"origin": origin})["homogeneity_origin"]


def test_clusters_of_real_medmnist_pool_follow_dataset_of_origin(pool_root):
    data = PseudoLabelDataConfig(datasets=POOL, root=str(pool_root), max_samples_per_dataset=150)
    pool = medmnist_pool(data, seed=0)
    assert len(pool.dataset) == 600
    emb = encoder_embeddings(None, pool.dataset, "medformer_small", batch_size=200, overrides={"depth": 1})
    assert emb.shape == (600, 128) and np.isfinite(emb).all()
    x = pca(fuse([emb]), 32)
    grid = cluster_grid(x, KS, seed=0)
    k = choose_k_elbow(KS, [grid[k]["inertia"] for k in KS])
    assert k in KS
    origin = pool.attributes["dataset"]
    q = cluster_quality(grid[k]["labels"], {"dataset": origin}, x)
    shuffled = cluster_quality(np.random.default_rng(0).permutation(grid[k]["labels"]), {"dataset": origin})
    print(f"\nMedMNIST pool, random-init medformer_small (depth 1), k={k}: "
          f"homogeneity {q['homogeneity_dataset']:.3f}, NMI {q['nmi_dataset']:.3f}, "
          f"harmonic mean {q['harmonic_mean']:.3f} (shuffled {shuffled['harmonic_mean']:.3f})")
    assert q["harmonic_mean"] > 0.5 and q["harmonic_mean"] > shuffled["harmonic_mean"] + 0.4


def test_encoder_loads_checkpoint_weights(pool_root, tmp_path):
    from medformer.models.weights import save_weights
    from medformer.pseudolabels.features import build_encoder

    data = PseudoLabelDataConfig(datasets=["breastmnist", "adrenalmnist3d"], root=str(pool_root), max_samples_per_dataset=8)
    ds = medmnist_pool(data, seed=0).dataset
    tiny = {"depth": 1}
    save_weights(build_encoder(None, ds, overrides=tiny, seed=3), tmp_path / "enc.safetensors")
    loaded = encoder_embeddings(str(tmp_path / "enc.safetensors"), ds, overrides=tiny, seed=0)
    np.testing.assert_allclose(loaded, encoder_embeddings(None, ds, overrides=tiny, seed=3), atol=1e-5)
    assert not np.allclose(loaded, encoder_embeddings("scratch", ds, overrides=tiny, seed=0), atol=1e-3)


def test_cli_end_to_end_on_medmnist_pool(pool_root, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main([
        "pseudolabel", "--config", "configs/pseudolabel/medmnist_pool_small.yaml",
        f"data.root={pool_root}", "data.max_samples_per_dataset=40", "model_overrides={depth: 1}",
        "ks=[2,3,4,5,6]", "tsne_points=120", f"output_dir={out}",
    ])
    assert rc == 0, capsys.readouterr().err
    for name in ("elbow.png", "tsne.png"):
        assert (out / name).read_bytes().startswith(PNG)
    labels = np.load(out / "labels.npy")
    assert labels.shape == (160,) and labels.min() >= -1
    with open(out / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 160 and {r["source"] for r in rows} == set(POOL)
    assert [int(r["label"]) for r in rows] == labels.tolist()
    with open(out / "quality.csv", newline="") as fh:
        quality = list(csv.DictReader(fh))
    assert [int(r["k"]) for r in quality] == [2, 3, 4, 5, 6] and "nmi_dataset" in quality[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["chosen_k"] in [2, 3, 4, 5, 6] and metrics["n_samples"] == 160
    assert metrics["quality"]["harmonic_mean"] > metrics["shuffled_baseline_harmonic_mean"]
    report = (out / "report.md").read_text()
    assert "elbow k" in report and "![t-SNE](tsne.png)" in report
    assert (out / "config.yaml").is_file()


def test_cli_errors_are_one_line(tmp_path, capsys):
    cfg = "configs/pseudolabel/medmnist_pool_small.yaml"
    assert main(["pseudolabel", "--config", cfg, "nonsense_key=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown config key 'nonsense_key'" in err and len(err.splitlines()) == 1
    both = ["data.dicom_dir=/nowhere", f"output_dir={tmp_path}"]
    assert main(["pseudolabel", "--config", cfg, *both]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert PseudoLabelConfig().ks == KS
