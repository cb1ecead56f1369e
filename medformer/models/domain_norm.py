"""BatchNorm with statistics per imaging modality (domain-specific BatchNorm) and one affine.

One BatchNorm over a multi-task batch normalises a breast ultrasound with statistics dominated by
chest X-rays: re-estimating the stem's statistics on BreastMNIST alone raised a four-task model's
test AUC there by 0.03-0.06 (docs/notes/2026-12-backbone-ablation.md). Here each modality keeps its
own batch and running statistics; the affine, and so every parameter, stays shared. A batch of one
modality in one process goes through F.batch_norm exactly as nn.BatchNorm's does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STATS = ("running_mean", "running_var", "seen")


class _Stats(nn.Module):
    """Running statistics of one modality and the number of images they were tracked over."""

    def __init__(self, mean: Tensor, var: Tensor):
        super().__init__()
        self.register_buffer("running_mean", mean.clone())
        self.register_buffer("running_var", var.clone())
        self.register_buffer("seen", torch.zeros((), dtype=torch.float64))


def pooled_statistics(stats: list[tuple[Tensor, Tensor, Tensor]], channels: int) -> tuple[Tensor, Tensor]:
    """Mean and variance of the mixture of the modalities' (mean, var, images seen)."""
    weights = torch.stack([seen for _, _, seen in stats]).float() if stats else torch.zeros(0)
    if not stats or weights.sum() == 0:
        return torch.zeros(channels), torch.ones(channels)
    weights = (weights / weights.sum())[:, None]
    means, variances = torch.stack([m for m, _, _ in stats]), torch.stack([v for _, v, _ in stats])
    mean = (weights * means).sum(0)
    return mean, (weights * (variances + (means - mean) ** 2)).sum(0)


class DomainBatchNorm(nn.Module):
    """[N, C, *spatial] normalised by the statistics of each sample's modality.

    In eval, a modality without statistics (or `domains` None) is normalised by the mixture of all
    modalities' (`pooled`); a modality added later (fine-tuning on a new one) starts from it.
    `reduce`, when set (`sync_batchnorm` sets a sum over processes with gradient), makes the
    training statistics span all processes, as synced BatchNorm's do.
    """

    reduce: Callable[[Tensor], Tensor] | None = None

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.domains = nn.ModuleDict()

    def pooled(self) -> tuple[Tensor, Tensor]:
        stats = [(s.running_mean, s.running_var, s.seen) for s in self.domains.values()]
        mean, var = pooled_statistics(stats, len(self.weight))
        return mean.to(self.weight), var.to(self.weight)

    def add_domain(self, name: str) -> None:
        if name not in self.domains:
            self.domains[name] = _Stats(*self.pooled())

    def adapt_state(self, state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
        """`state` with this layer's statistics in its layout. A BatchNorm's (the stem's norm before
        this one) become every modality's; modalities that the checkpoint has and this layer lacks
        are added, and those it lacks start from the mixture of its modalities."""
        state = dict(state)
        domains = prefix + "domains."
        if prefix + "running_mean" in state:  # nn.BatchNorm's layout
            mean, var = state.pop(prefix + "running_mean"), state.pop(prefix + "running_var")
            seen = state.pop(prefix + "num_batches_tracked", torch.ones(())).to(torch.float64)
            for name in self.domains:
                state.update({f"{domains}{name}.{k}": v for k, v in zip(STATS, (mean, var, seen), strict=True)})
            return state
        theirs = sorted({k[len(domains):].rsplit(".", 1)[0] for k in state if k.startswith(domains)})
        if not theirs:
            return state
        mean, var = pooled_statistics([tuple(state[f"{domains}{n}.{k}"] for k in STATS) for n in theirs], len(self.weight))
        for name in theirs:
            self.add_domain(name)
        for name in self.domains:
            for key, value in zip(STATS, (mean, var, torch.zeros((), dtype=torch.float64)), strict=True):
                state.setdefault(f"{domains}{name}.{key}", value)
        return state

    def forward(self, x: Tensor, domains: list[str] | None) -> Tensor:
        """`domains`: each sample's modality (None in eval: the pooled statistics for all)."""
        if self.training and domains is None:
            raise ValueError("DomainBatchNorm needs each image's modality in training")
        names = {None} if domains is None else set(domains)
        if self.training and not names <= set(self.domains):
            missing = sorted(names - set(self.domains))
            raise KeyError(f"DomainBatchNorm has no statistics for modality {missing}: add the domain first")
        if len(names) == 1 and not (self.training and self.reduce is not None):
            return self._one_domain(x, names.pop())
        shape = (len(x), -1) + (1,) * (x.dim() - 2)
        idx = self._index(domains, x.device)
        if self.training:
            mean, var = self._batch_stats(x, idx)
        else:  # row K of the stacked statistics: the pooled ones, for modalities without their own
            pooled_mean, pooled_var = self.pooled()
            mean = torch.stack([*(s.running_mean for s in self.domains.values()), pooled_mean])[idx]
            var = torch.stack([*(s.running_var for s in self.domains.values()), pooled_var])[idx]
        y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        return y * self.weight.reshape(1, -1, *shape[2:]) + self.bias.reshape(1, -1, *shape[2:])

    def _one_domain(self, x: Tensor, name: str | None) -> Tensor:
        """A batch of one modality in one process: F.batch_norm with that modality's statistics (the
        same computation and speed as nn.BatchNorm: single-task runs are what they were with it)."""
        if name in self.domains:
            stats = self.domains[name]
            mean, var = stats.running_mean, stats.running_var
            if self.training:
                stats.seen += len(x)
        else:
            mean, var = self.pooled()
        return F.batch_norm(x, mean, var, self.weight, self.bias, self.training, self.momentum, self.eps)

    def _index(self, domains: list[str], device: torch.device) -> Tensor:
        """Each sample's position among the modalities (their number K for one without statistics)."""
        position = {name: k for k, name in enumerate(self.domains)}
        return torch.tensor([position.get(d, len(position)) for d in domains], device=device, dtype=torch.long)

    def _batch_stats(self, x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample [N, C] mean and (biased) variance of its modality's part of the batch (of the
        global batch, with `reduce`); `idx`: each sample's modality position."""
        names = list(self.domains.keys())
        spatial = list(range(2, x.dim()))
        per_pixel = math.prod(x.shape[2:])
        counts = torch.bincount(idx, minlength=len(names)).to(x.dtype) * per_pixel  # [K] values per channel
        sums = x.new_zeros(len(names), x.shape[1]).index_add(0, idx, x.sum(spatial))
        if self.reduce is not None:
            totals = self.reduce(torch.cat([sums, counts[:, None]], 1))
            sums, counts = totals[:, :-1], totals[:, -1].detach()
        mean_k = sums / counts.clamp(min=1)[:, None]
        centred = x - mean_k[idx].reshape(len(x), -1, *[1] * len(spatial))
        squares = x.new_zeros(len(names), x.shape[1]).index_add(0, idx, (centred * centred).sum(spatial))
        if self.reduce is not None:
            squares = self.reduce(squares)
        var_k = squares / counts.clamp(min=1)[:, None]
        self._update_running(names, mean_k.detach(), var_k.detach(), counts, per_pixel)
        return mean_k[idx], var_k[idx]

    @torch.no_grad()
    def _update_running(self, names: list[str], mean_k: Tensor, var_k: Tensor, values: Tensor, per_pixel: int) -> None:
        """Each modality's running statistics, as BatchNorm's (unbiased variance), from `values` of it."""
        for k, name in enumerate(names):
            n = values[k].item()
            if n == 0:
                continue
            stats = self.domains[name]
            stats.seen += n / per_pixel
            stats.running_mean.lerp_(mean_k[k], self.momentum)
            stats.running_var.lerp_(var_k[k] * n / max(n - 1, 1), self.momentum)
