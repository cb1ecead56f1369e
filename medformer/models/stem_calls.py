"""One encoder (stem) call per kind of image, the same calls on every process.

A batch holds one image tensor per shape. Encoders with BatchNorm whose statistics span all
processes (synced BatchNorm) must be called equally often on every process, or the processes
wait on each other forever; a mixed batch may hold 2D gray, 2D RGB and 3D images on one process
and only 2D gray on another. So the models merge a batch's groups by dim and spatial size (a gray
image acts as a replicated RGB one, as the encoders already treat it), and in multi-process
training they also call the encoder of a dim that only other processes have, on an empty batch,
tied into the loss with weight zero so that its backward pass takes part as well.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..data.batch import Inputs
from .domain_norm import DomainBatchNorm

DIMS = ("2d", "3d")


def merged_groups(inputs: Inputs) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{dim: (images, batch rows)} with every group of a dim in one tensor.

    1-channel images are expanded to the channel count of the others of their dim. Groups of one
    dim with different spatial sizes cannot be merged: that stops with a one-line error.
    """
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for images, rows in inputs.groups:
        parts.setdefault("2d" if images.ndim == 4 else "3d", []).append((images, rows))
    merged = {}
    for dim, group in parts.items():
        if len(group) == 1:
            merged[dim] = group[0]
            continue
        sizes = {tuple(x.shape[2:]) for x, _ in group}
        if len(sizes) > 1:
            raise ValueError(f"one batch holds {dim} images of sizes {sorted(sizes)}: use one data.size for all datasets")
        channels = max(x.shape[1] for x, _ in group)
        images = torch.cat([x.expand(-1, channels, *x.shape[2:]) if x.shape[1] == 1 else x for x, _ in group])
        merged[dim] = (images, torch.cat([r for _, r in group]))
    return merged


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, (nn.modules.batchnorm._BatchNorm, DomainBatchNorm)) for m in module.modules())


def dims_only_elsewhere(local: set[str], device: torch.device) -> list[str]:
    """Dims that other processes have in this step and this one has not (empty with one process)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return []
    flags = torch.tensor([float(d in local) for d in DIMS], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return [d for d, f in zip(DIMS, flags.tolist(), strict=True) if f > 0 and d not in local]


def zero_weighted(out: torch.Tensor, encoder_outputs: list[torch.Tensor]) -> torch.Tensor:
    """`out` plus 0 x the sum of encoder outputs of empty batches (ties their backward in)."""
    for extra in encoder_outputs:
        out = out + 0.0 * extra.sum()
    return out
