"""BYOL (Grill et al. 2020): online projector + predictor regress a momentum target."""

from __future__ import annotations

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from torch import Tensor, nn

from ...config.pretrain import SSLConfig
from ...data.batch import Inputs
from .base import MomentumObjective, fp32, register


@register("byol")
class BYOL(MomentumObjective):
    """Symmetric negative cosine similarity; momentum cosine-scheduled (default 0.99 -> 1).

    The loss is a mean over local rows and the target is computed without gradient, so the mean
    over ranks is the global loss; projector/predictor BatchNorm is synced across processes."""

    loss_names = ("ssl/neg_cosine",)

    def __init__(self, model: nn.Module, cfg: SSLConfig):
        super().__init__(model, cfg)
        s = self.settings
        hidden = self.pick(s.proj_hidden_dim, 1024, 4096)
        out = s.proj_output_dim
        self.projector = BYOLProjectionHead(self.embed_dim, hidden, out)
        self.predictor = BYOLPredictionHead(out, s.pred_hidden_dim or hidden, out)
        self.model_momentum = self.add_momentum_twin(self.model)
        self.projector_momentum = self.add_momentum_twin(self.projector)
        self.criterion = NegativeCosineSimilarity()

    @torch.no_grad()
    def target(self, inputs: Inputs) -> Tensor:
        return self.projector_momentum(self.model_momentum.encode(inputs))

    def terms(self, view0: Inputs, view1: Inputs, h0: Tensor, h1: Tensor) -> dict[str, Tensor]:
        p0, p1 = self.predictor(self.projector(h0)), self.predictor(self.projector(h1))
        z0, z1 = self.target(view0), self.target(view1)
        return {"ssl/neg_cosine": 0.5 * (fp32(self.criterion, p0, z1) + fp32(self.criterion, p1, z0))}
