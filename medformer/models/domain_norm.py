"""BatchNorm with statistics per imaging modality (domain-specific BatchNorm) and one affine.

One BatchNorm over a multi-task batch normalises a breast ultrasound with statistics dominated by
chest X-rays: re-estimating the stem's statistics on BreastMNIST alone raised a four-task model's
test AUC there by 0.03-0.06 (docs/notes/2026-12-backbone-ablation.md). Here each modality keeps its
own batch and running statistics; the affine, and so every parameter, stays shared. With one
modality in the data it computes exactly what BatchNorm does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class _Stats(nn.Module):
    def __init__(self, mean: Tensor, var: Tensor):
        super().__init__()
        self.register_buffer("running_mean", mean.clone())
        self.register_buffer("running_var", var.clone())


class DomainBatchNorm(nn.Module):
    """[N, C, *spatial] normalised by the statistics of each sample's modality.

    `running_mean`/`running_var` pool every modality; a modality added later (fine-tuning on a new
    one) starts from them, and they normalise a modality the model has no statistics for in eval.
    `reduce`, when set (`sync_batchnorm` sets a sum over processes with gradient), makes the
    training statistics span all processes, as synced BatchNorm's do.
    """

    reduce: Callable[[Tensor], Tensor] | None = None

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.pooled = _Stats(torch.zeros(channels), torch.ones(channels))
        self.domains = nn.ModuleDict()

    def add_domain(self, name: str) -> None:
        if name not in self.domains:
            self.domains[name] = _Stats(self.pooled.running_mean, self.pooled.running_var)

    def adapt_state(self, state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
        """`state` with this layer's statistics in its layout. A BatchNorm's (the stem's norm before
        this one) become the pooled and every modality's; modalities that the checkpoint has and
        this layer lacks are added, and those it lacks start from its pooled statistics."""
        state = dict(state)
        if prefix + "running_mean" in state:
            for stat in ("running_mean", "running_var"):
                state[f"{prefix}pooled.{stat}"] = state.pop(prefix + stat)
            state.pop(prefix + "num_batches_tracked", None)
        if prefix + "pooled.running_mean" not in state:
            return state
        domains = prefix + "domains."
        for name in sorted({k[len(domains):].rsplit(".", 1)[0] for k in state if k.startswith(domains)}):
            self.add_domain(name)
        for name in self.domains:
            for stat in ("running_mean", "running_var"):
                state.setdefault(f"{domains}{name}.{stat}", state[f"{prefix}pooled.{stat}"])
        return state

    def forward(self, x: Tensor, domains: list[str] | None) -> Tensor:
        """`domains`: each sample's modality (None in eval: the pooled statistics for all)."""
        shape = (len(x), -1) + (1,) * (x.dim() - 2)
        if self.training:
            if domains is None:
                raise ValueError("DomainBatchNorm needs each image's modality in training")
            mean, var = self._batch_stats(x, domains)
        else:
            domains = [""] * len(x) if domains is None else domains
            stats = [self.domains[d] if d in self.domains else self.pooled for d in domains]
            mean = torch.stack([s.running_mean for s in stats]) if stats else x.new_zeros(0, x.shape[1])
            var = torch.stack([s.running_var for s in stats]) if stats else x.new_zeros(0, x.shape[1])
        y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        return y * self.weight.reshape(1, -1, *shape[2:]) + self.bias.reshape(1, -1, *shape[2:])

    def _batch_stats(self, x: Tensor, domains: list[str]) -> tuple[Tensor, Tensor]:
        """Per-sample [N, C] mean and (biased) variance of its modality's part of the batch."""
        missing = sorted(set(domains) - set(self.domains.keys()))
        if missing:
            raise KeyError(f"DomainBatchNorm has no statistics for modality {missing}: add the domain first")
        names = list(self.domains.keys())
        idx = torch.tensor([names.index(d) for d in domains], device=x.device, dtype=torch.long)
        spatial = list(range(2, x.dim()))
        per_pixel = x[0, 0].numel() if len(x) else 1
        counts = torch.bincount(idx, minlength=len(names)).to(x.dtype) * per_pixel  # [K]
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
        self._update_running(names, mean_k.detach(), var_k.detach(), counts)
        return mean_k[idx], var_k[idx]

    @torch.no_grad()
    def _update_running(self, names: list[str], mean_k: Tensor, var_k: Tensor, counts: Tensor) -> None:
        n = counts.sum()
        if n < 2:
            return
        mean = (mean_k * counts[:, None]).sum(0) / n  # the whole batch's, for the pooled statistics
        var = ((var_k + (mean_k - mean) ** 2) * counts[:, None]).sum(0) / n
        updates = [(self.domains[name], mean_k[k], var_k[k], counts[k]) for k, name in enumerate(names)]
        for stats, m, v, c in [*updates, (self.pooled, mean, var, n)]:
            if c < 2:
                continue
            stats.running_mean.lerp_(m, self.momentum)
            stats.running_var.lerp_(v * c / (c - 1), self.momentum)  # unbiased, as BatchNorm keeps it
