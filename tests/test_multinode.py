"""Two nodes on localhost, one gloo process each, launched with the Accelerate config of
docs/multinode.md (configs/accelerate/two_nodes.yaml, its address and process count overridden): a
fine-tune and an SSL pretraining equal one process at the same global batch; a global batch that the
launch does not split and a node that never joins stop with a message instead of hanging."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.overrides.depth=1", "train.progress=false", "train.global_batch_size=32"]
ENV = {**{k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}, "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(rank: int, port: int, module: str, args: list[str]) -> list[str]:
    """The documented launch of node `rank`, with 2 processes in all (one per node) on localhost."""
    return [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file",
            str(REPO / "configs/accelerate/two_nodes.yaml"), "--machine_rank", str(rank), "--num_processes", "2",
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--mixed_precision", "no",
            "--rdzv_conf", "timeout=60", "-m", module, *args]


def _two_nodes(module: str, args: list[str]) -> list[subprocess.CompletedProcess]:
    port = _free_port()
    procs = [subprocess.Popen(_node(r, port, module, args), env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, out) for p, out in zip(procs, outs, strict=True)]


def _max_diff(a: Path, b: Path, skip: tuple[str, ...] = ()) -> float:
    """Largest weight difference, without the key half of attention kv biases (softmax ignores a key
    bias, so its gradient is float noise that Adam scales up; see test_finetune.max_weight_diff) and
    without the tensors in `skip` (the same reason)."""
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    part = lambda k, w: w[w.numel() // 2:] if k.endswith("attn.kv.bias") else w  # noqa: E731
    return max((part(k, wa[k]) - part(k, wb[k])).abs().max().item() for k in wa if k not in skip)


@pytest.mark.parametrize("kind", ["finetune", "pretrain"])
def test_two_nodes_equal_one_process_at_the_same_global_batch(shared_root, tmp_path, kind):
    if kind == "finetune":
        config = REPO / "configs/finetune/pneumoniamnist_small.yaml"
        args = [f"data.root={shared_root}", "data.max_train_samples=256", "train.epochs=1", "train.max_steps=4",
                "train.eval_test=false"]
        weights, skip = "checkpoints/last/model.safetensors", ()
    else:
        config = REPO / "configs/pretrain/vicreg_small.yaml"
        args = [f"data.root={shared_root}", "data.datasets=[pneumoniamnist,breastmnist]", "data.max_train_samples=128",
                "train.epochs=1", "train.max_steps=4", "monitor.knn_every=0"]
        # VICReg's projector starts Linear -> BatchNorm, which removes any shift of the embedding: the
        # body's final LayerNorm bias gets no true gradient, only float noise (measured: it alone
        # differed, by 1.4e-3; every other tensor by < 4e-5)
        weights, skip = "encoder.safetensors", ("norm.bias",)
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--config", str(config), *TINY, *args]
    subprocess.run([sys.executable, "-m", kind, *common, f"output_dir={one}"], check=True, env=ENV, cwd=REPO,
                   capture_output=True)
    for node in _two_nodes(kind, [*common, f"output_dir={two}"]):
        assert node.returncode == 0, node.stdout[-3000:]
    stats = json.loads((two / "train_stats.json").read_text())
    assert stats["num_processes"] == 2 and stats["steps"] == 4
    assert _max_diff(one / weights, two / weights, skip) < 1e-4


def test_a_global_batch_the_launch_cannot_split_stops_every_rank_with_one_line(shared_root, tmp_path):
    out = tmp_path / "run"
    args = ["--config", str(REPO / "configs/finetune/pneumoniamnist_small.yaml"), *TINY, f"data.root={shared_root}",
            "train.global_batch_size=33", f"output_dir={out}"]
    nodes = _two_nodes("finetune", args)
    for node in nodes:
        assert node.returncode != 0
        errors = [line for line in node.stdout.splitlines() if "finetune: error:" in line]
        assert len(errors) == 1 and "train.global_batch_size=33 does not split over the 2 processes" in errors[0]
    assert not out.exists()


def test_a_node_that_never_joins_ends_the_launch_with_a_message(tmp_path):
    """Node 1 of 2 is never started: node 0's launcher gives up after its rendezvous timeout."""
    cmd = _node(0, _free_port(), "finetune", ["--config", str(REPO / "configs/finetune/pneumoniamnist_small.yaml"),
                                               f"output_dir={tmp_path / 'run'}"])
    cmd[cmd.index("timeout=60")] = "timeout=5"  # the config's rendezvous timeout, shortened
    t0 = time.time()
    proc = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and time.time() - t0 < 60
    assert "1/2 clients joined" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_per_process_batch_of_a_global_batch():
    from medformer.config import ConfigError, TrainConfig
    from medformer.engine.trainer import per_process_batch

    assert per_process_batch(TrainConfig(batch_size=7), 4) == 7
    assert per_process_batch(TrainConfig(global_batch_size=64), 4) == 16
    with pytest.raises(ConfigError, match="multiple of 3"):
        per_process_batch(TrainConfig(global_batch_size=64), 3)
