"""Probe and fine-tuning results of `bench_ssl.py` over pretraining seeds: mean ± std per method and
dataset, against the random-init encoder drawn with the same seeds.

    python scripts/ssl_seeds.py docs/results/ssl_benchmark_time.json docs/results/seed1_*.json \
        docs/results/seed2_*.json --name ssl_seeds

Each report holds one pretraining seed (`bench_ssl.py --seed`, seed 0 before that flag existed); a
later report's (method, seed) replaces an earlier one's, which the output names. Every report must
share the budget and probe settings, and every seed of a method its learning rate, predictor LR
factor and target momentum. A method pretrained in batches of one dataset each
(data.batch_by_dataset) gets its own row, `<method>/by-dataset`; --rows keeps only the rows named. The comparison with random init is the
difference of the means, with Welch's one-sided t-test (method > random) over the seeds: it covers
pretraining-seed and init noise, not only test-set noise.
Writes <out>/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from scipy.stats import ttest_ind

from .ssl import DATASETS, REPO, fmt, write_report

SAME = ("minutes_per_method", "probe_max_train", "probe_C_grid")
RECIPE = ("lr", "predictor_lr_scale", "momentum")
# every pretrain config started its momentum encoder at 0.99 before bench_ssl recorded the value
MOMENTUM_METHODS = {"byol": 0.99, "mocov2": 0.99, "mocov3": 0.99}
KINDS = ("linear", "knn")
STEP_SPREAD = 0.2


def row_name(method: str, report: dict) -> str:
    """A method's row; pretrained in batches of one dataset each (data.batch_by_dataset) it is `<method>/by-dataset`,
    beside the mixed-batch row."""
    return f"{method}/by-dataset" if report["pretrain"].get(method, {}).get("batch_by_dataset") else method


def recipe(method: str, report: dict) -> dict:
    """The settings every seed of a row must share. Reports made before bench_ssl recorded the predictor
    LR factor or the target momentum name them in their overrides, if they changed them."""
    overrides = dict(o.split("=", 1) for o in report.get("pretrain_overrides", []) if "=" in o)
    pretrain = report["pretrain"].get(method, {})
    momentum = None
    if method in MOMENTUM_METHODS:
        momentum = pretrain.get("momentum", overrides.get("ssl.momentum", MOMENTUM_METHODS[method]))
    return {"lr": pretrain.get("lr"),
            "predictor_lr_scale": float(pretrain.get("predictor_lr_scale", overrides.get("ssl.predictor_lr_scale", 1.0))),
            "momentum": None if momentum is None else float(momentum)}


def collect(reports: list[tuple[str, dict]], rows: list[str] | None = None) -> dict:
    """{"probe": {init: {seed: probe}}, "finetune": {init: {seed: [auc, ...]}}, "recipe": {init: {seed: recipe}},
    "steps": {init: {seed: pretraining steps}}, "source": {init: {seed: file}}, "replaced": [...], "scratch_full": [auc, ...]} from (file name, report) pairs;
    only the `rows` given (and random init), if any."""
    first = reports[0][1]
    steps = {x.get("finetune_steps") for _, x in reports if x.get("finetune_steps")}
    if len(steps) > 1:
        raise SystemExit(f"the reports fine-tuned for {sorted(steps)} steps; pass reports made with the same "
                         "--finetune-steps (or 0, for probes only)")
    out: dict = {"probe": {}, "finetune": {}, "recipe": {}, "steps": {}, "source": {}, "replaced": [], "scratch_full": []}
    for name, r in reports:
        bad = [k for k in SAME if r.get(k) != first.get(k)]
        if bad:
            raise SystemExit(f"{name}: {bad[0]} is {r.get(bad[0])!r}, {reports[0][0]} has {first.get(bad[0])!r}; "
                             "pass reports made with the same settings")
        seed = r.get("seed", 0)
        scratch = r["finetune"].get("scratch", {}).get("pneumoniamnist", {}).get("1.0", {}).get("runs", [])
        out["scratch_full"] = [run["auc"] for run in scratch] or out["scratch_full"]
        for method, probe in r["probe"].items():
            if method == "pixels":
                continue
            init = row_name(method, r)
            if rows and init not in rows and init != "random":
                continue
            earlier = out["source"].setdefault(init, {}).get(seed)
            if earlier:
                out["replaced"].append(f"{init} seed {seed}: {name} replaces {earlier}")
            out["source"][init][seed] = name
            out["probe"].setdefault(init, {})[seed] = probe
            out["recipe"].setdefault(init, {})[seed] = recipe(method, r)
            if method in r["pretrain"]:
                out["steps"].setdefault(init, {})[seed] = r["pretrain"][method].get("steps")
            runs = r["finetune"].get(method, {}).get("pneumoniamnist", {}).get("0.1", {}).get("runs")
            if runs:
                out["finetune"].setdefault(init, {})[seed] = [run["auc"] for run in runs]
    for init, recipes in out["recipe"].items():
        for key in RECIPE:
            values = {seed: rec[key] for seed, rec in recipes.items()}
            if len(set(values.values())) > 1:
                raise SystemExit(f"{init} pretrained with {key} {values} (by seed); pass one {key} per method")
    if "random" not in out["probe"]:
        raise SystemExit("no report holds the random-init baseline; add one made without --no-baseline")
    return out


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values), "values": values}


def summarize(data: dict) -> dict:
    """Per init, dataset and probe: AUC over seeds; per method, the difference to random and Welch's p."""
    auc = {init: {flag: {kind: mean_std([p[flag][kind]["auc"] for _, p in sorted(seeds.items())]) for kind in KINDS}
                  for flag in DATASETS} for init, seeds in data["probe"].items()}
    versus = {}
    for init in auc:
        if init == "random":
            continue
        versus[init] = {}
        for flag in DATASETS:
            versus[init][flag] = {}
            for kind in KINDS:
                a, b = auc[init][flag][kind]["values"], auc["random"][flag][kind]["values"]
                p = ttest_ind(a, b, equal_var=False, alternative="greater").pvalue if min(len(a), len(b)) > 1 else None
                versus[init][flag][kind] = {"diff": statistics.fmean(a) - statistics.fmean(b), "p_welch": p}
    finetune = {init: {**mean_std([a for s in sorted(seeds) for a in seeds[s]]), "seeds": sorted(seeds)}
                for init, seeds in data["finetune"].items()}
    scratch = mean_std(data["scratch_full"]) if data["scratch_full"] else None
    return {"auc": auc, "versus_random": versus, "finetune_10pct": finetune, "scratch_100pct": scratch,
            "seeds": {init: sorted(seeds) for init, seeds in data["probe"].items()},
            "steps": {init: dict(sorted(steps.items())) for init, steps in data["steps"].items()}}


def cell(s: dict) -> str:
    return f"{fmt(s['mean'])} ± {fmt(s['std'])} ({s['n']})" if s["n"] > 1 else f"{fmt(s['mean'])} (1)"


def steps_section(steps: dict[str, dict[int, int | None]]) -> list[str]:
    """Pretraining steps per seed: a time budget buys less work on a slower machine, so seeds run in
    different sessions may not be comparable; rows whose step counts differ by more than
    STEP_SPREAD are named."""
    if not steps:
        return []
    lines = ["", "## Pretraining steps by seed (the same time budget)", "", "| method | steps by seed |", "|---|---|"]
    lines += [f"| {m} | " + ", ".join(f"{seed}: {n if n is not None else 'n/a'}" for seed, n in by_seed.items()) + " |"
              for m, by_seed in steps.items()]
    uneven = []
    for m, by_seed in steps.items():
        counts = [n for n in by_seed.values() if n]
        if counts and max(counts) > (1 + STEP_SPREAD) * min(counts):
            uneven.append(m)
    if uneven:
        lines += ["", f"Step counts differ by more than {STEP_SPREAD:.0%} between seeds of: {', '.join(uneven)} "
                  "(the budget is time, and machines differ in speed)."]
    return lines


def markdown(report: dict) -> str:
    s = report["summary"]
    methods = [i for i in s["auc"] if i != "random"]
    lines = ["# SSL probes over pretraining seeds (CPU)", "", f"Command: `{report['command']}`; written {report['written']}.", "",
             f"Budget {report['minutes_per_method']} min of pretraining per method and seed; probes and fine-tunes as in "
             "`bench_ssl.py`. `random`: the random-init encoder drawn with the same seeds. Cells: test AUC mean ± sample std "
             "over seeds (number of seeds). Δ: method mean − random mean; p: Welch's one-sided t-test over seeds "
             "(method > random; n/a with one seed).", "",
             "Sources: " + "; ".join(f"{i} seeds {s['seeds'][i]}" for i in s["seeds"]) + ".",
             *[f"- {line}" for line in report["replaced"]]]
    for kind in KINDS:
        title = "Linear probe" if kind == "linear" else "kNN"
        lines += ["", f"## {title}: test AUC over pretraining seeds", "", "| dataset | random | " + " | ".join(methods) + " |",
                  "|---|" + "---|" * (len(methods) + 1)]
        for flag in DATASETS:
            lines.append(f"| {flag} | {cell(s['auc']['random'][flag][kind])} | "
                         + " | ".join(cell(s["auc"][m][flag][kind]) for m in methods) + " |")
        lines += ["", f"### {title}: Δ vs random (p)", "", "| dataset | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for flag in DATASETS:
            v = [s["versus_random"][m][flag][kind] for m in methods]
            lines.append(f"| {flag} | " + " | ".join(f"{x['diff']:+.3f} ({fmt(x['p_welch'])})" for x in v) + " |")
    lines += ["", "## Linear probe above random init on every dataset (means over seeds)", ""]
    for m in methods:
        below = [f for f in DATASETS if s["versus_random"][m][f]["linear"]["diff"] <= 0]
        lines.append(f"- {m} (seeds {s['seeds'][m]}): " + ("yes" if not below else "no, below on " + ", ".join(below)))
    lines += steps_section(s["steps"])
    if s["finetune_10pct"]:
        lines += ["", "## Fine-tuning pneumoniamnist with 10% labels: test AUC over pretraining × fine-tuning seeds", "",
                  *([f"Target: 95% of scratch with 100% labels ({cell(s['scratch_100pct'])}) = "
                     f"{0.95 * s['scratch_100pct']['mean']:.3f}.", ""] if s["scratch_100pct"] else []),
                  "| method | pretraining seeds | AUC mean ± std (runs) | min |", "|---|---|---|---|"]
        for m, f in s["finetune_10pct"].items():
            lines.append(f"| {m} | {f['seeds']} | {cell(f)} | {fmt(min(f['values']))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="bench_ssl.py JSON reports, one pretraining seed each")
    parser.add_argument("--name", default="ssl_seeds", help="results file stem in --out")
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    parser.add_argument("--rows", nargs="+", default=None, metavar="ROW",
                        help="only these methods' rows (e.g. byol byol/by-dataset), beside random init")
    args = parser.parse_args(argv)
    reports = [(Path(f).name, json.loads(Path(f).read_text())) for f in args.reports]
    data = collect(reports, args.rows)
    report = {"command": " ".join(["python", "scripts/ssl_seeds.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
              "written": time.strftime("%Y-%m-%d %H:%M", time.localtime()), "replaced": data["replaced"],
              "minutes_per_method": reports[0][1]["minutes_per_method"], "sources": data["source"], "summary": summarize(data)}
    return write_report(report, Path(args.out), args.name, render=markdown)
