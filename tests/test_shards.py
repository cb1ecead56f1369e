"""Shard sets (medformer.data.shards): written once from MedMNIST npz files, read back sample for
sample; each sample once per epoch across ranks; a run killed mid-epoch resumes to the uninterrupted
one; bad folders stop with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.data_loader import prepare_data_loader, skip_first_batches
from safetensors.torch import load_file

from medformer.cli import main as medformer_main
from medformer.config import ShardsConfig
from medformer.data.loaders import train_loader
from medformer.data.medmnist import DataError, MedMNISTDataset
from medformer.data.shards import MANIFEST, ShardDataset, read_manifest, write_shards

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["breastmnist", "adrenalmnist3d"]  # 2D gray and 3D


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from conftest import SHARED_MEDMNIST

    if not all((SHARED_MEDMNIST / f"{f}.npz").is_file() for f in FLAGS):
        pytest.skip(f"real MedMNIST files not found in {SHARED_MEDMNIST}")
    out = tmp_path_factory.mktemp("shards") / "set"
    write_shards(ShardsConfig(datasets=FLAGS, root=str(SHARED_MEDMNIST), output_dir=str(out), samples_per_shard=200))
    return out


def test_shards_hold_the_npz_samples_with_their_domains(shards, shared_root):
    manifest = read_manifest(shards)
    assert {d: p["datasets"] for d, p in manifest["dims"].items()} == {"2d": {"breastmnist": 546}, "3d": {"adrenalmnist3d": 1188}}
    assert len(manifest["dims"]["3d"]["files"]) == 6  # 1188 rows at 200 a file
    for dim, flag in (("2d", "breastmnist"), ("3d", "adrenalmnist3d")):
        sharded, npz = ShardDataset(shards, dim), MedMNISTDataset(flag, "train", root=shared_root)
        assert len(sharded) == len(npz)
        for i in (0, 7, len(npz) - 1):
            a, b = sharded[i], npz[i]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
            assert (a["task"], a["modality"], a["body_part"]) == (flag, npz.info.modality, npz.info.body_part)


def _epoch(loader, epoch: int) -> list[list[int]]:
    loader.set_epoch(epoch)
    return [b["index"].tolist() for b in loader]


def test_each_sample_once_per_epoch_across_ranks_and_a_resumed_epoch_sees_the_rest(shards):
    data = ShardDataset(shards, "3d")
    ranks = [prepare_data_loader(train_loader(data, 16, seed=3), num_processes=2, process_index=r,
                                 put_on_device=False, use_seedable_sampler=True) for r in (0, 1)]
    seen = [i for loader in ranks for batch in _epoch(loader, 2) for i in batch]
    assert len(seen) == len(set(seen)) == len(data) // 32 * 32  # the last incomplete global batch is dropped
    assert _epoch(ranks[0], 3) != _epoch(ranks[0], 2)  # reshuffled each epoch
    full = _epoch(ranks[1], 2)
    ranks[1].set_epoch(2)
    assert [b["index"].tolist() for b in skip_first_batches(ranks[1], 11)] == full[11:]


def _finetune(args: list[str], out: Path) -> list[str]:
    return [sys.executable, "-m", "finetune", "--config", str(REPO / "configs/finetune/pneumoniamnist_small.yaml"),
            "model.overrides.depth=1", "train.progress=false", "train.eval_test=false", f"output_dir={out}", *args]


def test_a_finetune_on_shards_equals_the_finetune_on_the_npz_files(shards, shared_root, tmp_path):
    """Same images, labels, domains and order: with the augmentation off, the same weights."""
    args = [f"data.root={shared_root}", f"data.datasets=[{','.join(FLAGS)}]", "augment.enabled=false",
            "data.augment_on=loader", "train.max_steps=6", "train.batch_size=16", "train.epochs=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    npz, sharded = tmp_path / "npz", tmp_path / "sharded"
    subprocess.run(_finetune(args, npz), check=True, env=env, capture_output=True)
    subprocess.run(_finetune([*args, f"data.shards=[{shards}]"], sharded), check=True, env=env, capture_output=True)
    a, b = (load_file(str(d / "checkpoints/last/model.safetensors")) for d in (npz, sharded))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert yaml.safe_load((sharded / "config.yaml").read_text())["data"]["shards"] == [str(shards)]


def test_a_pretraining_run_killed_mid_epoch_on_shards_resumes_to_the_uninterrupted_one(shared_root, tmp_path):
    shards = tmp_path / "breast"  # 2D only: the per-sample 3D views would make this test slow
    write_shards(ShardsConfig(datasets=["breastmnist"], root=str(shared_root), output_dir=str(shards)))
    args = [sys.executable, "-m", "pretrain", "--config", str(REPO / "configs/pretrain/vicreg_small.yaml"),
            "data.datasets=[]", f"data.shards=[{shards}]", "model.overrides.depth=1", "train.batch_size=32",
            "train.epochs=2", "train.checkpoint_every=5", "train.progress=false", "monitor.knn_every=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([*args, f"output_dir={full}"], check=True, env=env, capture_output=True)
    proc = subprocess.Popen([*args, f"output_dir={killed}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = killed / "checkpoints" / "last" / "trainer_state.json"
    deadline = time.time() + 300
    while time.time() < deadline:  # 17 steps an epoch: kill after the checkpoint of step 20, mid-epoch 2
        if state_file.is_file() and json.loads(state_file.read_text())["step"] >= 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads(state_file.read_text())
    assert 17 < state["step"] < 34 and state["batches_in_epoch"] > 0, state
    subprocess.run([*args, f"output_dir={killed}", f"resume={killed}"], check=True, env=env, capture_output=True)
    a, b = (load_file(str(d / "encoder.safetensors")) for d in (full, killed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_shard_sets_stop_with_one_line_and_write_nothing(shards, shared_root, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    finetune = ["finetune", "--config", str(REPO / "configs/finetune/pneumoniamnist_small.yaml"),
                f"data.root={shared_root}", f"output_dir={out}"]
    from finetune.__main__ import main as finetune_main

    def fails(folder: Path, needle: str, datasets: str = "[breastmnist,adrenalmnist3d]") -> None:
        assert finetune_main([*finetune[1:], f"data.datasets={datasets}", f"data.shards=[{folder}]"]) == 2
        assert needle in _one_error(capsys) and not out.exists()

    fails(tmp_path / "nowhere", "not found")
    fails(tmp_path, "not a medformer shard set")
    fails(shards, "not in data.datasets", datasets="[breastmnist]")
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps({**manifest, "version": 99}))
    fails(copy, "version 99")
    (copy / MANIFEST).write_text(json.dumps(manifest))
    arrow = sorted((copy / "3d").glob("*.arrow"))[2]
    arrow.write_bytes(arrow.read_bytes()[:1000])
    fails(copy, f"{arrow.name} has 1000 bytes")
    arrow.unlink()
    fails(copy, "is missing")
    # the writer: an existing folder, an unknown flag, a missing npz: nothing written
    assert medformer_main(["shards", f"output_dir={shards}", "datasets=[breastmnist]", f"root={shared_root}"]) == 2
    assert "exists" in _one_error(capsys)
    new = tmp_path / "new"
    assert medformer_main(["shards", f"output_dir={new}", "datasets=[breastmnistt]", f"root={shared_root}"]) == 2
    assert "breastmnistt" in _one_error(capsys) and not new.exists()
    assert medformer_main(["shards", f"output_dir={new}", "datasets=[chestmnist]", f"root={tmp_path}"]) == 2
    assert "chestmnist" in _one_error(capsys) and not new.exists() and not list(tmp_path.glob(".new.tmp*"))


def test_unreadable_manifest_is_one_line(tmp_path):
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_manifest(tmp_path)
