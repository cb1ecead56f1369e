"""Sharded image sets for corpora larger than memory: written once as Arrow files with Hugging Face
`datasets`, read memory-mapped by every process and node of a run, one folder per dim.

Why this format: a shard set is a map-style dataset (random access, about 35 µs a sample), so the
seeded sampler and Accelerate's batch skipping that serve every other dataset here serve shards too:
each sample is drawn once per epoch across all ranks, the whole set is shuffled (not a buffer), and a
run resumed mid-epoch sees exactly the samples it had not seen. MosaicML `streaming` also resumes
exactly and streams from object stores, but pins numpy < 2.2 and brings cloud SDKs and transformers;
WebDataset shuffles through a buffer and does not resume exactly. Several nodes read one shard set
from a shared filesystem (or each from its own copy).

Layout of a shard set (the folder `medformer shards` writes):
    medformer_shards.json   format, version, what was written (samples per dim and dataset, files and sizes)
    2d/, 3d/                a `datasets.Dataset.save_to_disk` folder each: data-*.arrow, state.json
Each row: the image (uint8 bytes, shape [C, H, W] or [1, D, H, W]), its dataset of origin, its index
there, its modality and body part (the domain latents), and its label row ([] when unlabeled).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config.shards import ShardsConfig
from .domains import MULTI_CLASS, MULTI_LABEL, DatasetInfo, dataset_info, register_dataset
from .medmnist import DataError, MedMNISTDataset

FORMAT = "medformer-shards"
VERSION = 1
MANIFEST = "medformer_shards.json"
DIMS = ("2d", "3d")


def _features():
    from datasets import Features, Sequence, Value

    return Features({
        "image": Value("binary"),
        "shape": Sequence(Value("int32")),
        "dataset": Value("string"),
        "index": Value("int64"),
        "modality": Value("string"),
        "body_part": Value("string"),
        "label": Sequence(Value("float32")),
    })


Rows = Callable[[], Iterator[dict[str, Any]]]


def medmnist_rows(cfg: ShardsConfig) -> dict[str, Rows]:
    """Row generators per dim for the `split` of each MedMNIST flag (labels kept)."""
    by_dim: dict[str, list[str]] = {}
    for flag in cfg.datasets:
        info = dataset_info(flag)  # unknown flags fail here, before anything is written
        if info.source:
            raise DataError(f"{flag} is a derived task; write shards of its source dataset {info.source}")
        by_dim.setdefault(info.dim, []).append(flag)
    parts = {flag: MedMNISTDataset(flag, cfg.split, cfg.size, cfg.root, cfg.download, cfg.verify_md5)
             for flags in by_dim.values() for flag in flags}  # missing or corrupt files fail before writing

    def rows(flags: list[str]) -> Iterator[dict[str, Any]]:
        for flag in flags:
            ds = parts[flag]
            info = ds.info
            for i in range(len(ds)):
                image = np.asarray(ds.images[int(ds.indices[i])], dtype=np.uint8)
                image = np.moveaxis(image, -1, 0) if info.dim == "2d" and image.ndim == 3 else image[None]
                yield {"image": np.ascontiguousarray(image).tobytes(), "shape": list(image.shape), "dataset": flag,
                       "index": int(ds.indices[i]), "modality": info.modality, "body_part": info.body_part,
                       "label": np.asarray(ds.labels[i], dtype=np.float32).reshape(-1).tolist()}

    return {dim: (lambda flags=flags: rows(flags)) for dim, flags in by_dim.items()}


def dicom_cache_rows(cfg: ShardsConfig) -> dict[str, Rows]:
    """Row generators per dim for every sample of an ingested DICOM cache (unlabeled)."""
    from .dicom import DicomIndex

    if not cfg.dicom_cache:
        raise DataError("source=dicom_cache needs dicom_cache=<folder of an ingested DICOM cache>")
    index = DicomIndex.load(cfg.dicom_cache)
    out: dict[str, Rows] = {}
    for dim in DIMS:
        records = [r for r in index.records if r.dim == dim]
        if not records:
            continue

        def rows(records=records, dim=dim) -> Iterator[dict[str, Any]]:
            images = np.load(Path(cfg.dicom_cache) / f"images_{dim}.npy", mmap_mode="r")
            for r in records:
                image = np.asarray(images[r.array_index], dtype=np.uint8)
                image = np.moveaxis(image, -1, 0)[: r.channels] if dim == "2d" else image[None]
                yield {"image": np.ascontiguousarray(image).tobytes(), "shape": list(image.shape), "dataset": "dicom",
                       "index": r.index, "modality": r.modality, "body_part": r.body_part, "label": []}

        out[dim] = rows
    return out


def write_shards(cfg: ShardsConfig) -> dict:
    """Write the shard set of `cfg` to cfg.output_dir; returns its manifest. The set is written into a
    temporary folder beside it and renamed when complete, so a failed or killed write leaves nothing."""
    from datasets import Dataset as ArrowDataset
    from datasets.utils.logging import disable_progress_bar

    out = Path(cfg.output_dir)
    if out.exists():
        raise DataError(f"output_dir {out} exists; shards are written once: choose a new folder or remove it")
    if cfg.source == "medmnist" and not cfg.datasets:
        raise DataError("source=medmnist needs datasets=[flag, ...]")
    rows = medmnist_rows(cfg) if cfg.source == "medmnist" else dicom_cache_rows(cfg)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    disable_progress_bar()
    try:
        manifest: dict[str, Any] = {"format": FORMAT, "version": VERSION, "source": cfg.source, "size": cfg.size,
                                    "split": cfg.split if cfg.source == "medmnist" else None, "dims": {}}
        for dim, make_rows in rows.items():
            table = ArrowDataset.from_generator(make_rows, features=_features(), cache_dir=str(tmp / ".cache"))
            n = len(table)
            table.save_to_disk(str(tmp / dim), num_shards=max(1, -(-n // cfg.samples_per_shard)))
            counts: dict[str, int] = {}
            for name in table["dataset"]:
                counts[name] = counts.get(name, 0) + 1
            domains = sorted({(m, b) for m, b in zip(table["modality"], table["body_part"], strict=True)})
            files = {p.name: p.stat().st_size for p in sorted((tmp / dim).glob("*.arrow"))}
            manifest["dims"][dim] = {"samples": n, "datasets": counts, "domains": [list(d) for d in domains],
                                     "files": files, "labeled": cfg.source == "medmnist"}
            del table
        shutil.rmtree(tmp / ".cache", ignore_errors=True)
        manifest["written"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of a complete shard set of this version; a one-line DataError otherwise."""
    folder = Path(folder)
    hint = "write it with `medformer shards`"
    if not folder.is_dir():
        raise DataError(f"shard folder {folder} not found; {hint}")
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(f"{folder} holds no {MANIFEST}: not a medformer shard set ({hint})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DataError(f"{path} is not valid JSON: the shard set is damaged; {hint} again") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DataError(f"{folder} is shard format {manifest.get('format')} version {manifest.get('version')}; this "
                        f"medformer reads {FORMAT} version {VERSION}: rewrite it with `medformer shards`")
    for dim, part in manifest["dims"].items():
        for name, size in part["files"].items():
            file = folder / dim / name
            if not file.is_file():
                raise DataError(f"shard file {file} is missing; copy the whole shard set again, or rewrite it")
            if file.stat().st_size != size:
                raise DataError(f"shard file {file} has {file.stat().st_size} bytes, the manifest says {size}: it is "
                                "truncated or changed; copy the whole shard set again, or rewrite it")
    return manifest


class ShardDataset(Dataset):
    """One dim of a shard set as MedMNIST-style dict items, each with its own domain (modality and
    body part). Labeled rows (MedMNIST shards) carry their label and, as task, their dataset of origin."""

    def __init__(self, folder: str | os.PathLike, dim: str):
        from datasets import load_from_disk

        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        if dim not in manifest["dims"]:
            raise DataError(f"shard set {self.folder} holds no {dim} images (it holds {', '.join(manifest['dims'])})")
        self.dim = dim
        self.labeled = manifest["dims"][dim]["labeled"]
        self.datasets = manifest["dims"][dim]["datasets"]  # {origin: samples}
        self.domains = [tuple(d) for d in manifest["dims"][dim]["domains"]]  # (modality, body part) pairs
        self.table = load_from_disk(str(self.folder / dim))  # memory-mapped
        self.info = DatasetInfo(f"shards{dim}", dim, "mixed", "mixed", MULTI_CLASS, 1, 3 if dim == "2d" else 1)
        register_dataset(self.info)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.table[int(i)]
        image = np.frombuffer(row["image"], dtype=np.uint8).reshape(row["shape"])
        item = {"image": torch.from_numpy(image.astype(np.float32)).div_(255.0), "dataset": self.info.flag,
                "index": int(i), "modality": row["modality"], "body_part": row["body_part"],
                "task": row["dataset"] if self.labeled else self.info.flag}
        if self.labeled:
            info = dataset_info(row["dataset"])
            label = torch.tensor(row["label"], dtype=torch.float32)
            item["label"] = label if info.task == MULTI_LABEL else label[0].long()
        return item

    def labels_by_dataset(self) -> dict[str, np.ndarray]:
        """{dataset of origin: its rows' labels [n, L]} of a labeled shard set (for class weights)."""
        if not self.labeled:
            return {}
        columns = self.table.select_columns(["dataset", "label"])
        origins, labels = np.asarray(columns["dataset"]), np.asarray(columns["label"])
        return {origin: labels[origins == origin] for origin in self.datasets}

    # the Arrow table re-opens (memory-mapped) in each worker instead of being pickled whole
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "table"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from datasets import load_from_disk

        self.__dict__.update(state)
        self.table = load_from_disk(str(self.folder / self.dim))
        register_dataset(self.info)  # a spawned worker collates these items


def shard_parts(folders: list[str]) -> list[ShardDataset]:
    """The 2D and 3D parts of each shard set."""
    parts = []
    for folder in folders:
        manifest = read_manifest(folder)
        parts += [ShardDataset(folder, dim) for dim in DIMS if dim in manifest["dims"]]
    return parts
