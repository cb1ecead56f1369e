"""The pretraining objective: SSL, pseudo-label classification and pretext tasks as named,
weighted loss terms of one run.

SSL and pseudo-label classification share one pass through the body per view
(`encode_and_classify` when pseudo-labels are on, else `encode`); each pretext task changes its
input (rotates, shuffles, masks, corrupts) and so makes its own pass, on the first view. The
Trainer weights the terms with `loss_weights` and logs each one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import ConfigError
from ..config.pretrain import PretrainConfig
from .pretext import PretextTerm, pretext_loss_names, row_seeds
from .pseudolabel import LOSS, TASK, PseudoLabelTerm, as_task
from .ssl import SSL_METHODS, SSLObjective
from .ssl.dist import sync_batchnorm


def loss_names(cfg: PretrainConfig) -> list[str]:
    """The loss terms a pretraining run logs (and `loss_weights` may weight)."""
    names = list(SSL_METHODS[cfg.ssl.method].loss_names) if cfg.ssl.method != "none" else []
    return names + ([LOSS] if cfg.pseudolabel.labels else []) + pretext_loss_names(cfg.pretext)


def check_loss_weights(cfg: PretrainConfig) -> None:
    """Every weight names a term of the run and is >= 0, and not every term is weighted 0."""
    names = loss_names(cfg)
    for key, weight in cfg.loss_weights.items():
        if key not in names:
            raise ConfigError(f"config key 'loss_weights.{key}' names no loss term of this run; its terms: "
                              f"{', '.join(names)}")
        if not (math.isfinite(weight) and weight >= 0):
            raise ConfigError(f"config key 'loss_weights.{key}' must be a number >= 0, got {weight}")
    if names and all(cfg.loss_weights.get(n, 1.0) == 0 for n in names):
        raise ConfigError(f"loss_weights set every loss term of this run to 0 ({', '.join(names)}): "
                          "give at least one a positive weight")


class PretrainObjective(nn.Module):
    """Any of an SSL method, pseudo-label classification and pretext terms, summed by the Trainer.

    Exposes what the Trainer and the pretraining monitor read: `model`, `last_losses`,
    `last_embeddings` (first view's representation), `last_accuracy` (pseudo-label head) and
    `on_step_end`. The encoder is registered once, as `ssl.model` with SSL (a module registered
    under two names gets BatchNorm buffers that safetensors checkpoints cannot load back), else
    as `model`; pretext terms get it as an argument.
    """

    def __init__(self, model: nn.Module, ssl: SSLObjective | None = None, pseudolabel: PseudoLabelTerm | None = None,
                 pretext: list[PretextTerm] = (), seed: int = 0, sync_bn: bool = True):
        super().__init__()
        if ssl is None and pseudolabel is None and not pretext:
            raise ValueError("a pretraining objective needs an SSL method, pseudo-labels or a pretext task")
        self.ssl = ssl
        if ssl is None:
            self.model = sync_batchnorm(model) if sync_bn else model
        self.pseudolabel = pseudolabel
        self.pretext = nn.ModuleDict({term.name: term for term in pretext})
        self.seed = seed
        # forward calls so far: with the rows' (dataset, index) it seeds the pretext draws, and is
        # saved with the checkpoint, so a resumed run draws what the uninterrupted one would
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.last_losses: dict[str, Tensor] = {}
        self.last_embeddings: Tensor | None = None

    def __getattr__(self, name: str):
        if name == "model" and self.__dict__.get("_modules", {}).get("ssl") is not None:
            return self._modules["ssl"].model
        return super().__getattr__(name)

    @property
    def last_accuracy(self) -> float:
        return self.pseudolabel.last_accuracy if self.pseudolabel is not None else float("nan")

    def shared_pass(self, views: list) -> tuple[list[Tensor], list[Tensor]]:
        """(embedding per view, pseudo-label logits per view) of the views SSL and pseudo-labels read."""
        n = 2 if self.ssl is not None else (len(views) if self.pseudolabel is not None else 0)
        embeddings, logits = [], []
        for view in views[:n]:
            if self.pseudolabel is not None:
                h, out = self.model.encode_and_classify(as_task(view, TASK))
                logits.append(out[TASK])
            else:
                h = self.model.encode(view)
            embeddings.append(h)
        return embeddings, logits

    def forward(self, batch: dict) -> dict[str, Tensor]:
        views = batch.get("views") or [batch["inputs"]]
        if self.ssl is not None and len(views) < 2:
            raise ValueError(f"{self.ssl.method} needs a batch with >= 2 views (batch['views']); "
                             "build the dataset with MultiViewTransform (views.n_views >= 2)")
        embeddings, logits = self.shared_pass(views)
        losses: dict[str, Tensor] = {}
        if self.ssl is not None:
            losses.update(self.ssl.terms(views[0], views[1], embeddings[0], embeddings[1]))
        if self.pseudolabel is not None:
            losses[LOSS] = self.pseudolabel.loss(logits, batch["pseudolabels"].to(logits[0].device))
        if len(self.pretext):
            seeds = row_seeds(self.seed, int(self.calls), batch["dataset"], batch["index"])
            for term in self.pretext.values():
                losses[term.loss_name] = term(self.model, views[0], seeds)
        if self.training:
            self.calls += 1
        first = embeddings[0] if embeddings else next(iter(self.pretext.values())).last_embedding
        self.last_embeddings = first.detach()
        self.last_losses = {k: v.detach() for k, v in losses.items()}
        return losses

    def on_step_end(self, step: int, total_steps: int) -> None:
        if self.ssl is not None:
            self.ssl.on_step_end(step, total_steps)
