"""Pretraining benchmark on CPU: every method (the SSL methods, pseudo-label classification,
VICReg + pseudo-labels, the pretext tasks and VICReg + MAE) pretrains medformer_small for the same time budget on the unlabeled train
splits of four MedMNIST datasets, then linear probe / kNN per dataset vs the random-init encoder,
and fine-tuning with 10% / 100% labels vs scratch.

    python scripts/bench_ssl.py --minutes-per-method 2 --methods simclr vicreg
    python scripts/bench_ssl.py --methods vicreg pseudolabel vicreg+pseudolabel --name pseudolabel_benchmark \
        --finetune-datasets pneumoniamnist breastmnist retinamnist adrenalmnist3d --fractions 0.1
    python scripts/bench_ssl.py --methods vicreg mae rotation jigsaw inpainting vicreg+mae --name pretext_benchmark

Pseudo-label methods first cluster the pool (`medformer pseudolabel`, all train images) and report
its cluster quality.

Writes docs/results/ssl_benchmark.json and docs/results/ssl_benchmark.md (with the command, the
machine, throughput per method and published numbers for the same datasets).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate.state import AcceleratorState, GradientState
from threadpoolctl import threadpool_limits

from ..config import FinetuneConfig, load_config
from ..config.pretrain import PretrainConfig
from ..config.pseudolabel import PseudoLabelConfig
from ..eval.probe import C_GRID, run_probe, summarize_test
from ..objectives.ssl import SSL_METHODS
from ..runs.finetune import run_finetune
from ..runs.pretrain import run_pretrain
from ..runs.pseudolabel import run_pseudolabel
from ..study.baselines import read_baselines

REPO = Path(__file__).resolve().parents[2]
DATASETS = ["pneumoniamnist", "breastmnist", "retinamnist", "adrenalmnist3d"]
PUBLISHED = REPO.parent / "shared" / "reference" / "published_baselines.csv"
PSEUDOLABEL_METHODS = ("pseudolabel", "vicreg+pseudolabel")
PRETEXT_METHODS = ("mae", "rotation", "jigsaw", "inpainting", "vicreg+mae")  # configs/pretrain/<name>_small.yaml
METHODS = [*sorted(SSL_METHODS), *PSEUDOLABEL_METHODS, *PRETEXT_METHODS]


def limit_threads(n: int) -> None:
    """At most `n` threads for torch and for the BLAS/OpenMP pools of numpy and scikit-learn (the
    probes), so two benchmarks side by side on two cores do not slow each other's timed pretraining."""
    torch.set_num_threads(n)
    threadpool_limits(n)


def reset_accelerate() -> None:
    """Each run builds its own Accelerator; the singleton state must not leak between runs."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def pretrain_config(method: str, root: str, out: Path, extra: list[str]) -> PretrainConfig:
    config = REPO / "configs" / "pretrain" / f"{method.replace('+', '_')}_small.yaml"
    return load_config(PretrainConfig, config, [
        f"data.root={root}", f"data.datasets=[{','.join(DATASETS)}]", f"output_dir={out}",
        "train.progress=false", "monitor.knn_every=0", *extra,
    ])


def seconds_per_step(method: str, root: str, extra: list[str]) -> float:
    """Measured on a short run (6 steps, the first one excluded by the Trainer's own timer)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = pretrain_config(method, root, Path(tmp) / "calib", [*extra, "train.max_steps=6"])
        run_pretrain(cfg)
        reset_accelerate()
        stats = json.loads((Path(tmp) / "calib" / "train_stats.json").read_text())
    return stats["train_seconds"] / max(1, stats["steps"])


def pretrain(method: str, root: str, out: Path, minutes: float, extra: list[str]) -> dict:
    """Pretrain for `minutes` of training time: LR and momentum schedules follow the elapsed share
    of the budget (train.schedule_by=time), so every method warms up for its first 10% and anneals
    by its last step whatever its speed; a throughput calibration only sizes the nominal step count."""
    per_step = seconds_per_step(method, root, extra)
    steps = max(10, int(minutes * 60 / per_step))
    cfg = pretrain_config(method, root, out, extra)
    sizes = _train_sizes(root)
    steps_per_epoch = sum(sizes[f] for f in cfg.data.datasets) // cfg.train.batch_size  # --set may narrow the pool
    epochs = math.ceil(steps / steps_per_epoch)
    cfg = pretrain_config(method, root, out, [
        *extra, f"train.max_steps={steps}", f"train.epochs={epochs}", f"train.max_minutes={minutes}",
        "train.schedule_by=time", f"train.warmup_epochs={0.1 * steps / steps_per_epoch:.4f}",
    ])
    t0 = time.perf_counter()
    metrics = run_pretrain(cfg)
    reset_accelerate()
    card = json.loads((out / "model_card.json").read_text())
    return {
        "nominal_steps": steps, "steps": card["steps"], "samples_seen": card["samples_seen"],
        "train_seconds": card["train_seconds"], "wall_seconds": round(time.perf_counter() - t0, 1),
        "img_per_s": card["samples_per_second"], "stopped_by_time_budget": card["stopped_by_time_budget"],
        "final_loss": metrics["final_loss"], "embedding": metrics["embedding"],
        "lr": cfg.train.lr, "batch_size": cfg.train.batch_size, "batch_by_dataset": cfg.data.batch_by_dataset,
        "predictor_lr_scale": getattr(cfg.ssl.settings, "predictor_lr_scale", 1.0),
        "momentum": getattr(cfg.ssl.settings, "momentum", None),
    }


def cluster_pool(root: str, out: Path) -> dict:
    """Pseudo-labels for every train image of the pool (random-init encoder features, k at the elbow)."""
    cfg = load_config(PseudoLabelConfig, REPO / "configs" / "pseudolabel" / "medmnist_pool_small.yaml", [
        f"data.root={root}", f"data.datasets=[{','.join(DATASETS)}]", "data.max_samples_per_dataset=null",
        f"output_dir={out}",
    ])
    t0 = time.perf_counter()
    metrics = run_pseudolabel(cfg)
    return {**metrics, "wall_seconds": round(time.perf_counter() - t0, 1), "folder": str(out)}


def _train_sizes(root: str) -> dict[str, int]:
    import numpy as np

    return {f: len(np.load(Path(root) / f"{f}.npz", mmap_mode="r")["train_labels"]) for f in DATASETS}


def probe(init: str, root: str, max_train: int | None, seed: int = 0) -> dict:
    """Test metrics of both probes; `seed` draws the random-init encoder (init=scratch)."""
    res = run_probe(init, DATASETS, root=root, splits=("test",), max_train=max_train, batch_size=256, seed=seed)
    return summarize_test(res, DATASETS)


def finetune(init: str, flag: str, fraction: float, root: str, out: Path, steps: int, seed: int) -> dict:
    """Fine-tune on one dataset for the same number of steps at every label fraction (batch
    shrinks for small fractions so an epoch keeps >= 8 steps); test metrics of the best-val epoch."""
    n_labeled = round(fraction * _train_sizes(root)[flag])
    batch = max(8, min(128, n_labeled // 8))
    epochs = math.ceil(steps / max(1, n_labeled // batch))
    cfg = load_config(FinetuneConfig, REPO / "configs" / "finetune" / "pneumoniamnist_small.yaml", [
        f"data.root={root}", f"data.datasets=[{flag}]", f"data.label_fraction={fraction}", f"init={init}",
        f"output_dir={out}",
        f"train.epochs={epochs}", f"train.max_steps={steps}", f"train.batch_size={batch}",
        "train.progress=false", "train.warmup_epochs=0.3", f"seed={seed}",
    ])
    t0 = time.perf_counter()
    metrics = run_finetune(cfg)
    reset_accelerate()
    test = metrics[flag]["test"]
    return {"seed": seed, "auc": test["auc"], "acc": test["acc"], "steps": steps, "epochs": epochs, "batch_size": batch,
            "labeled": n_labeled, "wall_seconds": round(time.perf_counter() - t0, 1)}


def seed_summary(runs: list[dict]) -> dict:
    """Mean and std over seeds of one (init, dataset, fraction), with the runs."""
    import numpy as np

    auc, acc = np.array([r["auc"] for r in runs]), np.array([r["acc"] for r in runs])
    return {"auc": float(auc.mean()), "auc_std": float(auc.std()), "acc": float(acc.mean()), "acc_std": float(acc.std()),
            "runs": sorted(runs, key=lambda r: r["seed"])}


def earlier_runs(reports: list[dict], args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """Pretraining, probe and fine-tuning results of earlier reports made with the same budget and
    settings (--resume), so a rerun with more seeds or methods only computes what is new."""
    pretrain, probes, runs = {}, {}, {}
    for r in reports:
        same = {"minutes_per_method": args.minutes_per_method, "probe_max_train": args.probe_max_train,
                "finetune_steps": args.finetune_steps, "seed": args.seed}
        bad = [k for k, v in same.items() if r.get(k, 0) != v]  # reports before --seed were seed 0
        if bad:
            raise SystemExit(f"--resume: {bad[0]} of that report is {r.get(bad[0], 0)}, this run uses {same[bad[0]]}; "
                             "resume only from a report made with the same settings")
        pretrain.update(r["pretrain"])
        probes.update(r["probe"])
        runs.update(finetune_runs(r))
    return pretrain, probes, runs


def finetune_runs(report: dict) -> dict[tuple[str, str, str, int], dict]:
    """Every fine-tuning run of a report by (init, dataset, fraction, seed)."""
    runs = {}
    for init, per_flag in report["finetune"].items():
        for flag, per_frac in per_flag.items():
            for frac, res in per_frac.items():
                for run in res.get("runs", [{**res, "seed": 0}]):  # older reports: one seed-0 run
                    runs[(init, flag, frac, run["seed"])] = run
    return runs


def published() -> list[dict]:
    return [r for r in read_baselines(PUBLISHED) if r["dataset"] in DATASETS]


def fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def finetune_cell(res: dict, n_seeds: int) -> str:
    if n_seeds > 1:
        return f"{fmt(res['auc'])} ± {fmt(res['auc_std'])} / {fmt(res['acc'])}"
    return f"{fmt(res['auc'])} / {fmt(res['acc'])}"


def markdown(report: dict) -> str:
    methods = list(report["pretrain"])
    inits = [*(b for b in ("pixels", "random") if b in report["probe"]), *methods]
    lines = [
        "# Pretraining benchmark (CPU)",
        "",
        f"Command: `{report['command']}`",
        *[f"Resumed from (pretraining, probes and fine-tunes reused): `{c}`" for c in report.get("resumed_from", [])],
        *([f"Scratch fine-tunes reused from: `{report['scratch_from']}`"] if report.get("scratch_from") else []),
        "",
        f"Machine: {report['machine']['cpu_count']} CPUs ({report['machine']['torch_threads']} torch threads), "
        f"{report['machine']['platform']}, Python {report['machine']['python']}, torch {report['machine']['torch']}; "
        f"written {report['written']}. Total wall time {report['wall_minutes']:.1f} min. Load average "
        f"{report['machine'].get('load_average_start', 'n/a')} at the start, {report['machine'].get('load_average_end', 'n/a')} "
        "at the end (other jobs on the same cores slow every timing down).",
        "",
        f"Each method: medformer_small pretrained for {report['minutes_per_method']} min of training on the unlabeled "
        f"train splits of {', '.join(DATASETS)} (28 px; 2D and 3D mixed in each batch"
        f"{'; LR and momentum schedules by elapsed time' if report.get('schedule_by') == 'time' else ''}"
        f"{'; extra overrides ' + ' '.join(report['pretrain_overrides']) if report.get('pretrain_overrides') else ''}). Probes: frozen `encode()` "
        f"features, train split{' (first ' + str(report['probe_max_train']) + ' per dataset)' if report['probe_max_train'] else ''} "
        "-> test split; linear = logistic regression on standardized features (L2 strength C chosen per encoder and "
        f"dataset on the val split from {report.get('probe_C_grid', '1e-3..10')}), kNN = cosine, k=20, T=0.07. "
        "AUC/ACC as medmnist.Evaluator. `pixels`: the same probes on the flattened images (no encoder); `random`: "
        "the random-init encoder.",
        "",
        "## Pretraining",
        "",
        "| method | steps | samples seen | train s | samples/s | batch | lr | final loss terms | embedding std | eff. rank |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, r in report["pretrain"].items():
        loss = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in r["final_loss"].items())
        lines.append(
            f"| {m} | {r['steps']} | {r['samples_seen']} | {r['train_seconds']} | {r['img_per_s']} | {r['batch_size']} | "
            f"{r['lr']} | {loss} | {fmt(r['embedding'].get('embedding/std'))} | {fmt(r['embedding'].get('embedding/effective_rank'))} |"
        )
    for kind in ("linear", "knn"):
        lines += ["", f"## {'Linear probe' if kind == 'linear' else 'kNN'}: test AUC / ACC", "",
                  "| dataset | " + " | ".join(inits) + " |", "|---|" + "---|" * len(inits)]
        for flag in DATASETS:
            cells = [f"{fmt(report['probe'][i][flag][kind]['auc'])} / {fmt(report['probe'][i][flag][kind]['acc'])}" for i in inits]
            lines.append(f"| {flag} | " + " | ".join(cells) + " |")
    if report.get("pool"):
        q = report["pool"]
        lines += ["", "## Pseudo-labels of the pool", "",
                  f"{q['n_samples']} train images, k={q['chosen_k']} at the elbow, {q['n_labels']} labels kept "
                  f"({q['n_dropped_samples']} images in dropped clusters). Against dataset of origin: homogeneity "
                  f"{q['quality']['homogeneity_dataset']:.3f}, NMI {q['quality']['nmi_dataset']:.3f}, harmonic mean "
                  f"{q['quality']['harmonic_mean']:.3f} (shuffled labels: {q['shuffled_baseline_harmonic_mean']:.3f}); "
                  f"intra-cluster cosine distance {q['quality']['intra_cosine_distance']:.3f}. {q['wall_seconds']} s."]
    for flag in report.get("finetune_datasets", []):
        inits_ft = list(report["finetune"])
        seeds = report.get("finetune_seeds", [0])
        lines += ["", f"## Fine-tuning {flag} ({report['finetune_steps']} steps at each label fraction, "
                  f"best-val epoch): test AUC / ACC{f', mean ± std over seeds {seeds}' if len(seeds) > 1 else ''}", "",
                  "| labels | " + " | ".join(inits_ft) + " |", "|---|" + "---|" * len(inits_ft)]
        for frac in report["fractions"]:
            cells = [finetune_cell(report["finetune"][i][flag][frac], len(seeds)) if frac in report["finetune"][i][flag]
                     else "-" for i in inits_ft]
            lines.append(f"| {float(frac):.0%} | " + " | ".join(cells) + " |")
    lines += ["", "## Published test results (same datasets, fully supervised unless noted)", "",
              "| dataset | size | method | AUC | ACC | source |", "|---|---|---|---|---|---|"]
    for r in report["published"]:
        lines.append(f"| {r['dataset']} | {r['size']} | {r['method']} | {fmt(r['auc'])} | {fmt(r['acc'])} | {r['source']}{' (' + r['note'] + ')' if r['note'] else ''} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes-per-method", type=float, default=30.0, help="pretraining time budget per method")
    parser.add_argument("--methods", nargs="*", default=sorted(SSL_METHODS), choices=METHODS,
                        help="none: only the baseline (random-init probe, scratch fine-tunes)")
    parser.add_argument("--seed", type=int, default=0,
                        help="pretraining seed, and the seed that draws the random-init baseline encoder")
    parser.add_argument("--name", default="ssl_benchmark", help="results file stem in --out")
    parser.add_argument("--finetune-datasets", nargs="+", default=["pneumoniamnist"], choices=DATASETS)
    parser.add_argument("--root", default=os.environ.get("MEDMNIST_ROOT", str(REPO.parent / "shared" / "data" / "medmnist")))
    parser.add_argument("--work-dir", default="runs/bench_ssl", help="pretrain/finetune run folders")
    parser.add_argument("--out", default=str(REPO / "docs" / "results"), help="folder for ssl_benchmark.{json,md}")
    parser.add_argument("--probe-max-train", type=int, default=None, help="cap the probe's train split per dataset")
    parser.add_argument("--finetune-steps", type=int, default=500, help="per fine-tuning run; 0 skips them")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--method-fractions", type=float, nargs="+", default=None,
                        help="label fractions fine-tuned from the pretrained methods (default: --fractions; "
                             "scratch always runs --fractions)")
    parser.add_argument("--finetune-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--resume", nargs="+", default=[], metavar="JSON",
                        help="reuse the pretraining, probes and fine-tunes of earlier reports of this benchmark "
                             "(same budget and settings, same --work-dir)")
    parser.add_argument("--reuse-scratch", default=None, metavar="JSON",
                        help="reuse only the scratch fine-tunes of an earlier report (same --finetune-steps): they "
                             "depend on no pretraining")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and BLAS threads (default: all cores); 1 for two runs side by side on two cores")
    parser.add_argument("--set", nargs="*", default=[], help="extra pretrain overrides, e.g. train.batch_size=64")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the random-init probe and scratch fine-tuning (another run has them)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="only merge the reports of runs split across processes into --name")
    args = parser.parse_args(argv)
    if args.merge:
        return write_report(merge_reports([json.loads(Path(f).read_text()) for f in args.merge]), Path(args.out), args.name)
    if args.threads:
        limit_threads(args.threads)
    t_start = time.perf_counter()
    work = Path(args.work_dir)
    report: dict = {
        "command": " ".join(["python", "scripts/bench_ssl.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "platform": platform.platform(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "load_average_start": os.getloadavg()[0]},
        "minutes_per_method": args.minutes_per_method, "probe_max_train": args.probe_max_train,
        "datasets": DATASETS, "pretrain": {}, "probe": {}, "finetune": {}, "finetune_steps": args.finetune_steps,
        "finetune_datasets": args.finetune_datasets if args.finetune_steps else [],
        "fractions": [str(f) for f in args.fractions], "finetune_seeds": args.finetune_seeds,
        "schedule_by": "time", "seed": args.seed, "pretrain_overrides": args.set, "probe_C_grid": ", ".join(f"{c:g}" for c in C_GRID),
    }
    earlier = [json.loads(Path(f).read_text()) for f in args.resume]
    done_pretrain, done_probes, done_runs = earlier_runs(earlier, args)
    if args.reuse_scratch:
        scratch = json.loads(Path(args.reuse_scratch).read_text())
        if scratch["finetune_steps"] != args.finetune_steps:
            raise SystemExit(f"--reuse-scratch: that report fine-tuned for {scratch['finetune_steps']} steps, "
                             f"this run uses {args.finetune_steps}")
        done_runs.update({key: run for key, run in finetune_runs(scratch).items() if key[0] == "scratch"})
        report["scratch_from"] = scratch["command"]
    report["resumed_from"] = [c for r in earlier for c in [*r.get("resumed_from", []), r["command"]]]
    progress = Path(args.out) / f"{args.name}.partial.json"

    def save_progress() -> None:
        """Write what is done so far, so an interrupted run goes on with --resume <name>.partial.json."""
        progress.parent.mkdir(parents=True, exist_ok=True)
        progress.write_text(json.dumps({**report, "wall_minutes": (time.perf_counter() - t_start) / 60}, default=float))

    if any(m in PSEUDOLABEL_METHODS and m not in done_pretrain for m in args.methods):
        print("[bench] clustering the pool into pseudo-labels", flush=True)
        report["pool"] = cluster_pool(args.root, work / "pseudolabels")
    for method in args.methods:
        if method in done_pretrain:
            report["pretrain"][method] = done_pretrain[method]
            continue
        print(f"[bench] pretraining {method} for {args.minutes_per_method} min", flush=True)
        extra = [*args.set, f"seed={args.seed}", *([f"pseudolabel.labels={work / 'pseudolabels'}"] if method in PSEUDOLABEL_METHODS else [])]
        report["pretrain"][method] = pretrain(method, args.root, work / method, args.minutes_per_method, extra)
        print(f"[bench] {method}: {report['pretrain'][method]}", flush=True)
        save_progress()
    baseline = [] if args.no_baseline else [("pixels", "pixels"), ("random", "scratch")]
    for init, path in [*baseline, *[(m, str(work / m)) for m in args.methods]]:
        if init not in done_probes:
            print(f"[bench] probing {init}", flush=True)
        report["probe"][init] = done_probes.get(init) or probe(path, args.root, args.probe_max_train, args.seed)
        save_progress()
    if args.finetune_steps:
        baseline = [] if args.no_baseline else [("scratch", "scratch")]
        for init, path in [*baseline, *[(m, str(work / m)) for m in args.methods]]:
            report["finetune"][init] = {}
            for flag in args.finetune_datasets:
                report["finetune"][init][flag] = {}
                for frac in args.fractions if init == "scratch" else args.method_fractions or args.fractions:
                    runs = []
                    for seed in args.finetune_seeds:
                        if (init, flag, str(frac), seed) in done_runs:
                            runs.append(done_runs[(init, flag, str(frac), seed)])
                            continue
                        print(f"[bench] fine-tuning {flag} from {init} with {frac:.0%} labels, seed {seed}", flush=True)
                        folder = work / f"ft_{init}_{flag}_{frac}{f'_s{seed}' if seed else ''}"
                        runs.append(finetune(path, flag, frac, args.root, folder, args.finetune_steps, seed))
                        report["finetune"][init][flag][str(frac)] = {"runs": runs}
                        save_progress()
                    report["finetune"][init][flag][str(frac)] = seed_summary(runs)
    report["published"] = published()
    report["wall_minutes"] = (time.perf_counter() - t_start) / 60
    report["machine"]["load_average_end"] = os.getloadavg()[0]
    report["written"] = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    write_report(report, Path(args.out), args.name)
    progress.unlink(missing_ok=True)
    return 0


def write_report(report: dict, out: Path, name: str, render: Callable[[dict], str] = markdown) -> int:
    """<out>/<name>.json and <name>.md (the report rendered by `render`), echoed to stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, default=float))
    (out / f"{name}.md").write_text(render(report))
    print(render(report))
    return 0


def merge_reports(reports: list[dict]) -> dict:
    """One report of runs that split the methods across processes side by side (run with the same
    budget and settings; the one without --no-baseline holds the random/scratch baseline)."""
    merged = {**reports[0], "command": " ; ".join(r["command"] for r in reports) + " (side by side)",
              "wall_minutes": max(r["wall_minutes"] for r in reports)}
    for key in ("minutes_per_method", "finetune_steps", "fractions", "probe_max_train", "finetune_seeds", "seed"):
        if any(r.get(key, 0) != merged.get(key, 0) for r in reports):  # only "seed" can be missing: seed 0
            raise ValueError(f"cannot merge runs with different {key}: {[r.get(key) for r in reports]}")
    order = ["pixels", "random", "scratch", *METHODS]  # baselines first, then the methods in METHODS order
    for key in ("pretrain", "probe", "finetune"):
        merged[key] = dict(sorted(((k, v) for r in reports for k, v in r[key].items()), key=lambda kv: order.index(kv[0])))
    merged["resumed_from"] = [c for r in reports for c in r.get("resumed_from", [])]
    merged["scratch_from"] = next((r["scratch_from"] for r in reports if r.get("scratch_from")), None)
    merged["machine"] = {**reports[0]["machine"], "load_average_end": max(r["machine"]["load_average_end"] for r in reports)}
    return merged
