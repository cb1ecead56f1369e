"""Distributed equality check of every SSL method, of pseudo-label classification and of every
pretext task, alone and summed with VICReg (a script, not a test module).

    python tests/dist_ssl_check.py OUT.pt [--dtype float64] [METHOD ...]    # one process, global batch
    torchrun --standalone --nproc_per_node 2 tests/dist_ssl_check.py OUT.pt  # each rank its half
        [--pretrain --config ... key=value ...]   # then a pretrain run in the same 2 processes

For each method: a tiny Medformer (depth 1) with a fixed seed, wrapped in DDP when distributed,
two steps on fixed global batches of mixed 2D/3D samples. Rank 0 writes per step the loss terms
(mean over ranks), the flattened gradient of the encoder and of the heads (after DDP's
averaging), and the momentum encoder, queue and BatchNorm running stats after on_step_end. tests/test_ssl.py runs it both
ways and compares.

Between the steps the trainable weights move by a fixed seeded perturbation instead of an SGD
step: the second step then starts from bitwise identical weights in both runs (with a non-trivial
queue and a momentum encoder that differs from the online one), rather than from weights that
already differ by float noise that these tiny, badly conditioned models amplify.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
from ssl_heads import tiny_ssl
from torch.nn.parallel import DistributedDataParallel

from medformer.config import ModelConfig
from medformer.config.pretrain import PretextConfig, SSLConfig
from medformer.data.batch import make_inputs
from medformer.data.domains import dataset_info
from medformer.models.factory import create_model
from medformer.objectives.pretext import PRETEXT_TASKS, build_pretext
from medformer.objectives.pretrain import PretrainObjective
from medformer.objectives.pseudolabel import PseudoLabelTerm
from medformer.objectives.ssl import SSL_METHODS, build_ssl_objective

GLOBAL_BATCH = 8
STEPS = 2
TINY_MODEL = {"depth": 1, "hidden_dim": 32, "heads": 2, "latent_dim": 16, "num_latent_tokens": 4}
# two 2D modalities, so that the stem's per-modality BatchNorm statistics are synced as well
DATASETS = ("pneumoniamnist", "adrenalmnist3d", "breastmnist")
COMBINED_METHODS = ("pseudolabel", "vicreg+pseudolabel", "vicreg+mae+pseudolabel")
N_PSEUDOLABELS = 3


def all_methods() -> list[str]:
    return [*sorted(SSL_METHODS), *sorted(PRETEXT_TASKS), *COMBINED_METHODS]


def build_objective(method: str, model: torch.nn.Module) -> PretrainObjective:
    """The run's objective for "+"-joined parts: an SSL method, "pseudolabel", pretext task names."""
    parts = method.split("+")
    ssl = next((build_ssl_objective(p, model, ssl_config(p)) for p in parts if p in SSL_METHODS), None)
    pseudolabel = PseudoLabelTerm(model, N_PSEUDOLABELS) if "pseudolabel" in parts else None
    tasks = [p for p in parts if p in PRETEXT_TASKS]
    return PretrainObjective(model, ssl, pseudolabel, build_pretext(PretextConfig(tasks=tasks), model), seed=0)


def local_pseudolabels(rank: int, world: int) -> torch.Tensor:
    """Cluster ids of the local rows (one global row unlabeled: -1)."""
    labels = torch.arange(GLOBAL_BATCH) % N_PSEUDOLABELS
    labels[1] = -1
    n = GLOBAL_BATCH // world
    return labels[rank * n:(rank + 1) * n]


def ssl_config(method: str) -> SSLConfig:
    return tiny_ssl(method, proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=32, queue_size=12)


def global_batches() -> list[tuple[list, list, list]]:
    """STEPS batches of two views; samples alternate 2D/3D so each rank's half mixes both, and the
    2D ones alternate X-ray and ultrasound."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(STEPS):
        images = [torch.rand(1, 28, 28, generator=g) if i % 2 == 0 else torch.rand(1, 28, 28, 28, generator=g)
                  for i in range(GLOBAL_BATCH)]
        flags = [DATASETS[(0, 1, 2, 1)[i % 4]] for i in range(GLOBAL_BATCH)]
        views = [[x + 0.1 * torch.randn(x.shape, generator=g) for x in images] for _ in range(2)]
        batches.append((views[0], views[1], flags))
    return batches


def local_batch(batch: tuple[list, list, list], rank: int, world: int, dtype: torch.dtype) -> dict:
    """This rank's rows: two views, pseudo-labels, and the (dataset, index) that seed pretext draws."""
    view0, view1, flags = batch
    n = GLOBAL_BATCH // world
    rows = slice(rank * n, (rank + 1) * n)
    return {"views": [make_inputs([x.to(dtype) for x in view[rows]], flags[rows]) for view in (view0, view1)],
            "pseudolabels": local_pseudolabels(rank, world), "dataset": flags[rows],
            "index": torch.arange(GLOBAL_BATCH)[rows]}


def flat_grad(params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def trainable(module: torch.nn.Module, heads_only: bool = False) -> list[torch.nn.Parameter]:
    return [p for n, p in module.named_parameters()
            if p.requires_grad and not (heads_only and n.startswith(("model.", "ssl.model.")) and "pseudolabel" not in n)]


@torch.no_grad()
def perturb(objective: torch.nn.Module, seed: int, scale: float = 0.02) -> None:
    """Same weight change on every process; gradients cleared."""
    g = torch.Generator().manual_seed(seed)
    for p in objective.parameters():
        if p.requires_grad:
            p.add_(scale * torch.randn(p.shape, generator=g))
            p.grad = None


def check_method(method: str, rank: int, world: int, dtype: torch.dtype = torch.float32) -> dict:
    torch.manual_seed(0)
    infos = [dataset_info(f) for f in DATASETS]
    model = create_model(ModelConfig(overrides=dict(TINY_MODEL)), infos, 28)
    objective = build_objective(method, model).to(dtype)
    wrapped = DistributedDataParallel(objective, find_unused_parameters=True) if world > 1 else objective
    record: dict = {"losses": [], "encoder_grad": [], "head_grad": [], "momentum": []}
    for step, batch in enumerate(global_batches(), start=1):
        losses = wrapped(local_batch(batch, rank, world, dtype))
        sum(losses.values()).backward()
        terms = torch.stack([v.detach() for v in losses.values()])
        if world > 1:
            dist.all_reduce(terms)
            terms /= world
        record["losses"].append(dict(zip(losses, terms.tolist(), strict=True)))
        record["encoder_grad"].append(flat_grad(trainable(objective.model)))
        record["head_grad"].append(flat_grad(trainable(objective, heads_only=True)))
        perturb(objective, seed=step)
        objective.on_step_end(step, 10)
        state = {k: v.detach().clone() for k, v in objective.state_dict().items()
                 if "momentum" in k or "queue" in k or "running_" in k or k == "calls"}
        record["momentum"].append(state)
    return record


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("methods", nargs="*")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                        help="float64 brings float noise to ~1e-13, so any real mismatch stands out")
    parser.add_argument("--pretrain", nargs=argparse.REMAINDER, default=None,
                        help="then run `pretrain` with these arguments in the same processes (saves a launch)")
    args = parser.parse_args(argv)
    out, methods = args.out, args.methods or all_methods()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    torch.set_num_threads(1)
    results = {m: check_method(m, rank, world, getattr(torch, args.dtype)) for m in methods}
    if rank == 0:
        torch.save({"world_size": world, "results": results}, out)
    code = 0
    if args.pretrain:  # Accelerate reuses the initialized process group
        from pretrain.__main__ import main as pretrain_main

        code = pretrain_main(args.pretrain)
    if world > 1 and dist.is_initialized():  # Accelerate's end_training may have destroyed it
        dist.barrier()
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
