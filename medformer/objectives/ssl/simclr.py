"""SimCLR (Chen et al. 2020): NT-Xent over in-batch negatives from all processes."""

from __future__ import annotations

from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import Tensor, nn

from ...config.pretrain import SSLConfig
from ...data.batch import Inputs
from .base import SSLObjective, fp32, register


@register("simclr")
class SimCLR(SSLObjective):
    """Per rank the NT-Xent mean over its own rows with negatives gathered (with gradient) from
    every process; the mean over ranks is the global-batch loss, so DDP gradients are exact."""

    loss_names = ("ssl/ntxent",)

    def __init__(self, model: nn.Module, cfg: SSLConfig):
        super().__init__(model, cfg)
        s = self.settings
        hidden = self.pick(s.proj_hidden_dim, 1024, 2048)
        self.projector = SimCLRProjectionHead(
            self.embed_dim, hidden, self.pick(s.proj_output_dim, 128, 256),
            num_layers=s.proj_layers,
        )
        self.criterion = NTXentLoss(temperature=self.pick(s.temperature, 0.2, 0.1), gather_distributed=True)

    def terms(self, view0: Inputs, view1: Inputs, h0: Tensor, h1: Tensor) -> dict[str, Tensor]:
        return {"ssl/ntxent": fp32(self.criterion, self.projector(h0), self.projector(h1))}
