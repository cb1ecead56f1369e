"""MedMNIST loading: real official files, synthetic files of every task type, and bad input."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import medmnist
import numpy as np
import pytest
import torch

from medformer.data import domains
from medformer.data import medmnist as mm
from medformer.data.domains import BINARY, MULTI_CLASS, MULTI_LABEL, ORDINAL
from medformer.data.medmnist import (
    DataError,
    MedMNISTDataset,
    load_arrays,
    npz_filename,
    resolve_root,
    stratified_fraction,
)
from medformer.data.synthetic import synthetic_info, write_synthetic_npz

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"
REAL_FLAGS = ("breastmnist", "pneumoniamnist", "retinamnist", "adrenalmnist3d")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Keep caches, env and the dataset registry per test."""
    monkeypatch.setenv(mm.CACHE_ENV, str(tmp_path / "user_cache"))
    monkeypatch.delenv(mm.ROOT_ENV, raising=False)
    monkeypatch.setattr(mm, "_MD5_CACHE", {})
    monkeypatch.setattr(domains, "_REGISTRY", dict(domains._REGISTRY))


@pytest.fixture
def shared() -> Path:
    if not (SHARED / "breastmnist.npz").is_file():
        pytest.skip(f"official MedMNIST files not found in {SHARED}")
    return SHARED


def _copy_real(shared: Path, dest: Path, flag: str = "breastmnist") -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"{flag}.npz"
    shutil.copyfile(shared / f"{flag}.npz", target)
    return target


def _rewrite(path: Path, **overrides: np.ndarray | None) -> None:
    """Rewrite an npz with some arrays replaced (or dropped when the value is None)."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key, value in overrides.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez_compressed(path, **arrays)


# --- paths and names --------------------------------------------------------------------------


def test_resolve_root_prefers_config_then_env_then_home(monkeypatch, tmp_path):
    assert resolve_root(tmp_path / "cfg") == tmp_path / "cfg"
    monkeypatch.setenv("MEDMNIST_ROOT", str(tmp_path / "env"))
    assert resolve_root(None) == tmp_path / "env"
    assert resolve_root(tmp_path / "cfg") == tmp_path / "cfg"
    monkeypatch.delenv("MEDMNIST_ROOT")
    assert resolve_root(None) == Path.home() / ".medmnist"


def test_npz_filename():
    assert npz_filename("pathmnist", 28) == "pathmnist.npz"
    assert npz_filename("pathmnist", 224) == "pathmnist_224.npz"
    assert npz_filename("organmnist3d", 64) == "organmnist3d_64.npz"


def test_unknown_flag_lists_valid_flags():
    with pytest.raises(DataError, match="valid flags") as err:
        npz_filename("notamnist", 28)
    assert "pathmnist" in str(err.value) and "adrenalmnist3d" in str(err.value)
    with pytest.raises(DataError, match="notamnist"):
        load_arrays("notamnist", "train")


def test_unknown_size_names_valid_sizes(tmp_path):
    with pytest.raises(DataError, match="28, 64") as err:
        npz_filename("adrenalmnist3d", 128)
    assert "adrenalmnist3d" in str(err.value) and "data.size" in str(err.value)
    with pytest.raises(DataError, match="28, 64, 128, 224"):
        load_arrays("breastmnist", "train", size=32, root=tmp_path)


def test_unknown_split(shared):
    with pytest.raises(DataError, match="train, val, test"):
        load_arrays("breastmnist", "training", root=shared)


# --- real official files ----------------------------------------------------------------------


@pytest.mark.parametrize("flag", REAL_FLAGS)
def test_real_file_all_splits(shared, flag):
    info = domains.dataset_info(flag)
    for split in mm.SPLITS:
        images, labels = load_arrays(flag, split, root=shared)
        n = medmnist.INFO[flag]["n_samples"][split]
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        assert images.shape == (n, *mm.expected_image_shape(info, 28))
        assert labels.shape == (n, 1)
        assert labels.min() >= 0 and labels.max() < info.n_classes


@pytest.mark.parametrize(
    ("flag", "shape"),
    [
        ("breastmnist", (1, 28, 28)),
        ("retinamnist", (3, 28, 28)),
        ("adrenalmnist3d", (1, 28, 28, 28)),
    ],
)
def test_real_dataset_items(shared, flag, shape):
    ds = MedMNISTDataset(flag, "val", root=shared)
    images, labels = load_arrays(flag, "val", root=shared)
    assert len(ds) == len(images) and ds.info.flag == flag and ds.split == "val"
    item = ds[5]
    assert set(item) == {"image", "label", "dataset", "index"}
    assert item["image"].shape == shape and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    expected = torch.from_numpy(images[5].astype(np.float32) / 255.0)
    if flag == "retinamnist":
        expected = expected.permute(2, 0, 1)
    torch.testing.assert_close(item["image"], expected.reshape(shape))
    assert item["label"].dtype == torch.long and item["label"].ndim == 0
    assert int(item["label"]) == labels[5, 0]
    assert item["dataset"] == flag and item["index"] == 5


def test_forced_mmap_equals_normal_and_extracts_once(shared, tmp_path):
    path = _copy_real(shared, tmp_path / "root", "adrenalmnist3d")
    normal = load_arrays("adrenalmnist3d", "train", root=path.parent)
    mapped = load_arrays("adrenalmnist3d", "train", root=path.parent, mmap=True)
    assert isinstance(mapped[0], np.memmap)
    np.testing.assert_array_equal(normal[0], mapped[0])
    np.testing.assert_array_equal(normal[1], mapped[1])
    cache = path.parent / ".medformer_cache" / "adrenalmnist3d"
    extracted = cache / "train_images.npy"
    assert extracted.is_file() and not list(cache.glob("*.tmp"))
    before = extracted.stat().st_mtime_ns
    load_arrays("adrenalmnist3d", "test", root=path.parent, mmap=True)
    assert extracted.stat().st_mtime_ns == before  # cache reused, not re-extracted


def test_mmap_reextracts_when_source_changes(tmp_path):
    info = synthetic_info("mm_change", "2d", MULTI_CLASS, 3, 1)
    write_synthetic_npz(tmp_path, info.flag, n=(8, 4, 4), seed=0)
    first, _ = load_arrays(info.flag, "train", root=tmp_path, mmap=True)
    first = np.array(first)
    path = write_synthetic_npz(tmp_path, info.flag, n=(8, 4, 4), seed=1)
    os.utime(path, ns=(1, 1))  # make the change visible even on coarse-mtime filesystems
    second, _ = load_arrays(info.flag, "train", root=tmp_path, mmap=True)
    with np.load(path) as npz:
        np.testing.assert_array_equal(second, npz["train_images"])
    assert not np.array_equal(first, second)


def test_mmap_read_only_root_uses_user_cache(shared, tmp_path):
    path = _copy_real(shared, tmp_path / "ro", "breastmnist")
    path.parent.chmod(0o555)
    try:
        images, _ = load_arrays("breastmnist", "val", root=path.parent, mmap=True)
    finally:
        path.parent.chmod(0o755)
    md5 = medmnist.INFO["breastmnist"]["MD5"]
    assert Path(images.filename).parent == mm.cache_home() / "npy" / f"breastmnist-{md5}"
    assert not (path.parent / ".medformer_cache").exists()


def test_files_above_threshold_are_memory_mapped(shared, tmp_path, monkeypatch):
    path = _copy_real(shared, tmp_path / "root")
    monkeypatch.setattr(mm, "MMAP_THRESHOLD", path.stat().st_size - 1)
    images, _ = load_arrays("breastmnist", "test", root=path.parent)
    assert isinstance(images, np.memmap)


def test_mmap_dataset_pickles_without_copying(shared, tmp_path):
    path = _copy_real(shared, tmp_path / "root")
    ds = MedMNISTDataset("breastmnist", "train", root=path.parent, mmap=True, indices=[3, 7])
    blob = pickle.dumps(ds)
    assert len(blob) < ds.images.nbytes
    clone = pickle.loads(blob)
    assert isinstance(clone.images, np.memmap)
    torch.testing.assert_close(clone[1]["image"], ds[1]["image"])
    assert clone[1]["index"] == 7


def test_md5_hashed_once_per_file(shared, tmp_path, monkeypatch):
    path = _copy_real(shared, tmp_path / "root")
    calls = []
    real = mm._file_md5
    monkeypatch.setattr(mm, "_file_md5", lambda p: calls.append(p) or real(p))
    load_arrays("breastmnist", "train", root=path.parent)
    load_arrays("breastmnist", "val", root=path.parent)
    assert len(calls) == 1
    mm._MD5_CACHE.clear()  # a new process: the sidecar json answers
    load_arrays("breastmnist", "test", root=path.parent)
    assert len(calls) == 1
    assert list((mm.cache_home() / "md5").glob("*.json"))
    os.utime(path, ns=(1, 1))
    load_arrays("breastmnist", "test", root=path.parent)
    assert len(calls) == 2



def test_md5_cache_rejects_same_size_rewrite_with_restored_mtime(tmp_path, monkeypatch):
    path = write_synthetic_npz(tmp_path, "pathmnist", n=(9, 3, 3))
    official = mm._file_md5(path)
    monkeypatch.setattr(mm, "_official", lambda flag, size: (None, official))
    load_arrays("pathmnist", "train", root=tmp_path)  # verified and remembered
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    for _ in range(2):  # in-process cache, then the sidecar of a new process
        with pytest.raises(DataError, match="md5 mismatch") as err:
            load_arrays("pathmnist", "train", root=tmp_path)
        assert "\n" not in str(err.value)
        mm._MD5_CACHE.clear()

# --- synthetic files: every task type and layout ----------------------------------------------

LAYOUTS = [
    ("2d", 1, (1, 28, 28)),
    ("2d", 3, (3, 28, 28)),
    ("3d", 1, (1, 28, 28, 28)),
]


@pytest.mark.parametrize("task", [MULTI_CLASS, BINARY, MULTI_LABEL, ORDINAL])
@pytest.mark.parametrize(("dim", "channels", "shape"), LAYOUTS)
def test_synthetic_round_trip(tmp_path, task, dim, channels, shape):
    n_classes = 2 if task == BINARY else 4
    flag = f"syn_{dim}_{channels}_{task.split(',')[0]}"
    info = synthetic_info(flag, dim, task, n_classes, channels)
    assert domains.dataset_info(flag) == info
    path = write_synthetic_npz(tmp_path, flag, n=(12, 4, 5))
    assert path == tmp_path / f"{flag}.npz"
    with np.load(path) as npz:
        assert sorted(npz.files) == sorted(
            f"{s}_{k}" for s in mm.SPLITS for k in ("images", "labels")
        )
    for split, count in zip(mm.SPLITS, (12, 4, 5), strict=True):
        ds = MedMNISTDataset(flag, split, root=tmp_path, transform=lambda x: x * 2)
        assert len(ds) == count and ds.labels.dtype == np.int64
        item = ds[count - 1]
        assert item["image"].shape == shape and item["image"].dtype == torch.float32
        assert item["image"].max() > 1.0  # transform was applied after scaling to [0, 1]
        if task == MULTI_LABEL:
            assert ds.labels.shape == (count, n_classes)
            assert item["label"].dtype == torch.float32 and item["label"].shape == (n_classes,)
        else:
            assert ds.labels.shape == (count, 1)
            assert item["label"].dtype == torch.long and item["label"].ndim == 0
    assert set(np.unique(MedMNISTDataset(flag, "train", root=tmp_path).labels)) <= {0, 1, 2, 3}


def test_synthetic_under_real_flag_needs_verify_off(tmp_path):
    path = write_synthetic_npz(tmp_path, "pathmnist", size=64, n=(9, 3, 3))
    assert path.name == "pathmnist_64.npz"
    ds = MedMNISTDataset("pathmnist", "train", size=64, root=tmp_path, verify_md5=False)
    assert ds[0]["image"].shape == (3, 64, 64) and len(ds) == 9
    with pytest.raises(DataError, match="md5 mismatch") as err:
        load_arrays("pathmnist", "train", size=64, root=tmp_path)
    assert "verify_md5=false" in str(err.value)


def test_write_synthetic_registers_explicit_info(tmp_path):
    info = domains.DatasetInfo("syn_explicit", "3d", "mr", "brain", MULTI_CLASS, 3, 1)
    write_synthetic_npz(tmp_path, "syn_explicit", size=64, n=(3, 3, 3), info=info)
    assert domains.dataset_info("syn_explicit") == info
    images, _ = load_arrays("syn_explicit", "val", size=64, root=tmp_path)
    assert images.shape == (3, 64, 64, 64)


@pytest.mark.parametrize(("dim", "task", "n_classes"), [("2d", MULTI_CLASS, 9), ("3d", ORDINAL, 5)])
def test_synthetic_signal_is_learnable(tmp_path, dim, task, n_classes):
    """A nearest-centroid classifier separates the classes: a small model can learn them."""
    flag = f"learn_{dim}"
    synthetic_info(flag, dim, task, n_classes, 3 if dim == "2d" else 1)
    write_synthetic_npz(tmp_path, flag, n=(90, 10, 45), seed=3)
    x_train, y_train = load_arrays(flag, "train", root=tmp_path)
    x_test, y_test = load_arrays(flag, "test", root=tmp_path)
    x_train = x_train.reshape(len(x_train), -1).astype(np.float32)
    x_test = x_test.reshape(len(x_test), -1).astype(np.float32)
    centroids = np.stack([x_train[y_train[:, 0] == c].mean(0) for c in range(n_classes)])
    distances = ((x_test[:, None, :] - centroids[None]) ** 2).sum(-1)
    assert (distances.argmin(1) == y_test[:, 0]).mean() > 0.95


def test_synthetic_info_rejects_impossible_layouts():
    with pytest.raises(DataError, match="channel"):
        synthetic_info("bad3d", "3d", MULTI_CLASS, 3, 3)
    with pytest.raises(DataError, match="binary"):
        synthetic_info("badbin", "2d", BINARY, 3, 1)


# --- bad input --------------------------------------------------------------------------------


def test_missing_file_names_path_and_fixes(tmp_path):
    with pytest.raises(DataError) as err:
        load_arrays("breastmnist", "train", root=tmp_path / "empty")
    msg = str(err.value)
    assert str(tmp_path / "empty" / "breastmnist.npz") in msg
    assert "data.root" in msg and "MEDMNIST_ROOT" in msg and "download" in msg
    assert medmnist.INFO["breastmnist"]["url"] in msg
    assert "\n" not in msg


def test_download_uses_official_url_and_md5(shared, tmp_path, monkeypatch):
    """The real download call, with torchvision's fetch replaced by a local copy (no internet)."""
    tv_utils = pytest.importorskip("torchvision.datasets.utils")
    calls = []

    def fake_download(url, root, filename=None, md5=None):
        calls.append((url, root, filename, md5))
        Path(root).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared / "breastmnist.npz", Path(root) / filename)

    monkeypatch.setattr(tv_utils, "download_url", fake_download)
    root = tmp_path / "new"
    images, _ = load_arrays("breastmnist", "val", root=root, download=True)
    info = medmnist.INFO["breastmnist"]
    assert calls == [(info["url"], str(root), "breastmnist.npz", info["MD5"])]
    assert len(images) == info["n_samples"]["val"]

    def failing_download(url, root, filename=None, md5=None):
        raise RuntimeError("File not found or corrupted.\nretry")

    monkeypatch.setattr(tv_utils, "download_url", failing_download)
    with pytest.raises(DataError, match="download of .*failed") as err:
        load_arrays("breastmnist", "val", size=64, root=root, download=True)
    assert "\n" not in str(err.value)


def test_md5_mismatch_of_modified_real_file(shared, tmp_path):
    path = _copy_real(shared, tmp_path / "root")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="md5 mismatch") as err:
        load_arrays("breastmnist", "train", root=path.parent)
    assert str(path) in str(err.value) and "re-download" in str(err.value)


def test_corrupt_npz(tmp_path):
    synthetic_info("syn_corrupt", "2d", MULTI_CLASS, 3, 1)
    (tmp_path / "syn_corrupt.npz").write_bytes(b"this is not a zip file" * 100)
    with pytest.raises(DataError, match="corrupt"):
        load_arrays("syn_corrupt", "train", root=tmp_path)
    with pytest.raises(DataError, match="corrupt"):
        load_arrays("syn_corrupt", "train", root=tmp_path, mmap=True)


def test_truncated_npz(shared, tmp_path):
    path = _copy_real(shared, tmp_path / "root")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="corrupt"):
        load_arrays("breastmnist", "train", root=path.parent, verify_md5=False)


def test_missing_key_is_named(tmp_path):
    synthetic_info("syn_keys", "2d", MULTI_CLASS, 3, 1)
    path = write_synthetic_npz(tmp_path, "syn_keys", n=(6, 3, 3))
    _rewrite(path, val_labels=None)
    load_arrays("syn_keys", "train", root=tmp_path)  # other splits still load
    for mmap in (False, True):
        with pytest.raises(DataError, match="val_labels"):
            load_arrays("syn_keys", "val", root=tmp_path, mmap=mmap)


def test_wrong_image_shape(tmp_path):
    synthetic_info("syn_shape", "2d", MULTI_CLASS, 3, 3)
    path = write_synthetic_npz(tmp_path, "syn_shape", n=(6, 3, 3))
    _rewrite(path, train_images=np.zeros((6, 28, 28), np.uint8))  # gray where RGB is declared
    with pytest.raises(DataError, match=r"\[N, 28, 28, 3\]"):
        load_arrays("syn_shape", "train", root=tmp_path)
    _rewrite(path, train_images=np.zeros((6, 3, 28, 28), np.float32))
    with pytest.raises(DataError, match="shape"):
        load_arrays("syn_shape", "train", root=tmp_path)
    _rewrite(path, train_images=np.zeros((6, 28, 28, 3), np.float32))
    with pytest.raises(DataError, match="uint8"):
        load_arrays("syn_shape", "train", root=tmp_path)


def test_labels_out_of_range_or_misshapen(tmp_path):
    synthetic_info("syn_lab", "2d", MULTI_CLASS, 3, 1)
    synthetic_info("syn_ml", "2d", MULTI_LABEL, 3, 1)
    path = write_synthetic_npz(tmp_path, "syn_lab", n=(6, 3, 3))
    _rewrite(path, train_labels=np.array([[0], [1], [2], [3], [0], [1]], np.uint8))
    with pytest.raises(DataError, match=r"\[0, 2\]"):
        load_arrays("syn_lab", "train", root=tmp_path)
    _rewrite(path, train_labels=np.zeros((5, 1), np.uint8))
    with pytest.raises(DataError, match=r"\[6, 1\]"):
        load_arrays("syn_lab", "train", root=tmp_path)
    ml = write_synthetic_npz(tmp_path, "syn_ml", n=(6, 3, 3))
    _rewrite(ml, test_labels=np.full((3, 3), 2, np.uint8))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        load_arrays("syn_ml", "test", root=tmp_path)
    _rewrite(ml, test_labels=np.zeros((3, 1), np.uint8))
    with pytest.raises(DataError, match=r"\[3, 3\]"):
        load_arrays("syn_ml", "test", root=tmp_path)


def test_indices_out_of_range(tmp_path):
    synthetic_info("syn_idx", "2d", BINARY, 2, 1)
    write_synthetic_npz(tmp_path, "syn_idx", n=(6, 3, 3))
    with pytest.raises(DataError, match=r"\[0, 5\]"):
        MedMNISTDataset("syn_idx", "train", root=tmp_path, indices=[0, 6])


# --- label fractions --------------------------------------------------------------------------


def test_stratified_fraction_keeps_proportions_and_is_deterministic():
    rng = np.random.default_rng(0)
    labels = rng.choice(5, size=1000, p=[0.5, 0.2, 0.15, 0.1, 0.05])[:, None]
    for fraction in (0.01, 0.1, 0.25, 0.5):
        subset = stratified_fraction(labels, fraction, seed=1)
        assert np.all(np.diff(subset) > 0)
        for c in range(5):
            n_c = int((labels[:, 0] == c).sum())
            k_c = int((labels[subset, 0] == c).sum())
            assert k_c >= 1 and abs(k_c - fraction * n_c) <= 1
        np.testing.assert_array_equal(subset, stratified_fraction(labels, fraction, seed=1))
    assert not np.array_equal(
        stratified_fraction(labels, 0.1, 1), stratified_fraction(labels, 0.1, 2)
    )
    np.testing.assert_array_equal(stratified_fraction(labels, 1.0, 0), np.arange(1000))


def test_stratified_fraction_keeps_rare_classes_and_multilabel():
    labels = np.array([0] * 200 + [1] * 3)[:, None]
    subset = stratified_fraction(labels, 0.01, seed=0)
    assert set(labels[subset, 0]) == {0, 1}
    multi = np.zeros((300, 3), np.int64)
    multi[:100, 0] = 1
    multi[100:150, 1] = 1
    multi[100:150, 2] = 1  # first positive label (1) is the stratum
    subset = stratified_fraction(multi, 0.1, seed=0)
    assert (subset < 100).sum() == 10 and ((subset >= 100) & (subset < 150)).sum() == 5
    assert (subset >= 150).sum() == 15  # no positive label is its own stratum


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_stratified_fraction_rejects_bad_fraction(fraction):
    with pytest.raises(DataError, match=r"\(0, 1\]"):
        stratified_fraction(np.zeros((10, 1)), fraction, seed=0)


def test_real_subset_dataset(shared):
    full = MedMNISTDataset("pneumoniamnist", "train", root=shared)
    subset = stratified_fraction(full.labels, 0.05, seed=0)
    ds = MedMNISTDataset("pneumoniamnist", "train", root=shared, indices=subset)
    assert len(ds) == len(subset) and ds.labels.shape == (len(subset), 1)
    np.testing.assert_array_equal(ds.labels, full.labels[subset])
    assert ds[0]["index"] == subset[0]
    share = full.labels.mean()
    assert abs(ds.labels.mean() - share) < 0.01


@pytest.mark.parametrize("flag,shape", [("retinamnist", (64, 64, 3)), ("adrenalmnist3d", (64, 64, 64))])
def test_upsampled_stand_in_files_load_at_64(shared, tmp_path, flag, shape):
    """scripts/upsample_medmnist.py: the 28 px file at 64 px, labels unchanged; it loads as data.size=64
    only with the md5 check off, since it is not the official file."""
    from medformer.data.upsample import upsample_npz

    path = upsample_npz(shared, tmp_path, flag, 64)
    assert path.name == f"{flag}_64.npz" and not list(tmp_path.glob("*.tmp"))
    images, labels = load_arrays(flag, "val", 64, root=tmp_path, verify_md5=False)
    small, small_labels = load_arrays(flag, "val", 28, root=shared)
    assert images.shape == (len(small), *shape) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, small_labels)
    assert abs(float(images.mean()) - float(small.mean())) < 1.0  # the same intensities, resampled
    with pytest.raises(DataError, match="md5"):
        load_arrays(flag, "val", 64, root=tmp_path)
