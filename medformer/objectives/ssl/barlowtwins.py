"""Barlow Twins (Zbontar et al. 2021): cross-correlation of the two views' embeddings -> identity."""

from __future__ import annotations

from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from torch import Tensor, nn

from ...config.pretrain import SSLConfig
from ...data.batch import Inputs
from .base import SSLObjective, fp32, register
from .dist import gather_with_grad


@register("barlowtwins")
class BarlowTwins(SSLObjective):
    """lightly's BarlowTwinsLoss on the embeddings of the global batch, gathered with gradient.

    Not `gather_distributed=True`: lightly then standardizes each process's embeddings with that
    process's own batch statistics and only averages the cross-correlation matrices, which is not
    the single-process loss of the global batch (and all-reduces a D x D matrix). Gathering the
    [B, D] embeddings first gives every rank the exact global loss, whose DDP gradient is exact.
    """

    loss_names = ("ssl/barlowtwins",)

    def __init__(self, model: nn.Module, cfg: SSLConfig):
        super().__init__(model, cfg)
        s = self.settings
        hidden = self.pick(s.proj_hidden_dim, 1024, 8192)
        self.projector = BarlowTwinsProjectionHead(self.embed_dim, hidden, s.proj_output_dim or hidden)
        self.criterion = BarlowTwinsLoss(lambda_param=s.lambda_offdiag, gather_distributed=False)

    def terms(self, view0: Inputs, view1: Inputs, h0: Tensor, h1: Tensor) -> dict[str, Tensor]:
        z0, z1 = gather_with_grad(self.projector(h0)), gather_with_grad(self.projector(h1))
        return {"ssl/barlowtwins": fp32(self.criterion, z0, z1)}
