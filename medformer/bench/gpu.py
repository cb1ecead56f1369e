"""GPU check and throughput (needs CUDA): the CUDA path's numerics against CPU fp32, then pretraining
img/s per SSL method (bf16 autocast; xformers on and off; 0 and N loader workers) and one fine-tune.

    python scripts/bench_gpu.py --root ../shared/data/medmnist --steps 40 --workers 8

Numerics: `encode()` of medformer_small on a mixed 2D/3D batch on CPU fp32 vs CUDA fp32, CUDA bf16
autocast with SDPA and with xformers (cosine similarity and max abs difference of the features).
Throughput: the Trainer's own timer (first step excluded) over `--steps` steps of each method's
configs/pretrain/<method>_small.yaml on the four pretraining datasets. Writes
docs/results/gpu_benchmark.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..config import FinetuneConfig, ModelConfig, load_config
from ..config.pretrain import PretrainConfig
from ..data.batch import make_inputs
from ..data.domains import dataset_info
from ..engine.trainer import reset_accelerate_state
from ..io import write_json
from ..models import attention as attention_module
from ..models.factory import create_model
from ..objectives.ssl import SSL_METHODS
from ..runs.finetune import run_finetune
from ..runs.pretrain import run_pretrain

REPO = Path(__file__).resolve().parents[2]
DATASETS = ["pneumoniamnist", "breastmnist", "retinamnist", "adrenalmnist3d"]
XOPS = attention_module.xops


def pretrain_config(method: str, root: str, out: Path, extra: list[str]) -> PretrainConfig:
    return load_config(PretrainConfig, REPO / "configs" / "pretrain" / f"{method}_small.yaml", [
        f"data.root={root}", f"data.datasets=[{','.join(DATASETS)}]", f"output_dir={out}",
        "train.progress=false", "monitor.knn_every=0", *extra,
    ])


def finetune_scratch(root: str, out: Path, steps: int, batch: int = 128) -> dict:
    """PneumoniaMNIST from scratch for `steps` steps (all labels): test metrics of the weights the recipe tests."""
    cfg = load_config(FinetuneConfig, REPO / "configs" / "finetune" / "pneumoniamnist_small.yaml", [
        f"data.root={root}", f"output_dir={out}", f"train.max_steps={steps}", f"train.batch_size={batch}",
        "train.epochs=100", "train.progress=false", "train.warmup_epochs=0.3",
    ])
    t0 = time.perf_counter()
    test = run_finetune(cfg)["pneumoniamnist"]["test"]
    reset_accelerate_state()
    return {"auc": test["auc"], "acc": test["acc"], "steps": steps, "batch_size": batch,
            "wall_seconds": round(time.perf_counter() - t0, 1)}


def xformers_version() -> str | None:
    try:
        import xformers

        return xformers.__version__
    except Exception as exc:  # noqa: BLE001 - report why it is unavailable
        return f"unavailable: {type(exc).__name__}: {exc}"


def xformers_usable() -> str:
    """'yes', or why xformers' kernel cannot run here (attention() then falls back to SDPA)."""
    if XOPS is None:
        return "no: " + str(xformers_version())
    q = torch.randn(4, 4, 35, 16, device="cuda", dtype=torch.bfloat16)
    try:
        XOPS.memory_efficient_attention(q, q, q)
        return "yes"
    except NotImplementedError as exc:
        msg = " ".join(str(exc).split())
        return "no: " + ("this build has no CUDA kernels (built for another torch/CUDA)" if "CUDA support" in msg else msg[:200])


def numerics(xformers: bool) -> dict:
    """Feature agreement of the CUDA paths with CPU fp32 on one mixed 2D/3D batch."""
    torch.manual_seed(0)
    flags = ["pneumoniamnist", "retinamnist", "adrenalmnist3d"]
    model = create_model(ModelConfig(name="medformer_small"), [dataset_info(f) for f in flags]).eval()
    images, names = [], []
    for f in flags:
        info = dataset_info(f)
        shape = (info.n_channels, *([28] * (3 if info.dim == "3d" else 2)))
        images += [torch.rand(shape) for _ in range(16)]
        names += [f] * 16
    inputs = make_inputs(images, names)
    with torch.no_grad():
        ref = model.encode(inputs).double()
        model.cuda()
        cuda_inputs = inputs.to("cuda")
        out = {}
        for name, autocast, xops in [("cuda_fp32_sdpa", False, None), ("cuda_bf16_sdpa", True, None),
                                     ("cuda_bf16_xformers", True, XOPS)]:
            if name.endswith("xformers") and not xformers:
                continue
            attention_module.xops = xops
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                feats = model.encode(cuda_inputs).double().cpu()
            out[name] = {"cosine_min": float(torch.nn.functional.cosine_similarity(feats, ref).min()),
                         "max_abs_diff": float((feats - ref).abs().max()), "ref_abs_max": float(ref.abs().max())}
    attention_module.xops = XOPS
    return out


def pretrain_throughput(method: str, root: str, steps: int, workers: int, xformers: bool, batch: int) -> dict:
    attention_module.xops = XOPS if xformers else None
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = pretrain_config(method, root, Path(tmp) / "run", [
            f"train.max_steps={steps}", f"data.num_workers={workers}", f"train.batch_size={batch}"])
        t0 = time.perf_counter()
        metrics = run_pretrain(cfg)
        wall = time.perf_counter() - t0
        reset_accelerate_state()
        stats = json.loads((Path(tmp) / "run" / "train_stats.json").read_text())
    attention_module.xops = XOPS
    return {"method": method, "xformers": xformers, "workers": workers, "batch_size": batch,
            "steps": stats["steps"], "img_per_s": stats["train_samples_per_second"],
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "wall_seconds": round(wall, 1),
            "final_loss": metrics["final_loss"], "mixed_precision": stats.get("mixed_precision")}


def loss_terms(loss: dict) -> str:
    return ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in loss.items())


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# GPU check and throughput", "", f"Command: `{report['command']}`", "",
             f"Machine: {m['gpu']}, torch {m['torch']}, CUDA {m['cuda']}, xformers {m['xformers']} (its kernel runs: {m['xformers_kernel']}), "
             f"Python {m['python']}; written {report['written']}, {report['wall_minutes']:.1f} min.", "",
             "## Numerics of the CUDA path (medformer_small `encode()`, 48 mixed 2D/3D images, vs CPU fp32)", "",
             "| path | min cosine | max abs diff | max abs feature |", "|---|---|---|---|"]
    for name, r in report["numerics"].items():
        lines.append(f"| {name} | {r['cosine_min']:.5f} | {r['max_abs_diff']:.4f} | {r['ref_abs_max']:.3f} |")
    lines += ["", f"## Pretraining throughput ({report['steps']} steps, first excluded, after one unreported warm-up run; "
              "four datasets, 28 px)", "",
              "| method | batch | workers | xformers | img/s | peak GiB | loss terms at the end | precision |", "|---|---|---|---|---|---|---|---|"]
    for r in report["pretrain"]:
        lines.append(f"| {r['method']} | {r['batch_size']} | {r['workers']} | {r['xformers']} | {r['img_per_s']} | "
                     f"{r['peak_mem_gib']} | {loss_terms(r['final_loss'])} | {r['mixed_precision']} |")
    if report.get("finetune"):
        f = report["finetune"]
        lines += ["", "## Fine-tuning (pneumoniamnist, 100% labels, from scratch)", "",
                  f"{f['steps']} steps at batch {f['batch_size']}: test AUC {f['auc']:.3f}, ACC {f['acc']:.3f}, "
                  f"{f['wall_seconds']} s wall (evaluation included)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "medmnist"))
    parser.add_argument("--methods", nargs="+", default=sorted(SSL_METHODS), choices=sorted(SSL_METHODS))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128], help="all methods at the first")
    parser.add_argument("--finetune-steps", type=int, default=300, help="0 skips the fine-tune")
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    parser.add_argument("--name", default="gpu_benchmark")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU; none is visible to torch")
    t0 = time.perf_counter()
    report = {"command": " ".join(["python", "scripts/bench_gpu.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
              "machine": {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
                          "xformers": xformers_version(), "python": platform.python_version()},
              "steps": args.steps, "datasets": DATASETS, "pretrain": []}
    report["machine"]["xformers_kernel"] = xformers_usable()
    usable = report["machine"]["xformers_kernel"] == "yes"
    report["numerics"] = numerics(usable)
    print(json.dumps(report["numerics"], indent=1), flush=True)
    # every method at the first batch size; the first method also at the others, without xformers and
    # with the main process loading
    first, batch = args.methods[0], args.batch_sizes[0]
    runs = [(m, batch, args.workers, usable) for m in args.methods]
    runs += [(first, b, args.workers, usable) for b in args.batch_sizes[1:]]
    runs += [(first, batch, args.workers, False)] if usable else []
    runs += [(first, batch, 0, usable)]
    pretrain_throughput(first, args.root, 10, args.workers, usable, batch)  # warm-up (CUDA context, kernels), not reported
    for method, batch, workers, xformers in runs:
        report["pretrain"].append(pretrain_throughput(method, args.root, args.steps, workers, xformers, batch))
        print(report["pretrain"][-1], flush=True)
    if args.finetune_steps:
        report["finetune"] = finetune_scratch(args.root, Path(tempfile.mkdtemp()) / "ft", args.finetune_steps)
    report["wall_minutes"] = (time.perf_counter() - t0) / 60
    report["written"] = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{args.name}.json", report)
    (out / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0

