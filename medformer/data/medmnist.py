"""Official MedMNIST npz files: locate, download, verify, validate, memory-map, serve as a Dataset.

Layouts follow the official files: images uint8 2D gray [N,S,S], 2D RGB [N,S,S,3], 3D [N,S,S,S];
labels [N,L] with L=1 except multi-label (L = number of labels).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import medmnist
import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from .domains import MULTI_LABEL, DatasetInfo, dataset_info

SPLITS = ("train", "val", "test")
MMAP_THRESHOLD = 256 * 2**20  # npz files larger than this are extracted to .npy and memory-mapped
ROOT_ENV = "MEDMNIST_ROOT"
CACHE_ENV = "MEDFORMER_CACHE_DIR"  # overrides ~/.cache/medformer (tests, shared machines)
_CHUNK = 1 << 20

# _md5_key(path) -> md5 hex; the sidecar json makes it survive restarts.
_MD5_CACHE: dict[tuple, str] = {}


class DataError(UserError):
    """A user-facing data problem; the message says what is wrong and how to fix it."""


# --- locating files -------------------------------------------------------------------------


def resolve_root(root: str | os.PathLike | None) -> Path:
    """Data folder: the config value, else env MEDMNIST_ROOT, else ~/.medmnist."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".medmnist"


def cache_home() -> Path:
    """Per-user cache for md5 sidecars and extracted arrays (env MEDFORMER_CACHE_DIR overrides)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medformer"


def _info(flag: str) -> DatasetInfo:
    try:
        return dataset_info(flag)
    except ValueError as err:
        raise DataError(str(err)) from None


def npz_filename(flag: str, size: int) -> str:
    """Official file name: `{flag}.npz` at 28 px, `{flag}_{size}.npz` otherwise."""
    info = _info(flag)
    if size not in info.sizes:
        valid = ", ".join(str(s) for s in info.sizes)
        raise DataError(
            f"size {size} is not available for {flag} ({info.dim}); set data.size to one of {valid}"
        )
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def _official(flag: str, size: int) -> tuple[str | None, str | None]:
    """(url, md5) from medmnist.INFO, or (None, None) for datasets medmnist does not know."""
    entry = medmnist.INFO.get(flag)
    if entry is None:
        return None, None
    suffix = "" if size == 28 else f"_{size}"
    return entry.get(f"url{suffix}"), entry.get(f"MD5{suffix}")


def _ensure_file(path: Path, flag: str, size: int, download: bool) -> None:
    if path.is_file():
        return
    url, md5 = _official(flag, size)
    if not download:
        how = (
            f"set data.download=true to fetch it from {url}"
            if url
            else "no download URL is known for this dataset"
        )
        raise DataError(
            f"MedMNIST file not found: {path}; put {path.name} in a folder and set "
            f"data.root=<folder> (or env {ROOT_ENV}=<folder>), or {how}"
        )
    if url is None:
        raise DataError(
            f"cannot download {path.name}: {flag} is not an official MedMNIST dataset; place the file at {path}"
        )
    _download(url, path, md5)


def _download(url: str, path: Path, md5: str | None) -> None:
    """Fetch with torchvision (same code path as the medmnist package), which also checks md5."""
    from torchvision.datasets.utils import download_url  # heavy import, only when needed

    try:
        download_url(url, str(path.parent), path.name, md5)
    except Exception as err:  # network, disk and integrity errors all mean the same fix
        raise DataError(
            f"download of {url} to {path} failed ({_describe(err)}); "
            f"check the network or fetch the file by hand into {path.parent}"
        ) from err
    if md5 is not None:
        _remember_md5(path, md5)


# --- md5 with caching -----------------------------------------------------------------------


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _edges_digest(path: Path, size: int) -> str:
    """sha256 of the file's first and last MiB (the whole file when smaller than 2 MiB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(_CHUNK))
        if size > 2 * _CHUNK:
            fh.seek(size - _CHUNK)
        digest.update(fh.read())
    return digest.hexdigest()


def _md5_key(path: Path) -> tuple:
    """What a remembered md5 is trusted by: the same file (inode) unchanged since it was hashed.

    mtime alone can be restored with os.utime (or tar, rsync -t); ctime cannot be set from user
    space and moves on every write, and the edges digest catches same-size rewrites even where
    ctime is coarse or missing. Trusted without a re-hash: a change confined to the middle of a
    file larger than 2 MiB made within one clock tick of the last hashing, with mtime restored.
    """
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns,
            _edges_digest(path, st.st_size))


_KEY_FIELDS = ("path", "size", "mtime_ns", "inode", "ctime_ns", "edges_sha256")


def _sidecar(resolved: str) -> Path:
    name = hashlib.sha1(resolved.encode(), usedforsecurity=False).hexdigest()
    return cache_home() / "md5" / f"{name}.json"


def _read_sidecar(key: tuple) -> str | None:
    try:
        record = json.loads(_sidecar(key[0]).read_text())
    except (OSError, ValueError):
        return None
    if [record.get(f) for f in _KEY_FIELDS] == list(key):
        return record.get("md5")
    return None


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remember_md5(path: Path, md5: str) -> None:
    key = _md5_key(path)
    _MD5_CACHE[key] = md5
    record = {**dict(zip(_KEY_FIELDS, key, strict=True)), "md5": md5}
    try:
        _atomic_write_text(_sidecar(key[0]), json.dumps(record))
    except OSError:
        pass  # a read-only home only costs a re-hash next run


def cached_md5(path: str | os.PathLike) -> str:
    """md5 of a file, hashed once per unchanged file (see `_md5_key`) in-process and across runs."""
    path = Path(path)
    key = _md5_key(path)
    md5 = _MD5_CACHE.get(key) or _read_sidecar(key)
    if md5 is None:
        md5 = _file_md5(path)
        _remember_md5(path, md5)
    _MD5_CACHE[key] = md5
    return md5


def _verify_md5(path: Path, flag: str, size: int) -> str | None:
    _, expected = _official(flag, size)
    if expected is None:
        return None  # a dataset medmnist does not know has no reference checksum
    actual = cached_md5(path)
    if actual != expected:
        raise DataError(
            f"md5 mismatch for {path} (got {actual}, official {expected}): the file is corrupt or "
            f"not the official one; delete it and re-download (data.download=true), or set "
            f"data.verify_md5=false if it is your own file"
        )
    return actual


# --- reading arrays -------------------------------------------------------------------------

_READ_ERRORS = (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError)


def _describe(err: BaseException) -> str:
    """An exception as one line, so DataError messages stay single-line."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _corrupt(path: Path, err: Exception) -> DataError:
    return DataError(
        f"cannot read {path} as an npz file ({_describe(err)}); the file is corrupt or "
        f"truncated: delete it and re-download (data.download=true)"
    )


def _missing_keys(path: Path, names: Sequence[str], keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in names]
    if missing:
        raise DataError(
            f"{path} lacks key(s) {', '.join(missing)} (has: {', '.join(sorted(names)) or 'none'}); "
            f"an official MedMNIST npz holds train/val/test _images and _labels"
        )


def _load_npz(path: Path, keys: Sequence[str]) -> list[np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            _missing_keys(path, npz.files, keys)
            return [npz[k] for k in keys]
    except DataError:
        raise
    except _READ_ERRORS as err:
        raise _corrupt(path, err) from err


def _is_writable_dir(path: Path) -> bool:
    # Root ignores permission bits, so also honour a folder marked read-only (e.g. shared data).
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return os.access(path, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def npy_cache_dir(path: Path, md5: str | None = None) -> Path:
    """Where the extracted arrays of a large npz live: next to it if possible, else per user."""
    if _is_writable_dir(path.parent):
        return path.parent / ".medformer_cache" / path.stem
    tag = md5 or f"m{path.stat().st_mtime_ns}"
    return cache_home() / "npy" / f"{path.stem}-{tag}"


def _source_record(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"source": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _extract_npz(path: Path, cache: Path) -> None:
    """Stream every member .npy out of the zip (no full load in RAM), each written atomically."""
    cache.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.infolist():
                if not member.filename.endswith(".npy"):
                    continue
                fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{member.filename}.", suffix=".tmp")
                try:
                    with os.fdopen(fd, "wb") as out, zf.open(member) as src:
                        shutil.copyfileobj(src, out, _CHUNK)
                    os.replace(tmp, cache / member.filename)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
    except _READ_ERRORS as err:
        raise _corrupt(path, err) from err
    # Written last: its presence with a matching source record marks a complete extraction.
    _atomic_write_text(cache / "source.json", json.dumps(_source_record(path)))


def _cache_is_fresh(path: Path, cache: Path) -> bool:
    try:
        return json.loads((cache / "source.json").read_text()) == _source_record(path)
    except (OSError, ValueError):
        return False


def _load_mmap(path: Path, keys: Sequence[str], md5: str | None) -> list[np.ndarray]:
    cache = npy_cache_dir(path, md5)
    if not _cache_is_fresh(path, cache):
        _extract_npz(path, cache)
    names = [p.stem for p in cache.glob("*.npy")]
    _missing_keys(path, names, keys)
    try:
        return [np.load(cache / f"{k}.npy", mmap_mode="r", allow_pickle=False) for k in keys]
    except _READ_ERRORS as err:
        raise _corrupt(cache / f"{keys[0]}.npy", err) from err


# --- validation -----------------------------------------------------------------------------


def expected_image_shape(info: DatasetInfo, size: int) -> tuple[int, ...]:
    """Per-sample shape of the official image array."""
    if info.dim == "3d":
        return (size, size, size)
    return (size, size) if info.n_channels == 1 else (size, size, info.n_channels)


def label_width(info: DatasetInfo) -> int:
    return info.n_classes if info.task == MULTI_LABEL else 1


def _check_images(images: np.ndarray, info: DatasetInfo, size: int, where: str) -> None:
    want = expected_image_shape(info, size)
    if images.ndim != len(want) + 1 or images.shape[1:] != want:
        raise DataError(
            f"{where} has shape {list(images.shape)} but {info.flag} at size {size} needs "
            f"[N, {', '.join(map(str, want))}]; check data.size and that the file matches the dataset"
        )
    if images.dtype != np.uint8:
        raise DataError(
            f"{where} has dtype {images.dtype}; MedMNIST images must be uint8 (0-255): convert the file"
        )


def _check_labels(labels: np.ndarray, info: DatasetInfo, n_images: int, where: str) -> np.ndarray:
    width = label_width(info)
    if labels.ndim != 2 or labels.shape[1] != width or labels.shape[0] != n_images:
        raise DataError(
            f"{where} has shape {list(labels.shape)} but needs [{n_images}, {width}] "
            f"(one row per image, {width} column(s) for {info.task}); fix the labels array"
        )
    is_integer = np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_
    if not is_integer and not np.array_equal(labels, np.round(labels)):
        raise DataError(
            f"{where} holds non-integer values; labels must be class indices (or 0/1 for multi-label)"
        )
    labels = labels.astype(np.int64)
    high = 2 if info.task == MULTI_LABEL else info.n_classes
    if labels.size and (labels.min() < 0 or labels.max() >= high):
        raise DataError(
            f"{where} has values in [{labels.min()}, {labels.max()}] but {info.flag} ({info.task}) "
            f"needs values in [0, {high - 1}]; fix the labels or the dataset's n_classes"
        )
    return labels


# --- public loading API ---------------------------------------------------------------------


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def npz_path(flag: str, size: int = 28, root: str | os.PathLike | None = None) -> Path:
    """Full path where the npz of (flag, size) is expected."""
    return resolve_root(root) / npz_filename(flag, size)


def load_arrays(
    flag: str,
    split: str,
    size: int = 28,
    root: str | os.PathLike | None = None,
    download: bool = False,
    verify_md5: bool = True,
    mmap: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 in the official layout, labels int64 [N, L]) of one split.

    `mmap=None` memory-maps files larger than MMAP_THRESHOLD; True/False force it on/off.
    """
    _check_split(split)
    info = _info(flag)
    path = npz_path(flag, size, root)
    _ensure_file(path, flag, size, download)
    md5 = _verify_md5(path, flag, size) if verify_md5 else None
    if mmap is None:
        mmap = path.stat().st_size > MMAP_THRESHOLD
    keys = (f"{split}_images", f"{split}_labels")
    images, labels = _load_mmap(path, keys, md5) if mmap else _load_npz(path, keys)
    _check_images(images, info, size, f"{path.name}:{keys[0]}")
    labels = _check_labels(np.asarray(labels), info, len(images), f"{path.name}:{keys[1]}")
    return images, labels


def _to_tensor(image: np.ndarray, info: DatasetInfo) -> torch.Tensor:
    """uint8 official layout -> float32 in [0, 1]: 2D [C,H,W], 3D [1,D,H,W]."""
    x = torch.from_numpy(np.array(image, dtype=np.float32, copy=True)).div_(255.0)
    if info.dim == "2d" and x.ndim == 3:
        return x.permute(2, 0, 1).contiguous()
    return x.unsqueeze(0)


class MedMNISTDataset(Dataset):
    """One split of one MedMNIST (or registered, same-format) dataset as dict samples."""

    def __init__(
        self,
        flag: str,
        split: str,
        size: int = 28,
        root: str | os.PathLike | None = None,
        download: bool = False,
        verify_md5: bool = True,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        mmap: bool | None = None,
    ) -> None:
        self.flag = flag
        self.split = split
        self.size = size
        self.info = _info(flag)
        self.transform = transform
        self.images, all_labels = load_arrays(flag, split, size, root, download, verify_md5, mmap)
        self.indices = self._check_indices(indices, len(all_labels))
        self.labels = all_labels[self.indices]

    def _check_indices(self, indices: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
        if indices is None:
            return np.arange(n, dtype=np.int64)
        out = np.asarray(indices, dtype=np.int64).reshape(-1)
        if out.size and (out.min() < 0 or out.max() >= n):
            raise DataError(
                f"indices for {self.flag}/{self.split} must lie in [0, {n - 1}], got "
                f"[{out.min()}, {out.max()}]; build them from this split's labels"
            )
        return out

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, positions: Sequence[int] | np.ndarray) -> MedMNISTDataset:
        """A view of some of this dataset's samples (by position), sharing the loaded arrays."""
        view = copy.copy(self)
        view.indices = self.indices[np.asarray(positions, dtype=np.int64)]
        view.labels = self.labels[np.asarray(positions, dtype=np.int64)]
        return view

    def _label(self, row: np.ndarray) -> torch.Tensor:
        if self.info.task == MULTI_LABEL:
            return torch.as_tensor(row, dtype=torch.float32)
        return torch.tensor(int(row[0]), dtype=torch.long)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = int(self.indices[i])
        image = _to_tensor(self.images[index], self.info)
        if self.transform is not None:
            image = self.transform(image)
        return {
            "image": image,
            "label": self._label(self.labels[i]),
            "dataset": self.flag,
            "index": index,
        }

    # Memory-maps are re-opened instead of pickled, so spawn-started workers don't copy the file.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if isinstance(self.images, np.memmap) and self.images.filename:
            state["images"] = None
            state["_images_file"] = self.images.filename
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        filename = state.pop("_images_file", None)
        self.__dict__.update(state)
        if filename is not None:
            self.images = np.load(filename, mmap_mode="r", allow_pickle=False)


# --- label fractions ------------------------------------------------------------------------


def _strata(labels: np.ndarray) -> np.ndarray:
    """One stratum per sample: the class, or for multi-label the first positive label (-1: none)."""
    labels = np.asarray(labels)
    if labels.ndim == 1 or labels.shape[1] == 1:
        return labels.reshape(len(labels))
    positive = labels > 0
    return np.where(positive.any(axis=1), positive.argmax(axis=1), -1)


def stratified_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-stratified subset (>= 1 sample per present class)."""
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"label fraction must be in (0, 1], got {fraction}; e.g. 0.01, 0.1 or 1.0")
    n = len(labels)
    if fraction == 1.0:
        return np.arange(n, dtype=np.int64)
    strata = _strata(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        k = max(1, int(np.floor(fraction * len(members) + 0.5)))
        chosen.append(rng.choice(members, size=min(k, len(members)), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)
