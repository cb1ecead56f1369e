"""Shared base of the SSL objectives, momentum-encoder helpers and the method registry."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TypeVar

import torch
from lightly.models.utils import update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from ...config import ConfigError
from ...config.pretrain import SSLConfig
from ...data.batch import Inputs
from .dist import sync_batchnorm

SSL_METHODS: dict[str, type[SSLObjective]] = {}
T = TypeVar("T")

# Encoders up to this width get the "small" head defaults: Medformer small (128) vs large (512), as
# in the thesis; CNNs by their feature width, so ResNet-18/34 (512) keep small heads and ResNet-50
# (2048) gets the large ones (a 3 x 8192 VICReg expander on a 512-d ResNet-18 is ~138 M parameters).
SMALL_EMBED_DIM = {"medformer": 256, "cnn": 1536}


def register(name: str) -> Callable[[type[SSLObjective]], type[SSLObjective]]:
    def add(cls: type[SSLObjective]) -> type[SSLObjective]:
        cls.method = name
        SSL_METHODS[name] = cls
        return cls

    return add


class SSLObjective(nn.Module):
    """Two views -> `model.encode` -> method heads -> named loss terms (views beyond the first
    two are ignored: no multi-crop yet).

    Subclasses implement `terms(view0, view1, h0, h1)` from the online embeddings h of the two
    views, which the caller computes (`forward` with `model.encode`; a composite pretraining
    objective from the pass it shares with other terms); momentum methods encode the views again
    with their own twins. The representation of the first view of the last batch is kept
    (detached) in `last_embeddings` for collapse monitoring, the terms in `last_losses`.
    """

    method = "base"
    loss_names: tuple[str, ...] = ()  # the keys `terms` returns

    def __init__(self, model: nn.Module, cfg: SSLConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.settings = getattr(cfg, self.method)  # this method's section of the config (ssl.<method>)
        self.embed_dim = int(model.embed_dim)
        self.last_embeddings: Tensor | None = None
        self.last_losses: dict[str, Tensor] = {}

    @property
    def is_small(self) -> bool:
        family = "medformer" if hasattr(self.model, "output_adapt") else "cnn"
        return self.embed_dim <= SMALL_EMBED_DIM[family]

    def pick(self, value, small, large):
        """A configured value, else the small- or large-model default."""
        if value is not None:
            return value
        return small if self.is_small else large

    def forward(self, batch: dict) -> dict[str, Tensor]:
        views = batch.get("views")
        if not views or len(views) < 2:
            raise ValueError(
                f"{self.method} needs a batch with >= 2 views (batch['views']); "
                "build the dataset with MultiViewTransform (views.n_views >= 2)"
            )
        h0, h1 = self.model.encode(views[0]), self.model.encode(views[1])
        losses = self.terms(views[0], views[1], h0, h1)
        self.last_embeddings = h0.detach()
        self.last_losses = {k: v.detach() for k, v in losses.items()}
        return losses

    def terms(self, view0: Inputs, view1: Inputs, h0: Tensor, h1: Tensor) -> dict[str, Tensor]:
        """Named loss terms from two views and their online embeddings h = model.encode(view)."""
        raise NotImplementedError

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called by the Trainer after every optimizer step (momentum updates)."""


def fp32(loss_fn: Callable[..., T], *tensors: Tensor) -> T:
    """`loss_fn` with autocast off and half-precision inputs upcast to float32: softmaxes over
    many negatives, D x D correlations and variances lose too much in bf16/fp16."""
    with torch.autocast(tensors[0].device.type, enabled=False):
        return loss_fn(*(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors))


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy that only ever changes by EMA (no gradient)."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


class MomentumObjective(SSLObjective):
    """SSL objective with momentum (EMA) copies of some online modules.

    `momentum_pairs` lists (online, target); on_step_end moves each target towards its online
    module with a momentum cosine-scheduled from `momentum_start` to `momentum_end` (constant when
    the settings leave momentum_end at None).
    """

    default_momentum: tuple[float, float]  # (small, large) start value, for settings that allow momentum None

    def __init__(self, model: nn.Module, cfg: SSLConfig):
        super().__init__(model, cfg)
        self.momentum_pairs: list[tuple[nn.Module, nn.Module]] = []
        start = self.settings.momentum
        self.momentum_start = float(start if start is not None else self.pick(None, *self.default_momentum))
        end = self.settings.momentum_end
        self.momentum_end = float(self.momentum_start if end is None else end)
        self.current_momentum = self.momentum_start

    def add_momentum_twin(self, online: nn.Module) -> nn.Module:
        target = frozen_copy(online)
        self.momentum_pairs.append((online, target))
        return target

    def momentum_at(self, step: int, total_steps: int) -> float:
        return cosine_schedule(min(step, total_steps), max(total_steps, 1), self.momentum_start, self.momentum_end)

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        self.current_momentum = self.momentum_at(step, total_steps)
        for online, target in self.momentum_pairs:
            update_momentum(online, target, self.current_momentum)


def build_ssl_objective(name: str, model: nn.Module, cfg: SSLConfig | None = None) -> SSLObjective:
    """The registered SSL method `name` around `model` (which must have `encode` and `embed_dim`).

    With more than one process, BatchNorm layers (heads, CNN encoders, momentum copies) are
    converted to process-synced ones unless `cfg.sync_batchnorm` is false.
    """
    if name not in SSL_METHODS:
        raise ConfigError(f"unknown ssl.method {name!r}; choose from {', '.join(sorted(SSL_METHODS))}")
    cfg = cfg or SSLConfig(method=name)
    objective = SSL_METHODS[name](model, cfg)
    if cfg.sync_batchnorm:
        objective = sync_batchnorm(objective)
    return objective
