"""Benchmark: how training throughput and memory scale with image size, model size, gradient
checkpointing and processes, on this machine's CPUs; and what fits on one 80 GB GPU at bf16.

    python scripts/bench_scale.py                 # every case below (about 20 min on 2 cores)
    python scripts/bench_scale.py --quick         # a few cases, for a first look

Each case runs in a fresh process, one thread, fp32: forward, backward and AdamW step of a batch of
random images through the real model (a Medformer with one task head), timed over `--seconds`.
Memory is the process's peak resident set (ru_maxrss), taken at two batch sizes: the slope is the
activation memory per sample, the intercept what the model, gradients and optimizer hold. The
2-process rows run the same step under torchrun (gloo DDP, one thread each): their throughput is the
sum over ranks, beside the ideal of twice one process.

The 80 GB estimate: bf16 autocast keeps weights, gradients and AdamW state in fp32 (16 bytes per
parameter) and about halves the activations (measured here in fp32; the halving is an assumption,
since softmax, norms and the loss stay fp32), with 10% of the card kept free:
max batch = (0.9 x 80 GB - 16 B x parameters) / (activation bytes per sample / 2).
Writes docs/results/scale.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..config import ModelConfig
from ..data.batch import make_inputs
from ..data.domains import dataset_info
from ..models.factory import create_model

REPO = Path(__file__).resolve().parents[2]
# (model, dim, size, batch sizes for the memory slope)
CASES = [
    ("medformer_small", "2d", 28, (16, 48)),
    ("medformer_small", "2d", 64, (16, 48)),
    ("medformer_small", "2d", 128, (4, 12)),
    ("medformer_small", "2d", 224, (2, 6)),
    ("medformer_small", "3d", 28, (8, 24)),
    ("medformer_small", "3d", 64, (2, 6)),
    ("medformer_large", "2d", 224, (2, 6)),
    ("medformer_large", "3d", 64, (2, 6)),
]
QUICK = [c for c in CASES if (c[1], c[2]) in (("2d", 28), ("3d", 28))] + [CASES[6]]
GPU_BYTES = 80e9


def _step_factory(model_name: str, dim: str, size: int, batch: int, checkpointing: bool):
    flag = "breastmnist" if dim == "2d" else "adrenalmnist3d"
    model = create_model(ModelConfig(name=model_name, grad_checkpointing=checkpointing), [dataset_info(flag)], size)
    model.train()
    if torch.distributed.is_initialized():
        model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    shape = (1, size, size) if dim == "2d" else (1, size, size, size)
    g = torch.Generator().manual_seed(0)
    inputs = make_inputs([torch.rand(shape, generator=g) for _ in range(batch)], [flag] * batch)
    target = torch.randint(0, 2, (batch, 1), generator=g).float()

    def step() -> None:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(inputs)[flag], target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    n_params = sum(p.numel() for p in model.parameters())
    return step, n_params


def measure(model_name: str, dim: str, size: int, batch: int, checkpointing: bool, seconds: float) -> dict:
    """One case in this process: img/s (after one warm-up step) and peak RSS."""
    torch.set_num_threads(1)
    step, n_params = _step_factory(model_name, dim, size, batch, checkpointing)
    step()
    steps, t0 = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - t0 < seconds:
        step()
        steps += 1
    elapsed = time.perf_counter() - t0
    return {"img_per_s": batch * steps / elapsed, "steps": steps, "params": n_params,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _worker(args: argparse.Namespace) -> None:
    if "RANK" in os.environ:
        torch.distributed.init_process_group("gloo")
    result = measure(args.model, args.dim, args.size, args.batch, args.checkpointing, args.seconds)
    if torch.distributed.is_initialized():
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, result)
        result = {**result, "img_per_s": sum(r["img_per_s"] for r in gathered),
                  "peak_rss_mb": max(r["peak_rss_mb"] for r in gathered)}
        if torch.distributed.get_rank() != 0:
            return
    print("RESULT " + json.dumps(result), flush=True)


def _run_case(model: str, dim: str, size: int, batch: int, checkpointing: bool, seconds: float, processes: int) -> dict:
    own = [f"--model={model}", f"--dim={dim}", f"--size={size}", f"--batch={batch}", f"--seconds={seconds}",
           "--worker", *(["--checkpointing"] if checkpointing else [])]
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
              if processes > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launch, "-m", "medformer.bench.scale", *own], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"case {model} {dim} {size} batch {batch} failed: {proc.stderr[-2000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def run_cases(cases, seconds: float, process_cases) -> list[dict]:
    rows = []
    for model, dim, size, (b1, b2) in cases:
        for checkpointing in (False, True):
            small = _run_case(model, dim, size, b1, checkpointing, seconds, 1)
            large = _run_case(model, dim, size, b2, checkpointing, seconds, 1)
            per_sample = max(0.0, (large["peak_rss_mb"] - small["peak_rss_mb"]) / (b2 - b1))
            fixed = small["peak_rss_mb"] - per_sample * b1
            row = {"model": model, "dim": dim, "size": size, "checkpointing": checkpointing, "batch": b2,
                   "img_per_s": large["img_per_s"], "params": large["params"], "peak_rss_mb": large["peak_rss_mb"],
                   "activation_mb_per_sample": per_sample, "fixed_mb": fixed, "processes": 1}
            bf16_sample = per_sample * 2**20 / 2
            row["gpu80_max_batch"] = int((0.9 * GPU_BYTES - 16 * row["params"]) / bf16_sample) if bf16_sample else None
            rows.append(row)
            print(json.dumps(row), flush=True)
    for model, dim, size, (_, b2) in process_cases:
        one = next(r for r in rows if (r["model"], r["dim"], r["size"], r["checkpointing"]) == (model, dim, size, False))
        two = _run_case(model, dim, size, b2, False, seconds, 2)
        rows.append({"model": model, "dim": dim, "size": size, "checkpointing": False, "batch": b2, "processes": 2,
                     "img_per_s": two["img_per_s"], "params": two["params"], "peak_rss_mb": two["peak_rss_mb"],
                     "scaling": two["img_per_s"] / one["img_per_s"], "ideal_scaling": 2.0})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict], command: str, machine: dict) -> str:
    out = [f"Command: `{command}`", "", f"Machine: {machine}", "",
           "One process, one thread, fp32, forward + backward + AdamW on random images (img/s at the larger batch). "
           "Activation memory per sample: the slope of peak RSS between the two batch sizes; fixed: the intercept "
           "(weights, gradients, optimizer, the framework). GPU max batch: the estimate for one 80 GB GPU at bf16 "
           "(method in medformer/bench/scale.py).", "",
           "| model | input | grad ckpt | batch | img/s | peak RSS MB | activation MB / sample | fixed MB | params | 80 GB bf16 max batch |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["processes"] == 1):
        shape = f"{r['size']}²" if r["dim"] == "2d" else f"{r['size']}³"
        out.append(f"| {r['model']} | {r['dim']} {shape} | {'yes' if r['checkpointing'] else 'no'} | {r['batch']} | "
                   f"{r['img_per_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['activation_mb_per_sample']:.2f} | "
                   f"{r['fixed_mb']:.0f} | {r['params'] / 1e6:.2f} M | {r['gpu80_max_batch']:,} |")
    two = [r for r in rows if r["processes"] == 2]
    if two:
        out += ["", "Processes (torchrun, gloo DDP, one thread each, on the 2 cores): total img/s against one process.", "",
                "| model | input | batch per process | 1 process img/s | 2 processes img/s | measured scaling | ideal |",
                "|---|---|---|---|---|---|---|"]
        for r in two:
            one = next(o for o in rows if o["processes"] == 1 and not o["checkpointing"]
                       and (o["model"], o["dim"], o["size"]) == (r["model"], r["dim"], r["size"]))
            shape = f"{r['size']}²" if r["dim"] == "2d" else f"{r['size']}³"
            out.append(f"| {r['model']} | {r['dim']} {shape} | {r['batch']} | {one['img_per_s']:.1f} | "
                       f"{r['img_per_s']:.1f} | {r['scaling']:.2f}x | {r['ideal_scaling']:.0f}x |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2D 28, 3D 28 and the large model at 224 only")
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per case and batch size")
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "scale"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name, kind in (("model", str), ("dim", str), ("size", int), ("batch", int)):
        p.add_argument(f"--{name}", type=kind, help=argparse.SUPPRESS)
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        _worker(a)
        return 0
    cases = QUICK if a.quick else CASES
    process_cases = [c for c in cases if (c[0], c[1], c[2]) in (("medformer_small", "2d", 28), ("medformer_small", "3d", 28))]
    command = " ".join(["python", "scripts/bench_scale.py", *(argv if argv is not None else sys.argv[1:])])
    machine = {"cpus": os.cpu_count(), "threads_per_process": 1, "platform": platform.platform(), "torch": torch.__version__}
    rows = run_cases(cases, a.seconds, process_cases)
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results + ".json").write_text(json.dumps({"command": command, "machine": machine, "rows": rows}, indent=1))
    text = markdown(rows, command, machine)
    Path(a.results + ".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
