"""Benchmark: which backbone? Runs the study configs/study/backbone.yaml in three stages: the new
default (medformer_small) on all four datasets at --seeds, then the other backbones on the 2D
datasets and on AdrenalMNIST3D (no ViT there) at --baseline-seeds, then optionally the multi-task
run of all four datasets, and optionally ResNet-18 (28) under MedMNIST v2's own protocol on
BreastMNIST (configs/finetune/medmnist_protocol_resnet18.yaml, about 45 minutes a seed). Writes the
side-by-side table (AUC, ACC, balanced accuracy, MCC, img/s, peak memory, published numbers) to
docs/results/backbone_benchmark.{json,md}.

    python scripts/bench_backbone.py                     # the whole benchmark (about 3 h on 2 cores)
    python scripts/bench_backbone.py --baseline-seeds 0 --multitask-seeds   # about 100 min
    python scripts/bench_backbone.py --report-only       # tables from finished cells
    python scripts/bench_backbone.py --seeds --baseline-seeds --multitask-seeds --medmnist-protocol-seeds 0 1 2
    python scripts/bench_backbone.py --seeds --baseline-seeds --size64-root DIR [--size64-no-md5]
        # medformer_small at data.size=64 on each {flag}_64.npz in DIR (10 minutes each, time schedule)

Cells are normal fine-tunes, resumable: a rerun skips what is done. The tables also keep the rows of
the earlier results file that no run here touches (same model and dataset); --fresh drops them.
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

from ..study.baselines import read_baselines

REPO = Path(__file__).resolve().parents[2]

STUDY = REPO / "configs" / "study" / "backbone.yaml"
MULTITASK = REPO / "configs" / "finetune" / "multitask_shared4_small.yaml"
SINGLE = REPO / "configs" / "finetune" / "pneumoniamnist_small.yaml"
PROTOCOL = REPO / "configs" / "finetune" / "medmnist_protocol_resnet18.yaml"
BASELINES = REPO.parent / "shared" / "reference" / "published_baselines.csv"
DATASETS_2D = ["pneumoniamnist", "breastmnist", "retinamnist"]
BASELINES_2D = ["medformer_small_thesis", "vit_medformer_body", "resnet18_28"]
BASELINES_3D = ["medformer_small_thesis", "resnet18_28"]
METRICS = ("auc", "acc", "balanced_acc", "mcc")
# what the benchmark's rows are called for readers
LABELS = {"medformer_small": "medformer_small (new default)", "medformer_small_thesis": "medformer_small_thesis",
          "medformer_small_conv3d": "medformer_small_conv3d (conv stem in 3D too)",
          "medformer_small_stem2": "medformer_small_stem2 (previous default: two stride-2 stem convs)",
          "vit_medformer_body": "plain ViT, same body (timm)", "resnet18_28": "ResNet-18 (28 px stem; R3D-18 for 3D)",
          "medmnist_protocol": "ResNet-18 (28), MedMNIST's protocol (100 epochs, Adam, batch 128, no augmentation)"}


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def run_seeds(config: Path, seeds: list[int], out: Path, name: str) -> None:
    """A fine-tune config at each seed into out/{name}_seed{s}, two 1-thread runs at a time; finished
    runs are skipped."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    todo = [s for s in seeds if not (out / f"{name}_seed{s}" / "metrics.json").is_file()]
    for pair in (todo[i:i + 2] for i in range(0, len(todo), 2)):
        procs = [subprocess.Popen([sys.executable, "-m", "finetune", "--config", str(config),
                                   "data.root=../shared/data/medmnist", f"seed={s}", "train.progress=false",
                                   f"output_dir={out / f'{name}_seed{s}'}"], cwd=REPO, env=env) for s in pair]
        for proc in procs:
            if proc.wait():
                raise SystemExit(f"{name} run failed (exit {proc.returncode}): {' '.join(proc.args)}")


def run_size64(root: Path, verify_md5: bool, out: Path) -> None:
    """medformer_small at 64 px / 64³ on every `{flag}_64.npz` in `root`, one after another, one thread:
    does it learn, and what peak memory does it need? 10 training minutes, the cosine over them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for npz in sorted(root.glob("*_64.npz")):
        flag = npz.name.removesuffix("_64.npz")
        if (out / f"size64_{flag}" / "metrics.json").is_file():
            continue
        run_dir = out / f"size64_{flag}"
        cmd = [sys.executable, "-m", "finetune", "--config", str(SINGLE), f"data.root={root}",
               f"data.datasets=[{flag}]", "data.size=64", f"data.verify_md5={str(verify_md5).lower()}",
               "train.max_minutes=10", "train.schedule_by=time", "train.progress=false", f"output_dir={run_dir}"]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO, env=env)


def run_records(run_dir: Path, model: str, seed: int) -> list[dict]:
    """Test metrics of a plain fine-tune run folder, one record per dataset."""
    if not (run_dir / "metrics.json").is_file():
        return []
    stats = json.loads((run_dir / "train_stats.json").read_text())
    return [{"model": model, "dataset": flag, "seed": seed, **{k: m["test"][k] for k in METRICS},
             "img_per_s": stats["train_samples_per_second"], "peak_mb": stats["peak_memory_mb"],
             "epochs": stats["epochs_completed"], "train_minutes": stats["train_seconds"] / 60}
            for flag, m in json.loads((run_dir / "metrics.json").read_text()).items()]


def cell_records(study_dir: Path) -> list[dict]:
    """One record per finished study cell."""
    records = []
    for cell in sorted((study_dir / "cells").glob("*")):
        if (cell / "config.yaml").is_file():
            cfg = yaml.safe_load((cell / "config.yaml").read_text())
            records += run_records(cell, cfg["model"]["name"], cfg["seed"])
    return records


def seed_records(out: Path, name: str, model: str) -> list[dict]:
    """The records of run_seeds(..., out, name) runs, under the row name `model`."""
    return [r for d in sorted(out.glob(f"{name}_seed*"))
            for r in run_records(d, model, int(d.name.removeprefix(f"{name}_seed")))]


def size64_records(out: Path) -> list[dict]:
    return [{**r, "dataset": f"{r['dataset']} at 64"} for d in sorted(out.glob("size64_*"))
            for r in run_records(d, "medformer_small", 0)]


def with_previous(records: list[dict], results_json: Path) -> list[dict]:
    """`records`, then the rows (model and dataset) of an earlier results file that no fresh run
    touches: cell folders need not all live on one machine or in one checkout, and a row's seeds
    all come from one recipe."""
    if not results_json.is_file():
        return records
    key = lambda r: (r["model"], r["dataset"])  # noqa: E731
    fresh = {key(r) for r in records}
    return records + [r for r in json.loads(results_json.read_text())["runs"] if key(r) not in fresh]


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
    out = []
    for flag in dict.fromkeys(r["dataset"] for r in rows):
        pub = published(flag)
        source = ("One run, the cosine over its training minutes (train min); no published numbers at this size."
                  if flag.endswith(" at 64") else f"Published (test AUC / ACC): {pub['resnet_name']} "
                  f"{pub['resnet18']}; Medformer-small in the thesis {pub['thesis']}.")
        out += [f"### {flag}", "", source, "",
                "| model | seeds | test AUC | test ACC | balanced acc | MCC | train img/s | peak MB | epochs | train min |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["dataset"] == flag):
            many = len(r["seeds"]) > 1
            fmt = lambda v, many=many: f"{v[0]:.3f} ± {v[1]:.3f}" if many else f"{v[0]:.3f}"  # noqa: E731
            out.append(f"| {LABELS.get(r['model'], r['model'])} | {len(r['seeds'])} | {fmt(r['auc'])} | {fmt(r['acc'])} | "
                       f"{fmt(r['balanced_acc'])} | {fmt(r['mcc'])} | {r['img_per_s'][0]:.0f} | {r['peak_mb'][0]:.0f} | "
                       f"{r['epochs'][0]:.0f} | {r['train_minutes'][0]:.1f} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "runs" / "bench_backbone"), help="study and run folders")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2], help="seeds of medformer_small")
    p.add_argument("--baseline-seeds", nargs="*", type=int, default=[0, 1, 2], help="none: skip the other backbones")
    p.add_argument("--multitask-seeds", nargs="*", type=int, default=[0], help="none: skip the multi-task run")
    p.add_argument("--medmnist-protocol-seeds", nargs="*", type=int, default=[],
                   help="ResNet-18 (28) under MedMNIST's protocol on BreastMNIST at these seeds (none by default)")
    p.add_argument("--size64-root", type=Path, help="folder of {flag}_64.npz files to train at 64 px / 64³")
    p.add_argument("--size64-no-md5", action="store_true", help="files that are not the official ones")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--fresh", action="store_true", help="drop the rows of the earlier results file that no run here touches")
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
        run_seeds(MULTITASK, a.multitask_seeds, out, "multitask")
        run_seeds(PROTOCOL, a.medmnist_protocol_seeds, out, "medmnist_protocol")
        if a.size64_root:
            run_size64(a.size64_root, not a.size64_no_md5, out)
    records = [*(r for name in stages for r in cell_records(out / name)),
               *seed_records(out, "multitask", "medformer_small, multi-task (all four)"),
               *seed_records(out, "medmnist_protocol", "medmnist_protocol"), *size64_records(out)]
    if not a.fresh:
        records = with_previous(records, Path(a.results + ".json"))
    rows = summarize(records)
    result = {
        "command": " ".join(["python", "scripts/bench_backbone.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "threads_per_run": 1, "runs_at_once": 2, "platform": platform.platform(),
                    "torch": torch.__version__, "cuda": torch.cuda.is_available()},
        "summary": rows, "runs": records,
    }
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results + ".json").write_text(json.dumps(result, indent=1))
    text = markdown(rows)
    Path(a.results + ".md").write_text(f"Command: `{result['command']}`\n\nMachine: {result['machine']}\n\n{text}\n")
    print(text)

