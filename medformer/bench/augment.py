"""Benchmark: does augmentation keep up with the model? Training img/s of real runs with the views
made per sample in the DataLoader (`data.augment_on=loader`, the old path) against per batch on the
device (`data.augment_on=device`), and the model-only step (forward, backward, AdamW on one fixed
batch) of the same objective, side by side, in turns on one thread each.

    python scripts/bench_augment.py                       # fine-tune 2D and 3D, every SSL method
    python scripts/bench_augment.py --cases finetune-2d vicreg --steps 60

Writes docs/results/augment_speed.{json,md}. Target on CPU: the full loop at >= 0.9x the
model-only step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..config import DataConfig, ModelConfig, load_config
from ..config.pretrain import PretrainConfig
from ..data.bank import DeviceAugment, ImageBank
from ..data.domains import dataset_info
from ..data.loaders import train_dataset
from ..data.transforms import ViewConfig, eval_transform
from ..data.transforms.batched import batch_view_transform
from ..models.build import build_model
from ..objectives.ssl import build_ssl_objective
from ..objectives.supervised import SupervisedObjective

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO.parent / "shared" / "data" / "medmnist"
SSL = ["simclr", "mocov2", "mocov3", "byol", "barlowtwins", "vicreg"]
FINETUNE = {"finetune-2d": "pneumoniamnist", "finetune-3d": "adrenalmnist3d"}


def run_cli(case: str, path: str, steps: int, batch: int, out: Path) -> float:
    """Training img/s of a real run (train_stats.json: training seconds only, no evaluation)."""
    common = [f"data.root={ROOT}", f"data.augment_on={path}", f"train.max_steps={steps}", f"train.batch_size={batch}",
              "train.progress=false", f"output_dir={out}"]
    if case in FINETUNE:
        cmd = ["-m", "medformer", "finetune", "--config", str(REPO / "configs/finetune/pneumoniamnist_small.yaml"),
               f"data.datasets=[{FINETUNE[case]}]", "train.epochs=100", "train.eval_test=false", *common]  # max_steps ends it
    else:
        cmd = ["-m", "medformer", "pretrain", "--config", str(REPO / f"configs/pretrain/{case}_small.yaml"),
               "data.datasets=[pneumoniamnist]", "monitor.knn_every=0", "train.epochs=1", *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *cmd], check=True, env=env, cwd=REPO, capture_output=True)
    return json.loads((out / "train_stats.json").read_text())["train_samples_per_second"]


def model_only(case: str, steps: int, batch: int) -> float:
    """img/s of forward, backward and AdamW on one batch made once (no data loading, no augmentation)."""
    flag = FINETUNE.get(case, "pneumoniamnist")
    data = DataConfig(root=str(ROOT), datasets=[flag])
    bank = ImageBank(train_dataset(data, lambda dim: eval_transform(), 0), seed=0)
    model = build_model(ModelConfig(), [dataset_info(flag)], 28)
    if case in FINETUNE:
        objective, make = SupervisedObjective(model), DeviceAugment({"2d": None, "3d": None})
    else:
        ssl_cfg = load_config(PretrainConfig, REPO / f"configs/pretrain/{case}_small.yaml").ssl
        objective = build_ssl_objective(case, model, ssl_cfg)
        dim = dataset_info(flag).dim
        make = DeviceAugment(views={dim: [batch_view_transform(ViewConfig(), dim)] * 2})
    batch = make(bank.__getitems__(list(range(batch))))
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-4)
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        losses = objective(batch)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if hasattr(objective, "on_step_end"):
            objective.on_step_end(i, steps)
    return steps * len(batch["index"]) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="*", default=[*FINETUNE, *SSL])
    p.add_argument("--steps", type=int, default=40, help="training steps per run")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=1, help="old/new/model-only turns per case")
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "augment_speed"))
    a = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in a.cases:
            old, new, alone = [], [], []
            for r in range(a.rounds):
                old.append(run_cli(case, "loader", a.steps, a.batch, Path(tmp) / f"{case}-old-{r}"))
                new.append(run_cli(case, "device", a.steps, a.batch, Path(tmp) / f"{case}-new-{r}"))
                alone.append(model_only(case, min(a.steps, 20), a.batch))
            row = {"case": case, "loader_img_s": statistics.median(old), "device_img_s": statistics.median(new),
                   "model_only_img_s": statistics.median(alone)}
            row["device_vs_loader"] = row["device_img_s"] / row["loader_img_s"]
            row["loader_vs_model"] = row["loader_img_s"] / row["model_only_img_s"]
            row["device_vs_model"] = row["device_img_s"] / row["model_only_img_s"]
            rows.append(row)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    result = {"command": " ".join(["python", "scripts/bench_augment.py", *sys.argv[1:]]),
              "machine": {"cpus": os.cpu_count(), "threads": 1, "platform": platform.platform(),
                          "torch": torch.__version__, "cuda": torch.cuda.is_available()},
              "batch_size": a.batch, "steps": a.steps, "rows": rows}
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results + ".json").write_text(json.dumps(result, indent=1))
    lines = [f"Command: `{result['command']}`", "", f"Machine: {result['machine']}", "",
             f"Training img/s at batch {a.batch}, {a.steps} steps per run, one thread (pretraining: 2 views per image):",
             "", "| run | loader (per sample) | device (per batch) | model-only step | device / loader | loader / model | "
             "device / model |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['loader_img_s']:.0f} | {r['device_img_s']:.0f} | {r['model_only_img_s']:.0f} | "
              f"{r['device_vs_loader']:.2f} | {r['loader_vs_model']:.2f} | {r['device_vs_model']:.2f} |" for r in rows]
    Path(a.results + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

