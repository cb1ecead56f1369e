"""Heads of the segmentation and regression tasks, on any encoder (Medformer or CNN), 2D and 3D.

An encoder hands a head `DenseFeatures`: the images it read, spatial feature maps (finest first)
and context tokens. Medformer: its patch-token grid (stem + position embeddings, before the body)
and its body tokens; a CNN: its stage outputs, and the deepest one's positions as tokens.

Two kinds per task type (`model.dense_head`, per task `model.dense_heads`):
- transformer: task latents cross-attend the context tokens. Segmentation: one latent per class,
  and a pixel's logit for class k is its embedding's scaled dot product with latent k (Segmenter's
  mask transformer); pixel embeddings are the grid tokens after they cross-attend the context
  (Perceiver-IO decoding), upsampled, plus an embedding of the pixels. Regression: one latent ->
  LayerNorm -> Linear.
- cnn: segmentation: a convolutional decoder over the maps (FPN laterals, top-down upsampling with
  conv blocks, the pixels as finest skip); regression: a conv block over the deepest map, global
  average pooling, an MLP. Medformer's grid has not seen the body, so it first cross-attends the
  body tokens (the one attention layer of this head).

Regression heads predict `target_mean + target_sd * output`, with mean and sd of the training
targets set by `set_target_stats` (buffers, saved with the weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.domains import REGRESSION, SEGMENTATION, DatasetInfo
from .attention import Block
from .heads import head_width

HEAD_KINDS = ("transformer", "cnn")
DEFAULT_HEAD = "cnn"


@dataclass
class DenseFeatures:
    images: torch.Tensor  # [b, C, *S] as the encoder read them (2D: 3 channels)
    maps: list[torch.Tensor]  # [b, C_i, *g_i], finest first
    tokens: torch.Tensor  # [b, N, D] context


@dataclass(frozen=True)
class EncoderSpec:
    """What a head needs to know of its encoder's features for one dim."""

    map_channels: tuple[int, ...]
    token_dim: int
    grid_level: int  # the map a transformer head decodes to pixels (stride near 4)
    grid_has_context: bool  # False: the grid comes before the encoder's body (Medformer)
    spatial_dims: int

    @property
    def image_channels(self) -> int:
        return 3 if self.spatial_dims == 2 else 1


def _conv(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def _heads(dim: int) -> int:
    return next(h for h in (4, 2, 1) if dim % h == 0)


def resize(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear" if x.ndim == 4 else "trilinear", align_corners=False)


def _grid_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def _as_grid(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(len(like), tokens.shape[-1], *like.shape[2:])


class ConvBlock(nn.Sequential):
    """Two 3x3 convs with GroupNorm and GELU (GroupNorm: small batches, no synced statistics)."""

    def __init__(self, in_ch: int, out_ch: int, spatial_dims: int):
        conv = _conv(spatial_dims)
        super().__init__(
            conv(in_ch, out_ch, 3, padding=1, bias=False), nn.GroupNorm(_groups(out_ch), out_ch), nn.GELU(),
            conv(out_ch, out_ch, 3, padding=1, bias=False), nn.GroupNorm(_groups(out_ch), out_ch), nn.GELU(),
        )


def _conv_norm_act(in_ch: int, out_ch: int, spatial_dims: int) -> nn.Sequential:
    return nn.Sequential(_conv(spatial_dims)(in_ch, out_ch, 3, padding=1, bias=False),
                         nn.GroupNorm(_groups(out_ch), out_ch), nn.GELU())


class ContextFuse(nn.Module):
    """A feature map's positions cross-attend context tokens (residual): the grid learns what the body saw."""

    def __init__(self, channels: int, token_dim: int):
        super().__init__()
        self.block = Block(channels, _heads(channels), 2.0, context_dim=token_dim)

    def forward(self, grid: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return _as_grid(self.block(_grid_tokens(grid), tokens), grid)


class ConvSegmentationHead(nn.Module):
    """Convolutional decoder over the feature maps -> logits [b, n_classes, *S]."""

    def __init__(self, spec: EncoderSpec, n_classes: int, width: int = 32):
        super().__init__()
        sd, conv = spec.spatial_dims, _conv(spec.spatial_dims)
        self.fuse = None if spec.grid_has_context else ContextFuse(spec.map_channels[-1], spec.token_dim)
        self.lateral = nn.ModuleList(conv(c, width, 1) for c in spec.map_channels)
        self.up = nn.ModuleList(ConvBlock(2 * width, width, sd) for _ in spec.map_channels[:-1])
        fine = width // 2  # the full-resolution stage is the costly one (28^3 voxels in 3D): one conv each
        self.pixels = _conv_norm_act(spec.image_channels, fine, sd)
        self.last = _conv_norm_act(width + fine, fine, sd)
        self.classify = conv(fine, n_classes, 1)

    def forward(self, f: DenseFeatures) -> torch.Tensor:
        maps = list(f.maps)
        if self.fuse is not None:
            maps[-1] = self.fuse(maps[-1], f.tokens)
        x = self.lateral[-1](maps[-1])
        for i in range(len(maps) - 2, -1, -1):
            skip = self.lateral[i](maps[i])
            x = self.up[i](torch.cat([resize(x, skip.shape[2:]), skip], 1))
        pixels = self.pixels(f.images)
        x = self.last(torch.cat([resize(x, f.images.shape[2:]), pixels], 1))
        return self.classify(x)


class TransformerSegmentationHead(nn.Module):
    """Class latents attend the context; pixel embeddings . class latents -> logits [b, K, *S]."""

    def __init__(self, spec: EncoderSpec, n_classes: int, dim: int = 64):
        super().__init__()
        self.grid_level = spec.grid_level
        self.class_latents = nn.Parameter(torch.randn(n_classes, dim))
        self.context = nn.Linear(spec.token_dim, dim)
        self.classes = Block(dim, _heads(dim), 2.0, context_dim=dim)
        self.grid_in = nn.Linear(spec.map_channels[spec.grid_level], dim)
        self.decode = Block(dim, _heads(dim), 2.0, context_dim=dim)
        conv = _conv(spec.spatial_dims)
        self.pixels = conv(spec.image_channels, dim, 3, padding=1)
        self.pixel_mlp = nn.Sequential(conv(dim, dim, 1), nn.GELU(), conv(dim, dim, 1))
        self.norm_classes = nn.LayerNorm(dim)
        self.scale = dim**-0.5

    def forward(self, f: DenseFeatures) -> torch.Tensor:
        ctx = self.context(f.tokens)
        classes = self.norm_classes(self.classes(self.class_latents.expand(len(ctx), -1, -1), ctx))
        grid = f.maps[self.grid_level]
        decoded = _as_grid(self.decode(self.grid_in(_grid_tokens(grid)), ctx), grid)
        pixels = self.pixel_mlp(resize(decoded, f.images.shape[2:]) + self.pixels(f.images))
        pixels = F.group_norm(pixels, 1)  # LayerNorm over channels and positions, no affine
        return torch.einsum("bkc,bc...->bk...", classes, pixels) * self.scale


class _Regressor(nn.Module):
    """mean + sd * raw output, with the training targets' mean and sd as buffers."""

    def __init__(self):
        super().__init__()
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_sd", torch.ones(()))

    def set_target_stats(self, mean: float, sd: float) -> None:
        self.target_mean.fill_(mean)
        self.target_sd.fill_(sd)

    def scaled(self, raw: torch.Tensor) -> torch.Tensor:
        return self.target_mean + self.target_sd * raw.reshape(-1).float()


class TransformerRegressionHead(_Regressor):
    """A task latent cross-attends the context tokens -> LayerNorm -> Linear -> one value [b]."""

    def __init__(self, spec: EncoderSpec, dim: int = 64):
        super().__init__()
        self.latent = nn.Parameter(torch.randn(1, dim))
        self.context = nn.Linear(spec.token_dim, dim)
        self.block = Block(dim, _heads(dim), 2.0, context_dim=dim)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, 1)
        nn.init.zeros_(self.out.bias)

    def forward(self, f: DenseFeatures) -> torch.Tensor:
        ctx = self.context(f.tokens)
        z = self.norm(self.block(self.latent.expand(len(ctx), -1, -1), ctx)).mean(1)
        return self.scaled(self.out(z))


class ConvRegressionHead(_Regressor):
    """Conv block over the deepest map -> global average pool -> MLP -> one value [b]."""

    def __init__(self, spec: EncoderSpec, width: int = 64):
        super().__init__()
        self.fuse = None if spec.grid_has_context else ContextFuse(spec.map_channels[-1], spec.token_dim)
        self.conv = ConvBlock(spec.map_channels[-1], width, spec.spatial_dims)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, f: DenseFeatures) -> torch.Tensor:
        x = f.maps[-1]
        if self.fuse is not None:
            x = self.fuse(x, f.tokens)
        return self.scaled(self.mlp(self.conv(x).flatten(2).mean(2)))


def make_dense_head(info: DatasetInfo, spec: EncoderSpec, kind: str) -> nn.Module:
    """The head of a segmentation or regression dataset."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"dense head must be one of {', '.join(HEAD_KINDS)}, got {kind!r}")
    if info.task == SEGMENTATION:
        if kind == "cnn":
            return ConvSegmentationHead(spec, info.n_classes)
        return TransformerSegmentationHead(spec, info.n_classes)
    if info.task == REGRESSION:
        return ConvRegressionHead(spec) if kind == "cnn" else TransformerRegressionHead(spec)
    raise ValueError(f"{info.flag} is a {info.task} task: it has a classification head, not a dense one")


def add_dataset_head(model: nn.Module, info: DatasetInfo, name: str, kind: str | None) -> None:
    """The dataset's head on `model` (a Medformer or CNNModel), unless it has one: a dense head of
    `kind` (transformer or cnn) for segmentation and regression, else `model.add_task`."""
    if not info.is_dense:
        model.add_task(name, head_width(info.task, info.n_classes))
    elif name not in model.dense_heads:
        model.dense_heads[name] = make_dense_head(info, model.dense_spec(info.dim), kind or DEFAULT_HEAD)


def grid_level_near(reductions: list[int], stride: int = 4) -> int:
    """Index of the map whose reduction is nearest `stride` (the finer one on ties)."""
    return min(range(len(reductions)), key=lambda i: (abs(math.log2(reductions[i] / stride)), reductions[i]))


def set_target_stats(model: nn.Module, stats: dict[str, tuple[float, float]]) -> None:
    """Give each regression head the (mean, sd) of its training targets."""
    heads = getattr(model, "dense_heads", {})
    for task, (mean, sd) in stats.items():
        if task in heads:
            heads[task].set_target_stats(mean, sd)
