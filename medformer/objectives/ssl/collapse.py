"""Collapse indicators of a batch of embeddings: per-dim std and effective rank."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)


def embedding_std(z: Tensor) -> float:
    """Mean per-dimension std of L2-normalized embeddings: ~1/sqrt(D) when healthy, ~0 collapsed."""
    if len(z) < 2:
        return math.nan
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean().item()


def effective_rank(z: Tensor, eps: float = 1e-12) -> float:
    """exp(entropy) of the normalized singular values (Roy & Vetterli 2007; RankMe): 1..min(B, D)."""
    s = torch.linalg.svdvals(z.detach().float())
    p = s / (s.sum() + eps) + eps
    return math.exp(-(p * p.log()).sum().item())


class CollapseDetector:
    """Warns once when the std or the effective rank of the embeddings drops to collapse levels."""

    def __init__(self, std_factor: float = 0.1, rank_fraction: float = 0.01):
        self.std_factor = std_factor
        self.rank_fraction = rank_fraction
        self.warned = False

    def __call__(self, z: Tensor, step: int) -> dict[str, float]:
        d = z.shape[1]
        stats = {"embedding/std": embedding_std(z), "embedding/effective_rank": effective_rank(z)}
        std_low = stats["embedding/std"] < self.std_factor / math.sqrt(d)
        rank_low = stats["embedding/effective_rank"] < self.rank_fraction * d
        stats["embedding/collapsed"] = float(std_low or rank_low)
        if (std_low or rank_low) and not self.warned:
            self.warned = True
            logger.warning(
                "representation collapse suspected at step %d: embedding std %.2e (healthy ~%.2e), "
                "effective rank %.1f of %d dims; lower train.lr, check the views or the loss weights",
                step, stats["embedding/std"], 1 / math.sqrt(d), stats["embedding/effective_rank"], d,
            )
        return stats
