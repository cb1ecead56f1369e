"""Benchmark: medformer_small supervised at 28 px on the shared MedMNIST files, several seeds,
plus one multi-task run over all of them. Writes docs/results/supervised_benchmark.{json,md}.

    python scripts/bench_supervised.py --root ../shared/data/medmnist --seeds 0 1 2

Each run is a normal `finetune` run (subprocess) with a per-run training-time budget.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
BASELINES = REPO.parent / "shared" / "reference" / "published_baselines.csv"
# epochs planned for a 10-minute run on one core (scaled by --minutes; the cap stops a run that is slower);
# breastmnist trains at ~3 s an epoch with batch 32
EPOCHS = {"pneumoniamnist": 20, "breastmnist": 150, "retinamnist": 40, "adrenalmnist3d": 30}
# BreastMNIST (546 train images) does not learn with 64-image batches (8 steps an epoch): test AUC
# 0.52 in 60 epochs; batch 32 at lr 5e-4 gave 0.736 (docs/benchmarks.md, BreastMNIST diagnosis)
RECIPES = {"breastmnist": ["train.batch_size=32", "train.lr=5e-4"]}


def finetune(args: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "finetune", "--config", str(REPO / "configs/finetune/pneumoniamnist_small.yaml"),
           *args, f"output_dir={out}", "train.progress=false"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    stats = json.loads((out / "train_stats.json").read_text())
    stats.pop("history", None)
    return {"metrics": json.loads((out / "metrics.json").read_text()), "stats": stats, "wall_seconds": wall,
            "command": " ".join(cmd[1:])}


def published(flags: list[str]) -> list[dict]:
    if not BASELINES.is_file():
        return []
    rows = [r for r in csv.DictReader(line for line in BASELINES.open() if not line.startswith("#"))]
    return [r for r in rows if r["dataset"] in flags and r["size"] == "28"]


def summarize(runs: list[dict], flag: str) -> dict:
    out = {}
    for key in ("auc", "acc"):
        vals = [r["metrics"][flag]["test"][key] for r in runs]
        out[key] = (float(np.mean(vals)), float(np.std(vals)))
    out["train_minutes"] = float(np.mean([r["stats"]["train_seconds"] for r in runs]) / 60)
    out["img_per_s"] = float(np.mean([r["stats"]["train_samples_per_second"] for r in runs]))
    out["peak_mb"] = float(np.max([r["stats"]["peak_memory_mb"] for r in runs]))
    return out


def markdown(result: dict) -> str:
    lines = [
        "| dataset | runs | test AUC (mean ± sd) | test ACC (mean ± sd) | train min/run | train img/s | peak MB | ResNet-18 (28) AUC / ACC | Medformer thesis small AUC / ACC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    refs = {(r["dataset"], r["method"]): r for r in result["published"]}
    for name, s in result["summary"].items():
        flag = name.split(" ")[0]
        r18 = refs.get((flag, "ResNet-18 (28)")) or refs.get((flag, "ResNet-18+3D"))
        th = refs.get((flag, "Medformer-small single-task"))
        fmt = lambda r: f"{float(r['auc']):.3f} / {float(r['acc']):.3f}" if r else "-"  # noqa: E731
        lines.append(
            f"| {name} | {s['n']} | {s['auc'][0]:.3f} ± {s['auc'][1]:.3f} | {s['acc'][0]:.3f} ± {s['acc'][1]:.3f} | "
            f"{s['train_minutes']:.1f} | {s['img_per_s']:.0f} | {s['peak_mb']:.0f} | {fmt(r18)} | {fmt(th)} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "medmnist"))
    p.add_argument("--datasets", nargs="+", default=list(EPOCHS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--minutes", type=float, default=10.0, help="planned training minutes per run (scales epochs)")
    p.add_argument("--cap-minutes", type=float, default=10.0, help="hard training-time cap per run")
    p.add_argument("--multitask-minutes", type=float, default=20.0)
    p.add_argument("--no-multitask", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="OMP/torch threads per run (default: torch's)")
    p.add_argument("--out", default=str(REPO / "runs" / "bench_supervised"))
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "supervised_benchmark"))
    a = p.parse_args()
    if a.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(a.threads)
    out = Path(a.out)
    common = [f"data.root={a.root}", "train.batch_size=64", "train.lr=1e-3", "train.warmup_epochs=1",
              f"train.max_minutes={a.cap_minutes}"]
    scale = a.minutes / 10.0
    runs: dict[str, list[dict]] = {}
    for flag in a.datasets:
        for seed in a.seeds:
            r = finetune([*common, *RECIPES.get(flag, []), f"data.datasets=[{flag}]",
                          f"train.epochs={max(1, round(EPOCHS.get(flag, 30) * scale))}", f"seed={seed}"],
                         out / f"{flag}_seed{seed}")
            runs.setdefault(flag, []).append(r)
            print(flag, seed, r["metrics"][flag]["test"], f"{r['wall_seconds']:.0f}s", flush=True)
    summary = {flag: {**summarize(rs, flag), "n": len(rs)} for flag, rs in runs.items()}
    if not a.no_multitask:
        mt_args = [*common[:-1], f"train.max_minutes={a.multitask_minutes}", f"data.datasets=[{','.join(a.datasets)}]",
                   f"train.epochs={max(1, round(15 * scale))}", "seed=0"]
        r = finetune(mt_args, out / "multitask_seed0")
        runs["multitask"] = [r]
        for flag in a.datasets:
            summary[f"{flag} (multi-task, all {len(a.datasets)})"] = {**summarize([r], flag), "n": 1}
    result = {
        "machine": {"cpus": os.cpu_count(), "threads_per_run": a.threads or torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__, "cuda": torch.cuda.is_available(),
                    "load_average_end": round(os.getloadavg()[0], 2)},
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "planned_minutes_per_run": a.minutes,
        "cap_minutes_per_run": a.cap_minutes,
        "summary": summary,
        "published": published(a.datasets),
        "runs": {k: [{kk: vv for kk, vv in r.items()} for r in v] for k, v in runs.items()},
    }
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results + ".json").write_text(json.dumps(result, indent=1))
    Path(a.results + ".md").write_text(f"Command: `{result['command']}`\n\nMachine: {result['machine']}\n\n{markdown(result)}\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
