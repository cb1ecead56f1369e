"""Pseudo-label classification (RadiologyNET-style), alone or summed with an SSL objective.

Cluster labels become one more task of the model: a task latent and a K-way head named
`pseudolabel`. Every view of a batch is classified. With an SSL objective the classification
reuses the SSL pass through the body (`encode_and_classify`), so adding it costs only the head.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.batch import Inputs
from ..errors import UserError
from .ssl import SSLObjective
from .ssl.dist import sync_batchnorm, world_size

TASK = "pseudolabel"
LOSS = "pseudolabel/ce"


def _upcast(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def as_task(inputs: Inputs, task: str) -> Inputs:
    """The same images with every row assigned to `task` (its latent and head)."""
    return dataclasses.replace(inputs, task=[task] * len(inputs))


class PseudoLabelObjective(nn.Module):
    """Cross-entropy on the `pseudolabel` head (label -1: ignored), plus the SSL terms if given.

    Exposes what the pretraining monitor reads from an SSL objective: `model`, `last_losses`,
    `last_embeddings` and `on_step_end`.
    """

    def __init__(self, model: nn.Module, n_classes: int, ssl: SSLObjective | None = None,
                 label_smoothing: float = 0.0, sync_bn: bool = True):
        super().__init__()
        if n_classes < 2:
            raise UserError(f"pseudo-label classification needs >= 2 classes, got {n_classes}")
        model.add_task(TASK, n_classes)
        if ssl is None:
            self.model = sync_batchnorm(model) if sync_bn else model
        self.ssl = ssl
        self.n_classes = n_classes
        self.label_smoothing = label_smoothing
        self.last_losses: dict[str, Tensor] = {}
        self.last_accuracy = float("nan")  # head top-1 on the last batch's labeled rows, first view
        self._embeddings: Tensor | None = None
        self._logits: list[Tensor] = []
        if ssl is not None:
            ssl.encoder_fn = self._encode_and_classify

    def __getattr__(self, name: str):
        # With SSL the encoder is registered once, as ssl.model: a module registered under two
        # names gets BatchNorm buffers that safetensors checkpoints cannot load back.
        if name == "model" and self.__dict__.get("_modules", {}).get("ssl") is not None:
            return self._modules["ssl"].model
        return super().__getattr__(name)

    @property
    def last_embeddings(self) -> Tensor | None:
        return self.ssl.last_embeddings if self.ssl is not None else self._embeddings

    def _encode_and_classify(self, inputs: Inputs) -> Tensor:
        embedding, logits = self.model.encode_and_classify(as_task(inputs, TASK))
        self._logits.append(logits[TASK])
        return embedding

    def classification_loss(self, targets: Tensor) -> Tensor:
        """Cross-entropy averaged over the labeled rows of all processes and over the views.

        Each process divides its sum by the global labeled count / world size, so the mean over
        processes (what DDP's gradient averaging computes) is the global-batch mean even when
        processes hold different numbers of labeled rows."""
        labeled = targets >= 0
        count = labeled.sum().float()
        if world_size() > 1:
            count = count.clone()
            torch.distributed.all_reduce(count)
            count = count / world_size()
        if labeled.any():
            predicted = self._logits[0].detach()[labeled].argmax(1)
            self.last_accuracy = float((predicted == targets[labeled]).float().mean())
        total = sum(
            F.cross_entropy(_upcast(logits[labeled]), targets[labeled], label_smoothing=self.label_smoothing,
                            reduction="sum")
            for logits in self._logits
        )
        count = torch.where(count > 0, count, torch.ones_like(count))  # no labeled row: loss 0, graph kept for DDP
        return total / (count * len(self._logits))

    def forward(self, batch: dict) -> dict[str, Tensor]:
        views = batch.get("views") or [batch["inputs"]]
        targets = batch["pseudolabels"].to(views[0].groups[0][0].device)
        self._logits = []
        losses: dict[str, Tensor] = {}
        if self.ssl is not None:
            losses.update(self.ssl(batch))
        else:
            embeddings = [self._encode_and_classify(v) for v in views]
            self._embeddings = embeddings[0].detach()
        losses[LOSS] = self.classification_loss(targets)
        self._logits = []
        self.last_losses = {k: v.detach() for k, v in losses.items()}
        return losses

    def on_step_end(self, step: int, total_steps: int) -> None:
        if self.ssl is not None:
            self.ssl.on_step_end(step, total_steps)
