"""VICReg (Bardes et al. 2022) and the Medformer thesis variant with a cosine + MSE invariance."""

from __future__ import annotations

import torch.nn.functional as F
from lightly.loss.vicreg_loss import covariance_loss, invariance_loss, variance_loss
from lightly.models.modules.heads import VICRegProjectionHead
from torch import Tensor, nn

from ...config.pretrain import SSLConfig
from ...data.batch import Inputs
from .base import SSLObjective, fp32, register
from .dist import gather_with_grad


@register("vicreg")
class VICReg(SSLObjective):
    """lightly's VICRegLoss(gather_distributed=True), returned as its three weighted terms.

    Same computation as lightly's VICRegLoss.forward (its own invariance/variance/covariance
    functions): invariance on local rows, variance and covariance on the embeddings gathered with
    gradient. The terms are returned separately so each is logged; they sum to lightly's loss.
    """

    loss_names = ("ssl/invariance", "ssl/variance", "ssl/covariance")

    def __init__(self, model: nn.Module, cfg: SSLConfig):
        super().__init__(model, cfg)
        s = self.settings
        hidden = self.pick(s.proj_hidden_dim, 1024, 8192)
        self.projector = VICRegProjectionHead(
            self.embed_dim, hidden, s.proj_output_dim or hidden,
            num_layers=s.proj_layers,
        )
        self.eps = 1e-4

    def invariance(self, z0: Tensor, z1: Tensor) -> dict[str, Tensor]:
        return {"ssl/invariance": self.settings.invariance_weight * invariance_loss(z0, z1)}

    def terms(self, view0: Inputs, view1: Inputs, h0: Tensor, h1: Tensor) -> dict[str, Tensor]:
        return fp32(self.vicreg_terms, self.projector(h0), self.projector(h1))

    def vicreg_terms(self, z0: Tensor, z1: Tensor) -> dict[str, Tensor]:
        terms = self.invariance(z0, z1)
        z0, z1 = gather_with_grad(z0), gather_with_grad(z1)
        variance = 0.5 * (variance_loss(z0, self.eps) + variance_loss(z1, self.eps))
        terms["ssl/variance"] = self.settings.variance_weight * variance
        terms["ssl/covariance"] = self.settings.covariance_weight * (covariance_loss(z0) + covariance_loss(z1))
        return terms


@register("vicreg_thesis")
class VICRegThesis(VICReg):
    """VICReg whose invariance term is lambda * (w_cos * (1 - cos(z0, z1)) + w_mse * MSE(z0, z1)).

    Written here because lightly's VICRegLoss hard-codes the invariance as F.mse_loss and has no
    hook for another one; the variance and covariance terms reuse lightly's functions unchanged.
    The cosine term ignores the embedding scale, the MSE term ties it; both are local-row means.
    """

    loss_names = ("ssl/invariance_cosine", "ssl/invariance_mse", "ssl/variance", "ssl/covariance")

    def invariance(self, z0: Tensor, z1: Tensor) -> dict[str, Tensor]:
        s = self.settings
        lam = s.invariance_weight
        cosine = (1 - F.cosine_similarity(z0, z1, dim=1)).mean()
        return {
            "ssl/invariance_cosine": lam * s.cosine_weight * cosine,
            "ssl/invariance_mse": lam * s.mse_weight * invariance_loss(z0, z1),
        }
