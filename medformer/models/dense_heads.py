"""Downstream heads beyond classification: regression with auxiliary scalars, 2D segmentation.

Both sit on a pretrained encoder (Medformer or a timm CNN) and take the usual `Inputs`.
- `AuxRegressor`: `encode(inputs)` concatenated with `inputs.extra["aux"]` (e.g. sex for bone
  age) -> MLP -> one value per sample.
- `SegmentationModel`: a feature pyramid from a dense encoder -> U-Net-style decoder -> logits
  on the image grid. `MedformerDenseEncoder` turns the Medformer's canonical (non-spatial) body
  tokens back into a patch grid: the patch tokens of the Input Adaptformer cross-attend the body
  tokens (Perceiver-IO style); a light conv stem supplies the finer skip levels.
  `TimmDenseEncoder` uses timm `features_only`.
"""

from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ..data.batch import Inputs
from .attention import Block
from .cnn import min_input_size


class AuxRegressor(nn.Module):
    """One value per sample from encoder features and auxiliary scalars (`inputs.extra["aux"]`)."""

    def __init__(self, encoder: nn.Module, aux_dim: int, hidden: int = 64, dropout: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.aux_dim = aux_dim
        self.head = nn.Sequential(
            nn.Linear(encoder.embed_dim + aux_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def forward(self, inputs: Inputs) -> torch.Tensor:
        feats = self.encoder.encode(inputs)
        if self.aux_dim:
            if "aux" not in inputs.extra:
                raise KeyError(f"this regressor needs {self.aux_dim} auxiliary inputs in inputs.extra['aux']")
            aux = inputs.extra["aux"].to(feats.dtype).reshape(len(feats), -1)
            if aux.shape[1] != self.aux_dim:
                raise ValueError(f"inputs.extra['aux'] has {aux.shape[1]} values per sample, expected {self.aux_dim}")
            feats = torch.cat([feats, aux], dim=1)
        return self.head(feats).squeeze(1)


def regression_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.float(), target.float().reshape(pred.shape))


def _norm(ch: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: small segmentation batches, and eval equals train behaviour
    return nn.GroupNorm(min(8, ch), ch)


class ConvBlock(nn.Sequential):
    """Two 3x3 conv + GroupNorm + ReLU (the U-Net unit)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), _norm(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), _norm(out_ch), nn.ReLU(inplace=True),
        )


class UNetDecoder(nn.Module):
    """Feature maps (finest first) -> logits: upsample the coarsest, concat each skip, ConvBlock."""

    def __init__(self, in_channels: list[int], n_classes: int, width: int = 32):
        super().__init__()
        self.blocks = nn.ModuleList()
        ch = in_channels[-1]
        for skip_ch in reversed(in_channels[:-1]):
            out_ch = max(width, skip_ch)
            self.blocks.append(ConvBlock(ch + skip_ch, out_ch))
            ch = out_ch
        self.head = nn.Conv2d(ch, n_classes, 1)

    def forward(self, features: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        logits = self.head(x)
        if tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        return logits


def _single_2d_group(inputs: Inputs) -> torch.Tensor:
    if len(inputs.groups) != 1 or inputs.groups[0][0].ndim != 4:
        raise ValueError("segmentation takes batches of 2D images of one shape")
    images, rows = inputs.groups[0]
    if not torch.equal(rows.cpu(), torch.arange(len(rows))):
        raise ValueError("segmentation batches must list their rows in order")
    return images


class MedformerDenseEncoder(nn.Module):
    """Feature pyramid from a Medformer: conv stem levels (full .. 1/2 patch) + decoded patch grid."""

    def __init__(self, medformer: nn.Module, stem_width: int = 16):
        super().__init__()
        cfg = medformer.cfg
        p = cfg.patch_size
        if p & (p - 1):
            raise ValueError(f"segmentation needs a power-of-two patch_size, got {p}")
        self.medformer = medformer
        levels = int(math.log2(p))  # stem levels at strides 1, 2, .., p/2
        widths = [min(stem_width * 2**i, 256) for i in range(levels)]
        self.stem = nn.ModuleList()
        in_ch = 3
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            self.stem.append(nn.Sequential(nn.Conv2d(in_ch, w, 3, stride, 1, bias=False), _norm(w), nn.ReLU(inplace=True)))
            in_ch = w
        self.decode = Block(cfg.hidden_dim, cfg.heads, cfg.mlp_ratio, context_dim=cfg.hidden_dim)
        self.channels = [*widths, cfg.hidden_dim]

    def forward(self, inputs: Inputs) -> list[torch.Tensor]:
        images = _single_2d_group(inputs)
        body = self.medformer.tokens(inputs)  # [B, N, hidden]
        patches = self.medformer.input_adapt.patch_tokens(images)  # [B, T, hidden], grid order
        grid = self.decode(patches, body)
        p = self.medformer.cfg.patch_size
        h, w = images.shape[-2] // p, images.shape[-1] // p
        grid = grid.transpose(1, 2).reshape(len(images), -1, h, w)
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        feats = []
        for layer in self.stem:
            x = layer(x)
            feats.append(x)
        return [*feats, grid]


class TimmDenseEncoder(nn.Module):
    """timm CNN with `features_only=True`: its stage outputs, finest first."""

    def __init__(self, name: str, pretrained: bool = False, pretrained_file: str | None = None):
        super().__init__()
        overlay = {"file": str(pretrained_file)} if pretrained_file else None
        self.net = timm.create_model(
            name, features_only=True, pretrained=pretrained or bool(pretrained_file), in_chans=3,
            pretrained_cfg_overlay=overlay,
        )
        self.channels = list(self.net.feature_info.channels())
        self.min_size = min_input_size(name, self.net)

    def forward(self, inputs: Inputs) -> list[torch.Tensor]:
        images = _single_2d_group(inputs)
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        if min(x.shape[-2:]) < self.min_size:
            x = F.interpolate(x, size=(self.min_size, self.min_size), mode="bilinear", align_corners=False)
        return list(self.net(x))


class SegmentationModel(nn.Module):
    """Dense encoder + U-Net decoder: `forward(inputs) -> logits [B, n_classes, H, W]`."""

    def __init__(self, encoder: nn.Module, n_classes: int, width: int = 32):
        super().__init__()
        self.encoder = encoder
        self.decoder = UNetDecoder(encoder.channels, n_classes, width)
        self.n_classes = n_classes

    def forward(self, inputs: Inputs) -> torch.Tensor:
        images = _single_2d_group(inputs)
        return self.decoder(self.encoder(inputs), tuple(images.shape[-2:]))


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy plus soft Dice over the foreground classes; masks [B, H, W] class ids."""
    logits = logits.float()
    masks = masks.long()
    ce = F.cross_entropy(logits, masks)
    probs = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(masks, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce + dice_weight * (1 - dice.mean())
