"""The fine-tune entry point end to end: learning, outputs, resume, distributed, bad input."""

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
from safetensors.torch import load_file

from finetune.__main__ import main as finetune_main

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "finetune" / "pneumoniamnist_small.yaml")
TINY = ["model.overrides.depth=1", "train.progress=false", "train.log_every=1"]




def run(args: list[str]) -> int:
    return finetune_main(["--config", CONFIG, *TINY, *args])


def max_weight_diff(a: Path, b: Path, skip_key_biases: bool = False) -> float:
    """Largest absolute difference of two weight files. `skip_key_biases` leaves out the key half
    of attention kv biases: softmax does not depend on a key bias, so its gradient is float noise,
    which Adam scales to full-size steps that differ between runs of different float order."""
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()

    def part(k: str, w: torch.Tensor) -> torch.Tensor:
        return w[w.numel() // 2:] if skip_key_biases and k.endswith("attn.kv.bias") else w

    return max((part(k, wa[k]) - part(k, wb[k])).abs().max().item() for k in wa)


def history(out: Path) -> list[dict]:
    return json.loads((out / "train_stats.json").read_text())["history"]


def test_learns_on_real_data_and_writes_the_contract_outputs(shared_root, tmp_path):
    out = tmp_path / "run"
    assert run([f"data.root={shared_root}", "data.datasets=[pneumoniamnist]", "data.max_train_samples=1024",
                "train.epochs=3", "train.batch_size=32", "train.warmup_epochs=0.5",  # the recipe's lr 5e-4
                f"output_dir={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"pneumoniamnist"}
    for split in ("val", "test"):
        assert {"auc", "acc"} <= set(metrics["pneumoniamnist"][split])
    assert metrics["pneumoniamnist"]["test"]["auc"] > 0.65  # chance is 0.5; a tiny model after 96 steps
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["data"]["datasets"] == ["pneumoniamnist"] and cfg["train"]["epochs"] == 3
    assert (out / "best.safetensors").is_file()
    assert (out / "checkpoints" / "last" / "model.safetensors").is_file()
    assert list((out / "logs").rglob("events.out.tfevents*"))
    # the training loss went down: read it back from TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_dir = next(p.parent for p in (out / "logs").rglob("events.out.tfevents*") if "loss" in str(EventAccumulator(str(p.parent)).Reload().Tags()))
    losses = [e.value for e in EventAccumulator(str(event_dir)).Reload().Scalars("loss/total")]
    k = max(3, len(losses) // 5)
    assert sum(losses[-k:]) / k < sum(losses[:k]) / k


def test_multitask_mixed_2d_3d_reports_every_task(shared_root, tmp_path):
    flags = ["pneumoniamnist", "breastmnist", "retinamnist", "adrenalmnist3d"]
    out = tmp_path / "mt"
    assert run([f"data.root={shared_root}", f"data.datasets=[{','.join(flags)}]", "data.max_train_samples=48",
                "train.epochs=1", "train.batch_size=32", "train.eval_test=false", f"output_dir={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == set(flags)
    assert all(0 <= metrics[f]["val"]["acc"] <= 1 for f in flags)


def test_init_from_checkpoint_and_mismatched_checkpoint(shared_root, tmp_path, capsys):
    base = [f"data.root={shared_root}", "data.max_train_samples=64", "train.epochs=1", "train.batch_size=32",
            "train.eval_test=false"]
    assert run([*base, f"output_dir={tmp_path / 'a'}"]) == 0
    assert run([*base, f"output_dir={tmp_path / 'b'}", f"init={tmp_path / 'a'}"]) == 0
    report = json.loads((tmp_path / "b" / "init_report.json").read_text())
    assert report["missing"] == [] and report["unexpected"] == [] and report["matched"]
    # a checkpoint of another size does not fit: one-line error, exit 2
    assert run([*base, f"output_dir={tmp_path / 'c'}", f"init={tmp_path / 'a'}", "model.overrides.hidden_dim=64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "does not fit this model" in err


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epoch=3", "unknown config key 'train.epoch'"),
        ("train.epochs=abc", "config key 'train.epochs'"),
        ("data.datasets=[notamnist]", "unknown dataset flag 'notamnist'"),
        ("data.size=100", "size"),
        ("data.root=/nonexistent/medmnist", "data.root"),
        ("train.schedule_by=time", "set train.max_minutes"),
        ("train.schedule_by=epochs", "'train.schedule_by' must be one of steps, time"),
    ],
)
def test_bad_input_one_line_error_exit_2_no_outputs(tmp_path, capsys, override, message):
    out = tmp_path / "bad"
    assert run([override, f"output_dir={out}", "data.download=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(shared_root, tmp_path, capsys):
    out = tmp_path / "nan"
    code = run([f"data.root={shared_root}", "data.max_train_samples=256", "train.epochs=3", "train.batch_size=32",
                "train.lr=1e12", "train.grad_clip=0", "train.warmup_epochs=0", "train.schedule=constant",
                "train.checkpoint_every=1", f"output_dir={out}"])
    assert code == 2
    assert "non-finite" in capsys.readouterr().err
    state = json.loads((out / "checkpoints" / "last" / "trainer_state.json").read_text())
    weights = load_file(str(out / "checkpoints" / "last" / "model.safetensors"))
    assert state["step"] >= 1 and all(torch.isfinite(w).all() for w in weights.values())
    assert not (out / "metrics.json").exists()


def _cli(args: list[str], out: Path) -> list[str]:
    return [*args, "--config", CONFIG, *TINY, f"output_dir={out}"]


def test_resume_after_sigkill_equals_uninterrupted_run(shared_root, tmp_path):
    args = [f"data.root={shared_root}", "data.max_train_samples=320", "train.epochs=2", "train.batch_size=32",
            "train.checkpoint_every=7", "train.eval_test=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_cli([sys.executable, "-m", "finetune", *args], full), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_cli([sys.executable, "-m", "finetune", *args], killed), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = killed / "checkpoints" / "last" / "trainer_state.json"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill right after the mid-epoch checkpoint of step 14 (epoch 1)
        if state_file.is_file() and json.loads(state_file.read_text())["step"] >= 14:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads(state_file.read_text())
    assert state["step"] < 20 and state["batches_in_epoch"] > 0, state  # killed mid-epoch, before the end
    subprocess.run(_cli([sys.executable, "-m", "finetune", *args, f"resume={killed}"], killed), check=True, env=env,
                   capture_output=True)
    assert max_weight_diff(full / "checkpoints/last/model.safetensors", killed / "checkpoints/last/model.safetensors") == 0.0
    assert json.loads((killed / "metrics.json").read_text()) == json.loads((full / "metrics.json").read_text())


def test_two_processes_equal_one_process(shared_root, tmp_path):
    args = [f"data.root={shared_root}", "data.max_train_samples=256", "train.epochs=1", "train.max_steps=4",
            "train.eval_test=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_cli([sys.executable, "-m", "finetune", *args, "train.batch_size=32"], one), check=True, env=env, capture_output=True)
    subprocess.run(_cli([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "finetune",
                         *args, "train.batch_size=16"], two), check=True, env=env, capture_output=True)
    assert json.loads((two / "train_stats.json").read_text())["num_processes"] == 2
    assert max_weight_diff(one / "checkpoints/last/model.safetensors", two / "checkpoints/last/model.safetensors",
                           skip_key_biases=True) < 1e-4
    m1, m2 = (json.loads((d / "metrics.json").read_text())["pneumoniamnist"]["val"] for d in (one, two))
    assert m1["auc"] == pytest.approx(m2["auc"], abs=1e-3)


def test_all_18_medmnist_tasks_train_together_from_a_config(tmp_path):
    """Every MedMNIST flag (2D gray/RGB, 3D; binary, multi-class, multi-label, ordinal) in one
    multi-task run on synthetic npz files of the official layout: each gets its head and metrics."""
    import medmnist

    from medformer.data.synthetic import write_synthetic_npz

    flags = sorted(medmnist.INFO)
    assert len(flags) == 18
    for flag in flags:
        write_synthetic_npz(tmp_path / "data", flag, n=(8, 48, 48), seed=1)  # every class in val/test
    out = tmp_path / "run"
    assert run([f"data.root={tmp_path / 'data'}", f"data.datasets=[{','.join(flags)}]", "data.verify_md5=false",
                "train.epochs=1", "train.batch_size=16", f"output_dir={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics) == flags
    for flag in flags:
        for split in ("val", "test"):
            assert 0.0 <= metrics[flag][split]["acc"] <= 1.0 and 0.0 <= metrics[flag][split]["auc"] <= 1.0, flag
