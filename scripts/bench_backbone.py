"""Benchmark: which backbone? Runs the study configs/study/backbone.yaml in three stages: the new
default (medformer_small) on all four datasets at --seeds, then the other backbones on the 2D
datasets and on AdrenalMNIST3D (no ViT there) at --baseline-seeds, then optionally the multi-task
run of all four datasets. Writes the side-by-side table (AUC, ACC, balanced accuracy, MCC, img/s,
peak memory, published numbers) to docs/results/backbone_benchmark.{json,md}.

    python scripts/bench_backbone.py                     # the whole benchmark (about 2.5 h on 2 cores)
    python scripts/bench_backbone.py --baseline-seeds 0 --multitask-seeds   # about 75 min
    python scripts/bench_backbone.py --report-only       # tables from finished cells

Cells are normal fine-tunes, resumable: a rerun skips what is done.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from medformer.study.baselines import read_baselines

REPO = Path(__file__).resolve().parents[1]

STUDY = REPO / "configs" / "study" / "backbone.yaml"
MULTITASK = REPO / "configs" / "finetune" / "multitask_shared4_small.yaml"
BASELINES = REPO.parent / "shared" / "reference" / "published_baselines.csv"
DATASETS_2D = ["pneumoniamnist", "breastmnist", "retinamnist"]
BASELINES_2D = ["medformer_small_thesis", "vit_medformer_body", "resnet18_28"]
BASELINES_3D = ["medformer_small_thesis", "resnet18_28"]
METRICS = ("auc", "acc", "balanced_acc", "mcc")
# what the benchmark's rows are called for readers
LABELS = {"medformer_small": "medformer_small (new default)", "medformer_small_thesis": "medformer_small_thesis",
          "vit_medformer_body": "plain ViT, same body (timm)", "resnet18_28": "ResNet-18 (28 px stem; R3D-18 for 3D)"}


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def run_multitask(seeds: list[int], out: Path) -> None:
    """The multi-task config at each seed, two 1-thread runs at a time; finished runs are skipped."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    todo = [s for s in seeds if not (out / f"multitask_seed{s}" / "metrics.json").is_file()]
    for pair in (todo[i:i + 2] for i in range(0, len(todo), 2)):
        procs = [subprocess.Popen([sys.executable, "-m", "finetune", "--config", str(MULTITASK),
                                   "data.root=../shared/data/medmnist", f"seed={s}", "train.progress=false",
                                   f"output_dir={out / f'multitask_seed{s}'}"], cwd=REPO, env=env) for s in pair]
        for proc in procs:
            if proc.wait():
                raise SystemExit(f"multi-task run failed (exit {proc.returncode}): {' '.join(proc.args)}")


def cell_records(study_dir: Path) -> list[dict]:
    """One record per finished cell: model, dataset, seed, test metrics, throughput, memory, epochs."""
    records = []
    for cell in sorted((study_dir / "cells").glob("*")):
        if not (cell / "metrics.json").is_file():
            continue
        cfg = yaml.safe_load((cell / "config.yaml").read_text())
        flag = cfg["data"]["datasets"][0]
        metrics = json.loads((cell / "metrics.json").read_text())[flag]["test"]
        stats = json.loads((cell / "train_stats.json").read_text())
        records.append({
            "model": cfg["model"]["name"], "dataset": flag, "seed": cfg["seed"], **{m: metrics[m] for m in METRICS},
            "img_per_s": stats["train_samples_per_second"], "peak_mb": stats["peak_memory_mb"],
            "epochs": stats["epochs_completed"], "train_minutes": stats["train_seconds"] / 60,
        })
    return records


def multitask_records(out: Path) -> list[dict]:
    records = []
    for run_dir in sorted(out.glob("multitask_seed*")):
        if not (run_dir / "metrics.json").is_file():
            continue
        stats = json.loads((run_dir / "train_stats.json").read_text())
        for flag, m in json.loads((run_dir / "metrics.json").read_text()).items():
            records.append({"model": "medformer_small, multi-task (all four)", "dataset": flag,
                            "seed": int(run_dir.name.removeprefix("multitask_seed")),
                            **{k: m["test"][k] for k in METRICS}, "img_per_s": stats["train_samples_per_second"],
                            "peak_mb": stats["peak_memory_mb"], "epochs": stats["epochs_completed"],
                            "train_minutes": stats["train_seconds"] / 60})
    return records


def summarize(records: list[dict]) -> list[dict]:
    """Mean and sd over seeds per (dataset, model)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["model"]), []).append(r)
    rows = []
    for (flag, model), rs in sorted(groups.items()):
        row = {"dataset": flag, "model": model, "seeds": sorted(r["seed"] for r in rs)}
        for key in (*METRICS, "img_per_s", "peak_mb", "epochs", "train_minutes"):
            vals = [float(r[key]) for r in rs]
            row[key] = (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)
        rows.append(row)
    return rows


def published(flag: str) -> dict[str, str]:
    rows = [r for r in read_baselines(BASELINES) if r["dataset"] == flag and r["size"] == "28"]
    pick = lambda method: next((f"{r['auc']:.3f} / {r['acc']:.3f}" for r in rows if r["method"] == method), "–")  # noqa: E731
    resnet = "ResNet-18+3D" if flag.endswith("3d") else "ResNet-18 (28)"
    return {"resnet18": pick(resnet), "thesis": pick("Medformer-small single-task"), "resnet_name": resnet}


def markdown(rows: list[dict]) -> str:
    fmt = lambda v, d=3: f"{v[0]:.{d}f} ± {v[1]:.{d}f}"  # noqa: E731
    out = []
    for flag in dict.fromkeys(r["dataset"] for r in rows):
        pub = published(flag)
        out += [f"### {flag}", "", f"Published (test AUC / ACC): {pub['resnet_name']} {pub['resnet18']}; "
                f"Medformer-small in the thesis {pub['thesis']}.", "",
                "| model | seeds | test AUC | test ACC | balanced acc | MCC | train img/s | peak MB | epochs | train min |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["dataset"] == flag):
            out.append(f"| {LABELS.get(r['model'], r['model'])} | {len(r['seeds'])} | {fmt(r['auc'])} | {fmt(r['acc'])} | "
                       f"{fmt(r['balanced_acc'])} | {fmt(r['mcc'])} | {r['img_per_s'][0]:.0f} | {r['peak_mb'][0]:.0f} | "
                       f"{r['epochs'][0]:.0f} | {r['train_minutes'][0]:.1f} |")
        new = next((r for r in rows if r["dataset"] == flag and r["model"] == "medformer_small"), None)
        old = next((r for r in rows if r["dataset"] == flag and r["model"] == "medformer_small_thesis"), None)
        if new and old:
            out += ["", f"Train throughput, new default / thesis: {new['img_per_s'][0] / old['img_per_s'][0]:.2f}x."]
        out.append("")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "runs" / "bench_backbone"), help="study and run folders")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of medformer_small")
    p.add_argument("--baseline-seeds", nargs="*", type=int, default=[0, 1, 2], help="none: skip the other backbones")
    p.add_argument("--multitask-seeds", nargs="*", type=int, default=[0], help="none: skip the multi-task run")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "backbone_benchmark"))
    a = p.parse_args()
    out = Path(a.out)
    stages = {  # output folder: (datasets, models, seeds)
        "study_default": ([*DATASETS_2D, "adrenalmnist3d"], ["medformer_small"], a.seeds),
        "study_baselines_2d": (DATASETS_2D, BASELINES_2D, a.baseline_seeds),
        "study_baselines_3d": (["adrenalmnist3d"], BASELINES_3D, a.baseline_seeds),
    }
    listed = lambda xs: f"[{','.join(map(str, xs))}]"  # noqa: E731
    per_model = yaml.safe_load(STUDY.read_text())["model_finetune"]
    if not a.report_only:
        for name, (datasets, models, seeds) in stages.items():
            own = yaml.safe_dump({m: v for m, v in per_model.items() if m in models}, default_flow_style=True).strip()
            if seeds:
                run([sys.executable, "-m", "medformer.study", "--config", str(STUDY), f"output_dir={out / name}",
                     f"data.datasets={listed(datasets)}", f"models={listed(models)}", f"seeds={listed(seeds)}",
                     f"model_finetune={own}"])
        run_multitask(a.multitask_seeds, out)
    records = [r for name in stages for r in cell_records(out / name)] + multitask_records(out)
    rows = summarize(records)
    result = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "threads_per_run": 1, "runs_at_once": 2, "platform": platform.platform(),
                    "torch": torch.__version__, "cuda": torch.cuda.is_available()},
        "summary": rows, "runs": records,
    }
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results + ".json").write_text(json.dumps(result, indent=1))
    text = markdown(rows)
    Path(a.results + ".md").write_text(f"Command: `{result['command']}`\n\nMachine: {result['machine']}\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()
