"""MoCo v2 (queue of momentum keys) and MoCo v3 (in-batch momentum keys, predictor)."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from lightly.models.modules import MoCoProjectionHead
from torch import Tensor, nn

from ...config.pretrain import SSLConfig
from ...data.batch import Inputs
from .base import MomentumObjective, fp32, register
from .dist import gather_no_grad, rank

QUEUE_SEED = 1234  # queue init independent of the global RNG: identical on every process


def info_nce(query: Tensor, positive: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """Cross-entropy of each query against its positive key and a shared set of (unit) negatives."""
    query, positive = F.normalize(query, dim=1), F.normalize(positive, dim=1)
    pos = (query * positive).sum(dim=1, keepdim=True)
    logits = torch.cat([pos, query @ negatives.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(query), dtype=torch.long, device=query.device))


@register("mocov2")
class MoCoV2(MomentumObjective):
    """Symmetric InfoNCE of online queries against momentum keys and a queue of past keys.

    Own queue rather than lightly's memory bank: lightly's bank buffers are non-persistent, so a
    resumed run would restart from a random queue; ours is saved with the checkpoint. Keys are
    all-gathered before they are enqueued, so every process (and a 1-process run on the same
    global batch) holds the same queue. The loss is a mean over local rows: mean over ranks =
    global loss; keys carry no gradient.
    """

    loss_names = ("ssl/infonce",)

    default_momentum = (0.99, 0.999)

    def __init__(self, model: nn.Module, cfg: SSLConfig):
        super().__init__(model, cfg)
        s = self.settings
        hidden = self.pick(s.proj_hidden_dim, 1024, 2048)
        out = s.proj_output_dim
        self.projector = MoCoProjectionHead(self.embed_dim, hidden, out, num_layers=s.proj_layers)
        self.model_momentum = self.add_momentum_twin(self.model)
        self.projector_momentum = self.add_momentum_twin(self.projector)
        self.temperature = s.temperature
        size = int(self.pick(s.queue_size, 4096, 65536))
        generator = torch.Generator().manual_seed(QUEUE_SEED)
        self.register_buffer("queue", F.normalize(torch.randn(size, out, generator=generator), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def key(self, inputs: Inputs) -> Tensor:
        return self.projector_momentum(self.model_momentum.encode(inputs))

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        keys = F.normalize(gather_no_grad(keys).to(self.queue.dtype), dim=1)[-len(self.queue):]
        rows = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % len(self.queue)
        self.queue[rows] = keys
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % len(self.queue))

    def terms(self, view0: Inputs, view1: Inputs, h0: Tensor, h1: Tensor) -> dict[str, Tensor]:
        q0, q1 = self.projector(h0), self.projector(h1)
        k0, k1 = self.key(view0), self.key(view1)
        negatives = self.queue.clone()  # enqueue below writes in place
        nce = partial(info_nce, temperature=self.temperature)
        loss = 0.5 * (fp32(nce, q0, k1, negatives) + fp32(nce, q1, k0, negatives))
        if self.training:
            self.enqueue(k1)
        return {"ssl/infonce": loss}


@register("mocov3")
class MoCoV3(MomentumObjective):
    """Symmetric contrastive loss of predicted queries against momentum keys of the other view,
    negatives = keys of the whole global batch (all-gathered). Each rank averages over its own
    queries (labels offset by rank), so the mean over ranks is the global loss."""

    loss_names = ("ssl/infonce",)

    def __init__(self, model: nn.Module, cfg: SSLConfig):
        super().__init__(model, cfg)
        s = self.settings
        hidden = self.pick(s.proj_hidden_dim, 1024, 4096)
        out = s.proj_output_dim
        self.projector = MoCoProjectionHead(
            self.embed_dim, hidden, out, num_layers=s.proj_layers, batch_norm=True
        )
        self.predictor = MoCoProjectionHead(
            out, s.pred_hidden_dim or hidden, out, num_layers=2, batch_norm=True
        )
        self.model_momentum = self.add_momentum_twin(self.model)
        self.projector_momentum = self.add_momentum_twin(self.projector)
        self.temperature = s.temperature

    def contrast(self, query: Tensor, key: Tensor) -> Tensor:
        query = F.normalize(query, dim=1)
        keys = F.normalize(gather_no_grad(key), dim=1)
        labels = torch.arange(len(query), device=query.device) + rank() * len(query)
        return 2 * self.temperature * F.cross_entropy(query @ keys.T / self.temperature, labels)

    @torch.no_grad()
    def key(self, inputs: Inputs) -> Tensor:
        return self.projector_momentum(self.model_momentum.encode(inputs))

    def terms(self, view0: Inputs, view1: Inputs, h0: Tensor, h1: Tensor) -> dict[str, Tensor]:
        q0, q1 = self.predictor(self.projector(h0)), self.predictor(self.projector(h1))
        k0, k1 = self.key(view0), self.key(view1)
        return {"ssl/infonce": fp32(self.contrast, q0, k1) + fp32(self.contrast, q1, k0)}
