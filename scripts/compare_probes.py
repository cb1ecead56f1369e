"""Frozen-encoder probes of several encoders against a baseline, with paired bootstrap intervals:
is each encoder's linear probe / kNN test AUC above the baseline's beyond test-set sampling noise?

    python scripts/compare_probes.py --inits simclr=runs/bench_ssl/simclr vicreg=runs/bench_ssl/vicreg \
        --datasets pneumoniamnist breastmnist --name ssl_probe_significance

The baseline defaults to the random-init encoder (random=scratch). The probes are `run_probe`'s
(C chosen on val; scores of the test split); each difference is resampled over the same test
images for both encoders. Only test-set noise is covered, not the pretraining seed.
Writes <out>/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from medformer.bench.ssl import limit_threads, write_report
from medformer.data.domains import dataset_info  # noqa: E402
from medformer.eval.bootstrap import paired_bootstrap  # noqa: E402
from medformer.eval.probe import run_probe, summarize_test  # noqa: E402
from medformer.eval.stats import bonferroni  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METHODS = ("linear", "knn")


def named(value: str) -> tuple[str, str]:
    name, sep, init = value.partition("=")
    if not sep or not name or not init:
        raise argparse.ArgumentTypeError(f"expected NAME=INIT (e.g. simclr=runs/bench_ssl/simclr), got {value!r}")
    return name, init


def compare(baseline: tuple[str, str], inits: list[tuple[str, str]], datasets: list[str], root: str,
            n_resamples: int) -> dict:
    """{"probe": {name: {flag: {method: {auc, acc}}}}, "comparisons": [row per (name, flag, method)]}."""
    scores, probe = {}, {}
    for name, init in [baseline, *inits]:
        print(f"[compare] probing {name} ({init})", flush=True)
        res = run_probe(init, datasets, root=root, splits=("test",), keep_scores=True)
        scores[name] = res["_scores"]
        probe[name] = summarize_test(res, datasets)
    rows = []
    for method in METHODS:
        block = []
        for name, _ in inits:
            for flag in datasets:
                test = scores[name][flag]["test"]
                base = scores[baseline[0]][flag]["test"]
                stats = paired_bootstrap(test["labels"], test[method], base[method], dataset_info(flag).task, n_resamples=n_resamples)
                block.append({"init": name, "dataset": flag, "method": method, **stats})
        for row, p in zip(block, bonferroni([r["p_value"] for r in block]), strict=True):
            row["p_bonferroni"] = p
        rows += block
    return {"probe": probe, "comparisons": rows}


def markdown(report: dict) -> str:
    base = report["baseline"]
    lines = ["# Frozen-encoder probes vs the baseline, with paired bootstrap intervals", "",
             f"Command: `{report['command']}`", "",
             f"Machine: {report['machine']}; written {report['written']}, {report['wall_minutes']:.1f} min.", "",
             f"Baseline: **{base}**. Δ = test AUC of the encoder minus the baseline's on the same test images; "
             f"95% percentile interval and two-sided p over {report['n_resamples']} paired resamples of the test "
             "split; p (Bonferroni) corrects over every row of the same probe. Test-set noise only: "
             "one pretraining run per encoder.", ""]
    for method in METHODS:
        lines += [f"## {'Linear probe' if method == 'linear' else 'kNN'}", "",
                  "| encoder | dataset | AUC | baseline AUC | Δ [95% CI] | p | p (Bonferroni) |",
                  "|---|---|---|---|---|---|---|"]
        for r in (r for r in report["comparisons"] if r["method"] == method):
            a = report["probe"][r["init"]][r["dataset"]][method]["auc"]
            b = report["probe"][base][r["dataset"]][method]["auc"]
            sig = "**" if r["ci_low"] > 0 or r["ci_high"] < 0 else ""
            lines.append(f"| {r['init']} | {r['dataset']} | {a:.3f} | {b:.3f} | {sig}{r['delta']:+.3f} "
                         f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]{sig} | {r['p_value']:.3f} | {r['p_bonferroni']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=named, default=("random", "scratch"), help="NAME=INIT")
    parser.add_argument("--inits", type=named, nargs="+", required=True, help="NAME=INIT (run folder or .safetensors)")
    parser.add_argument("--datasets", nargs="+", default=["pneumoniamnist", "breastmnist", "retinamnist", "adrenalmnist3d"])
    parser.add_argument("--root", default=os.environ.get("MEDMNIST_ROOT", str(REPO.parent / "shared" / "data" / "medmnist")))
    parser.add_argument("--n-resamples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch and BLAS threads (default: all cores)")
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    parser.add_argument("--name", default="probe_significance")
    args = parser.parse_args(argv)
    if args.threads:
        limit_threads(args.threads)
    t0 = time.perf_counter()
    report = compare(args.baseline, args.inits, args.datasets, args.root, args.n_resamples)
    report.update({
        "command": " ".join(["python", "scripts/compare_probes.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
        "baseline": args.baseline[0], "n_resamples": args.n_resamples,
        "machine": f"{os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads), torch {torch.__version__}",
        "written": time.strftime("%Y-%m-%d %H:%M"), "wall_minutes": (time.perf_counter() - t0) / 60,
    })
    return write_report(report, Path(args.out), args.name, render=markdown)


if __name__ == "__main__":
    sys.exit(main())
