"""create_model: a Medformer size name or a timm CNN name -> a model with task heads."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from ..data.domains import DatasetInfo
from .cnn import CNNModel
from .medformer import SIZES, Medformer, medformer_config


def is_medformer(name: str) -> bool:
    return name in SIZES


def create_model(cfg: ModelConfig, datasets: list[DatasetInfo], image_size: int = 28, pretrained: bool = False) -> nn.Module:
    """Model with one head per dataset; Medformer position embeddings sized for `image_size`.

    `pretrained`: ImageNet weights for timm CNNs (downloaded, or `cfg.pretrained_file` offline).
    """
    if is_medformer(cfg.name):
        if pretrained:
            raise ValueError(f"no ImageNet weights exist for {cfg.name}; pretrained=True needs a timm CNN")
        dims = {d.dim for d in datasets}
        sizes = {}
        if "2d" in dims or not dims:
            sizes["image_size_2d"] = image_size
        if "3d" in dims:
            sizes["image_size_3d"] = image_size
        mcfg = medformer_config(
            cfg.name, drop_path=cfg.drop_path, dropout=cfg.dropout, **{**sizes, **cfg.overrides}
        )
        model = Medformer(mcfg, list(datasets), dense_heads=dense_head_kinds(cfg, datasets))
        model.set_grad_checkpointing(cfg.grad_checkpointing)
        return model
    model = CNNModel(
        cfg.name, list(datasets), pretrained=pretrained, drop_rate=cfg.dropout,
        pretrained_file=cfg.pretrained_file if pretrained else None, timm_kwargs=cfg.overrides,
        dense_heads=dense_head_kinds(cfg, datasets),
    )
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing()
    return model


def dense_head_kinds(cfg: ModelConfig, datasets: list[DatasetInfo]) -> dict[str, str]:
    """{flag: transformer | cnn} for the segmentation/regression datasets: model.dense_heads, else model.dense_head."""
    return {d.flag: cfg.dense_heads.get(d.flag, cfg.dense_head) for d in datasets if d.is_dense}


def add_domains(model: nn.Module, domains: list[tuple[str, str]]) -> None:
    """(modality, body part) latents for samples whose domain is not a dataset's (DICOM items);
    CNNs have no domain latents."""
    adapter = getattr(model, "input_adapt", None)
    if adapter is None:
        return
    for modality, body_part in domains:
        adapter.add_domain(modality, body_part)
