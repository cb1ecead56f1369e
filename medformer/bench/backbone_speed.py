"""Benchmark: train-step throughput and peak memory of medformer_small against the thesis architecture.

One process, one thread, fp32: forward, backward and AdamW step of a batch of 32 (the recipe's), the
models timed in turn (A B C A B C ...) so that the machine's drift hits them alike; the ratio to the
thesis architecture is taken round by round and its median reported. A third column is the default
with its stride-1 stem conv at full resolution on 64 px images too (as before 2026-12-08). Writes docs/results/backbone_speed.{json,md}.

    python scripts/bench_backbone_speed.py                  # 2D 28/64 px, 3D 28³/64³ (about 9 min)
    python scripts/bench_backbone_speed.py --rounds 3 --cases 2d-28
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from ..data.batch import make_inputs
from ..data.domains import dataset_info
from ..models.medformer import Medformer, medformer_config

REPO = Path(__file__).resolve().parents[2]
# column -> (size name, overrides); the ratio is the first column's over the thesis's
MODELS = {"medformer_small": ("medformer_small", {}),
          "medformer_small_thesis": ("medformer_small_thesis", {}),
          # the default's stem at full resolution on 64 px images too (16x16 tokens, as before 2026-12-08)
          "medformer_small, full-res stem": ("medformer_small", {"stem_full_res_max": 64})}
CASES = {"2d-28": ("breastmnist", 28), "2d-64": ("breastmnist", 64), "3d-28": ("adrenalmnist3d", 28),
         "3d-64": ("adrenalmnist3d", 64)}


def train_step_factory(name: str, flag: str, size: int, batch: int, overrides: dict | None = None):
    info = dataset_info(flag)
    sizes = {"image_size_3d": size} if info.dim == "3d" else {"image_size_2d": size}
    model = Medformer(medformer_config(name, **sizes, **(overrides or {})), [info]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    shape = (info.n_channels, *([size] * (3 if info.dim == "3d" else 2)))
    inputs = make_inputs([torch.rand(shape) for _ in range(batch)], [flag] * batch)
    target = torch.randint(0, 2, (batch, 1)).float()

    def step() -> None:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(inputs)[flag], target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def img_per_s(step, batch: int, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=3.0, help="about this long per model per round")
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "backbone_speed"))
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for case in a.cases:
        flag, size = CASES[case]
        steps = {m: train_step_factory(name, flag, size, a.batch, overrides) for m, (name, overrides) in MODELS.items()}
        n_steps = {}
        for m, step in steps.items():  # warm-up, and steps per round from a first timing
            step()
            n_steps[m] = max(1, round(a.seconds * img_per_s(step, a.batch, 2) / a.batch))
        rates = {m: [] for m in MODELS}
        for _ in range(a.rounds):
            for m in MODELS:
                rates[m].append(img_per_s(steps[m], a.batch, n_steps[m]))
        ratios = {m: [new / old for new, old in zip(rates[m], rates["medformer_small_thesis"], strict=True)]
                  for m in ("medformer_small", "medformer_small, full-res stem")}
        ratio = ratios["medformer_small"]
        row = {"case": case, "dataset": flag, "size": size, **{m: statistics.median(rates[m]) for m in MODELS},
               "ratio_median": statistics.median(ratio), "ratio_min": min(ratio), "ratio_max": max(ratio),
               "ratio_full_res_median": statistics.median(ratios["medformer_small, full-res stem"]),
               "peak_rss_mb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"command": " ".join(["python", "scripts/bench_backbone_speed.py", *sys.argv[1:]]), "batch": a.batch, "rounds": a.rounds,
              "machine": {"cpus": os.cpu_count(), "threads": 1, "platform": platform.platform(), "torch": torch.__version__},
              "rows": rows}
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results + ".json").write_text(json.dumps(result, indent=1))
    lines = [f"Command: `{result['command']}`", "", f"Machine: {result['machine']}", "",
             f"Train step (forward, backward, AdamW) on a batch of {a.batch}, img/s, median of {a.rounds} interleaved rounds:", "",
             "| input | medformer_small | medformer_small_thesis | ratio (median, min-max) | full-res stem | its ratio |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['medformer_small']:.0f} | {r['medformer_small_thesis']:.0f} | "
              f"{r['ratio_median']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | "
              f"{r['medformer_small, full-res stem']:.0f} | {r['ratio_full_res_median']:.2f} |" for r in rows]
    lines += ["", "full-res stem: medformer_small with `model.overrides.stem_full_res_max=64`, its stride-1 stem "
              "conv at full resolution on 64 px images too (16x16 tokens instead of 8x8); at 28 px it is the default."]
    Path(a.results + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

