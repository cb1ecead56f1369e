"""Distributed helpers for SSL losses: gathers with and without gradient, synced BatchNorm.

Gradient rule used by every method: DDP averages gradients over W processes, and a gather with
gradient (lightly's GatherLayer, torch.distributed.nn) sums the gradients that all processes send
to a rank's slice. So a loss is exact when the mean over ranks of the per-rank losses equals the
single-process loss on the global batch: either a mean over the local rows (negatives may come
from gathered tensors) or the same global value computed on every rank from gathered tensors.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightly.utils.dist import gather as _gather_layer
from torch import Tensor, nn

from ...models.domain_norm import DomainBatchNorm


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenation over processes (rank order); gradients flow back to every rank's slice."""
    if world_size() == 1:
        return x
    return torch.cat(_gather_layer(x.contiguous()), dim=0)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenation over processes (rank order), detached (momentum keys, queues)."""
    if world_size() == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_with_grad(x: Tensor) -> Tensor:
    """Sum over processes (added in rank order, so identical everywhere); gradient-aware."""
    if world_size() == 1:
        return x
    return torch.stack(_gather_layer(x.contiguous())).sum(dim=0)


class DistBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics span all processes, on any device (gloo included).

    torch.nn.SyncBatchNorm refuses CPU tensors ("expected input tensor to be on GPU"), so CPU
    multi-process runs use this one: two all-reduces with gradient (mean, then centred sum of
    squares: same two-pass numerics as F.batch_norm). With one process it is plain BatchNorm.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        count = x.new_tensor([x.numel() / c])
        totals = all_reduce_with_grad(torch.cat([x.sum(dims), count]))
        n = totals[-1].detach()
        mean = totals[:c] / n
        centred = x - mean.reshape(shape)
        var = all_reduce_with_grad((centred * centred).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n.item())
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: float) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
        unbiased = var * n / max(n - 1.0, 1.0)
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)


def _to_dist_batchnorm(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, DistBatchNorm):
        out = DistBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        if module.affine:  # the same Parameter objects: requires_grad (frozen twins) and optimizers keep working
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_dist_batchnorm(child))
    return out


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """BatchNorm layers with statistics over all processes when world size > 1: torch's
    SyncBatchNorm on CUDA, DistBatchNorm elsewhere, DomainBatchNorm's per-modality sums reduced.
    Unchanged with one process."""
    if world_size() == 1:
        return module
    for norm in module.modules():
        if isinstance(norm, DomainBatchNorm):
            norm.reduce = all_reduce_with_grad
    if torch.cuda.is_available():
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_dist_batchnorm(module)
