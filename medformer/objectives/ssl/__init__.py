"""Self-supervised objectives on a shared base with a registry (one file per method).

`build_ssl_objective(name, model, cfg)` -> an nn.Module whose forward(batch with "views") returns
named loss terms; momentum methods update their EMA copies in `on_step_end(step, total_steps)`.
"""

from . import barlowtwins, byol, moco, simclr, vicreg  # noqa: F401  (register the methods)
from .base import SSL_METHODS, MomentumObjective, SSLObjective, build_ssl_objective, register
from .collapse import CollapseDetector, effective_rank, embedding_std
from .dist import DistBatchNorm, sync_batchnorm

__all__ = [
    "SSL_METHODS",
    "CollapseDetector",
    "DistBatchNorm",
    "MomentumObjective",
    "SSLObjective",
    "build_ssl_objective",
    "effective_rank",
    "embedding_std",
    "register",
    "sync_batchnorm",
]
