"""CNN baselines with the Medformer interface: timm 2D encoders, a 3D ResNet for volumes.

`encode(inputs) -> [B, D]` and `forward(inputs) -> {task: logits}` match Medformer, so the
engine, probes and clustering treat both alike.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.video import r3d_18

from ..data.batch import Inputs
from ..data.domains import DatasetInfo
from .dense_heads import DenseFeatures, EncoderSpec, add_dataset_head, grid_level_near
from .medformer import SIZES
from .stem_calls import dims_only_elsewhere, has_batchnorm, merged_groups, zero_weighted

# The 2D CNNs compared in RadiologyNET (timm names); tests build every one.
RADIOLOGYNET_CNNS = (
    "resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b3", "efficientnet_b4",
    "mobilenetv3_small_100", "mobilenetv3_large_100", "vgg16", "inception_v3",
)

# Smallest input side a family accepts (timm's pretrained_cfg does not say); smaller
# inputs are upsampled. Measured: inception_v3 fails below 75 px, densenet/vgg below 32.
_MIN_INPUT_SIZE = {"inception": 75, "densenet": 32, "vgg": 32}


def min_input_size(name: str, encoder: nn.Module) -> int:
    cfg_min = (getattr(encoder, "pretrained_cfg", None) or {}).get("min_input_size")
    if cfg_min:
        return int(cfg_min[-1])
    return next((size for prefix, size in _MIN_INPUT_SIZE.items() if name.startswith(prefix)), 1)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers (huggingface_hub otherwise retries for ~50 s)."""
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def cached_hub_weights(name: str) -> str | None:
    """The timm model's ImageNet weights file if it is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name.split(".")[0])
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    for filename in ("model.safetensors", "pytorch_model.bin") if hub_id else ():
        path = try_to_load_from_cache(hub_id, filename)
        if isinstance(path, str):
            return path
    return None


# MedMNIST's "(28)" ResNets: a 3x3 stride-1 first conv and no max-pool (MedMNIST v2's ResNet-18 (28)),
# so a 28 px image still has a 4x4 map at the last stage instead of 1x1.
SMALL_INPUT_SUFFIX = "_28"


# Named timm baselines: name -> (timm model, create_model kwargs). vit_medformer_body is a plain ViT
# with medformer_small's body (128 wide, 4 layers, 4 heads, MLP ratio 2, patch 4) at 28 px.
TIMM_PRESETS: dict[str, tuple[str, dict]] = {
    "vit_medformer_body": ("vit_tiny_patch16_224", dict(img_size=28, patch_size=4, embed_dim=128, depth=4,
                                                        num_heads=4, mlp_ratio=2.0, dynamic_img_size=True)),
}


def small_input_stem(encoder: nn.Module) -> nn.Module:
    """Replace a timm ResNet's 7x7 stride-2 conv and max-pool by a 3x3 stride-1 conv."""
    encoder.conv1 = nn.Conv2d(encoder.conv1.in_channels, encoder.conv1.out_channels, 3, 1, 1, bias=False)
    encoder.maxpool = nn.Identity()
    return encoder


def create_encoder_2d(
    name: str, pretrained: bool, drop_rate: float, pretrained_file: str | None, **timm_kwargs
) -> nn.Module:
    """timm encoder without classifier; clear one-line errors for unknown names and missing weights.

    `<resnet>_28` (e.g. resnet18_28) is that ResNet with MedMNIST's stem for 28 px inputs.
    `timm_kwargs` go to `timm.create_model` (e.g. a ViT's img_size, patch_size, embed_dim, depth).

    Offline, ImageNet weights come from the local Hugging Face cache if they are there; otherwise
    the error comes at once instead of after the hub client's retries."""
    is_small_resnet = name.endswith(SMALL_INPUT_SUFFIX) and name.startswith("resnet")
    if name in TIMM_PRESETS or is_small_resnet:
        if pretrained or pretrained_file:
            raise ValueError(f"{name} has no ImageNet weights (its shape is our own): use init=scratch")
        if is_small_resnet:
            base = create_encoder_2d(name.removesuffix(SMALL_INPUT_SUFFIX), False, drop_rate, None, **timm_kwargs)
            return small_input_stem(base)
        base, kwargs = TIMM_PRESETS[name]
        return create_encoder_2d(base, False, drop_rate, None, **{**kwargs, **timm_kwargs})
    if pretrained_file and not Path(pretrained_file).is_file():
        raise FileNotFoundError(f"model.pretrained_file {pretrained_file} not found")
    if pretrained and not pretrained_file and name in timm.list_models() and not hub_reachable():
        pretrained_file = cached_hub_weights(name)
        if pretrained_file is None:
            raise ValueError(
                f"cannot load ImageNet weights for {name}: the Hugging Face hub is unreachable and they are not "
                "cached; download them elsewhere and set model.pretrained_file=<weights file>"
            )
    overlay = {"file": str(pretrained_file)} if pretrained_file else None
    try:
        return timm.create_model(
            name, pretrained=pretrained or bool(pretrained_file), num_classes=0, in_chans=3,
            drop_rate=drop_rate, pretrained_cfg_overlay=overlay, **timm_kwargs,
        )
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ValueError(f"unknown model.name {name!r}: use a Medformer size ({', '.join(SIZES)}) or a timm model "
                             f"(e.g. resnet18, {', '.join(TIMM_PRESETS)})") from None
        raise
    except OSError as e:  # offline hub download, unreadable file
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ValueError(
            f"cannot load ImageNet weights for {name} ({first}); offline, download them elsewhere and "
            "set model.pretrained_file=<weights file>"
        ) from None


R3D_CHANNELS = (64, 64, 128, 256, 512)  # stem, layer1..4
R3D_REDUCTIONS = (2, 2, 4, 8, 16)  # in height and width (the stem keeps depth)


def r3d_maps(net: nn.Module, volumes: torch.Tensor) -> list[torch.Tensor]:
    """R3D-18's stem and stage outputs, finest first."""
    x = net.stem(volumes)
    maps = [x]
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        maps.append(x)
    return maps


def resnet3d18(in_chans: int = 1) -> nn.Module:
    """torchvision's R3D-18 with a 1-channel stem and no classifier (512-d features)."""
    net = r3d_18(weights=None)
    net.stem[0] = nn.Conv3d(in_chans, 64, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False)
    net.fc = nn.Identity()
    return net


class CNNModel(nn.Module):
    """A timm CNN for 2D samples (and R3D-18 for 3D ones) with one linear head per task."""

    def __init__(
        self, name: str, datasets: list[DatasetInfo], pretrained: bool = False,
        drop_rate: float = 0.0, pretrained_file: str | None = None, timm_kwargs: dict | None = None,
        dense_heads: dict[str, str] | None = None,
    ):
        """`dense_heads`: head kind (transformer or cnn) per segmentation/regression dataset."""
        super().__init__()
        dims = {d.dim for d in datasets} or {"2d"}
        self.encoder_2d = (
            create_encoder_2d(name, pretrained, drop_rate, pretrained_file, **(timm_kwargs or {})) if "2d" in dims else None
        )
        self.min_size_2d = min_input_size(name, self.encoder_2d) if self.encoder_2d is not None else 1
        # models with a pre-logits MLP (vgg, mobilenetv3) emit head_hidden_size, not num_features
        self.embed_dim = (
            getattr(self.encoder_2d, "head_hidden_size", None) or self.encoder_2d.num_features
            if self.encoder_2d is not None else 512
        )
        self.encoder_3d = resnet3d18() if "3d" in dims else None
        self.proj_3d = nn.Linear(512, self.embed_dim) if self.encoder_3d is not None and self.embed_dim != 512 else nn.Identity()
        self.heads = nn.ModuleDict()
        self.dense_heads = nn.ModuleDict()  # segmentation / regression heads, by task
        self.batchnorm = has_batchnorm(self)
        for info in datasets:
            self.add_dataset(info, head=(dense_heads or {}).get(info.flag))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's activation recomputation in the 2D encoder (R3D-18 for volumes has none)."""
        if self.encoder_2d is not None:
            self.encoder_2d.set_grad_checkpointing(enable)

    def add_dataset(self, info: DatasetInfo, task: str | None = None, head: str | None = None) -> None:
        """The dataset's head: linear for classification, a dense head of kind `head` (transformer or
        cnn) for segmentation and regression."""
        add_dataset_head(self, info, task or info.flag, head)

    def dense_spec(self, dim: str) -> EncoderSpec:
        """The features dense heads get: the encoder's stage outputs, the deepest as tokens."""
        if dim == "3d":
            if self.encoder_3d is None:
                raise ValueError("this CNN was built without a 3D encoder; add a 3D dataset when creating it")
            return EncoderSpec(R3D_CHANNELS, R3D_CHANNELS[-1], grid_level_near(list(R3D_REDUCTIONS)), True, 3)
        if self.encoder_2d is None:
            raise ValueError("this CNN was built without a 2D encoder; add a 2D dataset when creating it")
        info = self.encoder_2d.feature_info
        channels = tuple(int(f["num_chs"]) for f in info)
        return EncoderSpec(channels, channels[-1], grid_level_near([int(f["reduction"]) for f in info]), True, 2)

    def _maps(self, images: torch.Tensor) -> tuple[torch.Tensor, DenseFeatures]:
        """Pooled features [b, D] (as `encode`) and the DenseFeatures of one dim's images, in one pass."""
        if images.ndim == 4:
            if self.encoder_2d is None:
                raise ValueError("this CNN was built without a 2D encoder; add a 2D dataset when creating it")
            final, maps = self.encoder_2d.forward_intermediates(self.prepare_2d(images))
            feats = self.encoder_2d.forward_head(final)
            x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images  # heads predict at this size
        else:
            if self.encoder_3d is None:
                raise ValueError("this CNN was built without a 3D encoder; add a 3D dataset when creating it")
            x = images
            maps = r3d_maps(self.encoder_3d, images)
            feats = self.proj_3d(self.encoder_3d.avgpool(maps[-1]).flatten(1))
        tokens = maps[-1].flatten(2).transpose(1, 2)
        return feats, DenseFeatures(x, list(maps), tokens)

    def _forward_dense(self, inputs: Inputs) -> dict[str, torch.Tensor]:
        """Every task's outputs from one encoder pass per dim that keeps the stage outputs."""
        groups = merged_groups(inputs)
        feats, rows_of, features = None, {}, {}
        for dim, (images, rows) in groups.items():
            pooled, features[dim] = self._maps(images)
            rows_of[dim] = {r: i for i, r in enumerate(rows.tolist())}
            if feats is None:
                feats = pooled.new_zeros(len(inputs), pooled.shape[1])
            feats = feats.index_copy(0, rows, pooled)
        if self.training and self.batchnorm:
            absent = dims_only_elsewhere(set(groups), feats.device)
            feats = zero_weighted(feats, [self._encode_empty(dim, feats.device) for dim in absent])
        out = {}
        for task in dict.fromkeys(inputs.task):
            rows = inputs.rows_of_task(task)
            if task in self.dense_heads:
                dim = next(d for d, pos in rows_of.items() if all(r in pos for r in rows.tolist()))
                pick = torch.tensor([rows_of[dim][r] for r in rows.tolist()], device=feats.device)
                f = features[dim]
                sub = DenseFeatures(f.images[pick], [m[pick] for m in f.maps], f.tokens[pick])
                out[task] = self.dense_heads[task](sub)
            elif task in self.heads:
                out[task] = self.heads[task](feats[rows.to(feats.device)])
            else:
                raise KeyError(f"model has no head for task {task!r}; heads: {sorted(self.heads)}")
        return out

    def add_task(self, name: str, n_outputs: int) -> None:
        if name not in self.heads:
            self.heads[name] = nn.Linear(self.embed_dim, n_outputs)

    def prepare_2d(self, images: torch.Tensor) -> torch.Tensor:
        """Gray -> 3 channels; upsampled to the encoder's minimum input size when smaller."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if min(images.shape[-2:]) < self.min_size_2d:
            h, w = images.shape[-2:]
            scale = self.min_size_2d / min(h, w)
            size = (max(self.min_size_2d, round(h * scale)), max(self.min_size_2d, round(w * scale)))
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return images

    def encode(self, inputs: Inputs) -> torch.Tensor:
        groups = merged_groups(inputs)
        out = None
        for images, rows in groups.values():
            if images.ndim == 4:
                if self.encoder_2d is None:
                    raise ValueError("this CNN was built without a 2D encoder; add a 2D dataset when creating it")
                feats = self.encoder_2d(self.prepare_2d(images))
            else:
                if self.encoder_3d is None:
                    raise ValueError("this CNN was built without a 3D encoder; add a 3D dataset when creating it")
                feats = self.proj_3d(self.encoder_3d(images))
            if out is None:
                out = feats.new_zeros(len(inputs), feats.shape[1])
            out = out.index_copy(0, rows, feats)
        if self.training and self.batchnorm:
            absent = dims_only_elsewhere(set(groups), out.device)
            empty = [self._encode_empty(dim, out.device) for dim in absent]
            out = zero_weighted(out, empty)
        return out

    def _encode_empty(self, dim: str, device: torch.device) -> torch.Tensor:
        """The encoder of `dim` on an empty batch (its synced BatchNorm takes part in this step)."""
        encoder = self.encoder_2d if dim == "2d" else self.encoder_3d
        if encoder is None:
            raise ValueError(f"this CNN was built without a {dim.upper()} encoder; add a {dim.upper()} dataset when creating it")
        shape = (0, 3, 32, 32) if dim == "2d" else (0, 1, 16, 16, 16)
        return encoder(torch.zeros(shape, device=device))

    def forward(self, inputs: Inputs) -> dict[str, torch.Tensor]:
        if any(t in self.dense_heads for t in inputs.task):
            return self._forward_dense(inputs)
        return self.encode_and_classify(inputs)[1]

    def encode_and_classify(self, inputs: Inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`encode` and `forward` from one pass through the encoder."""
        feats = self.encode(inputs)
        out = {}
        for task in dict.fromkeys(inputs.task):
            if task not in self.heads:
                raise KeyError(f"model has no head for task {task!r}; heads: {sorted(self.heads)}")
            out[task] = self.heads[task](feats[inputs.rows_of_task(task).to(feats.device)])
        return feats, out
