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
from .heads import head_width

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


def create_encoder_2d(name: str, pretrained: bool, drop_rate: float, pretrained_file: str | None) -> nn.Module:
    """timm encoder without classifier; clear one-line errors for unknown names and missing weights.

    Offline, ImageNet weights come from the local Hugging Face cache if they are there; otherwise
    the error comes at once instead of after the hub client's retries."""
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
            drop_rate=drop_rate, pretrained_cfg_overlay=overlay,
        )
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ValueError(f"unknown model.name {name!r}: use medformer_small, medformer_large or a timm CNN (e.g. resnet18)") from None
        raise
    except OSError as e:  # offline hub download, unreadable file
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ValueError(
            f"cannot load ImageNet weights for {name} ({first}); offline, download them elsewhere and "
            "set model.pretrained_file=<weights file>"
        ) from None


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
        drop_rate: float = 0.0, pretrained_file: str | None = None,
    ):
        super().__init__()
        dims = {d.dim for d in datasets} or {"2d"}
        self.encoder_2d = create_encoder_2d(name, pretrained, drop_rate, pretrained_file) if "2d" in dims else None
        self.min_size_2d = min_input_size(name, self.encoder_2d) if self.encoder_2d is not None else 1
        # models with a pre-logits MLP (vgg, mobilenetv3) emit head_hidden_size, not num_features
        self.embed_dim = (
            getattr(self.encoder_2d, "head_hidden_size", None) or self.encoder_2d.num_features
            if self.encoder_2d is not None else 512
        )
        self.encoder_3d = resnet3d18() if "3d" in dims else None
        self.proj_3d = nn.Linear(512, self.embed_dim) if self.encoder_3d is not None and self.embed_dim != 512 else nn.Identity()
        self.heads = nn.ModuleDict()
        for info in datasets:
            self.add_dataset(info)

    def add_dataset(self, info: DatasetInfo, task: str | None = None) -> None:
        self.add_task(task or info.flag, head_width(info.task, info.n_classes))

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
        out = None
        for images, rows in inputs.groups:
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
        return out

    def forward(self, inputs: Inputs) -> dict[str, torch.Tensor]:
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
