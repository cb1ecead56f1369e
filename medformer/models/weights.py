"""Model weights: safetensors files written atomically, found in run folders, loaded into a model
with a report of what fitted (timm keeps `load_checkpoint` beside `create_model` the same way)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import ModelConfig
from ..data.domains import DatasetInfo
from ..errors import UserError
from .build import build_model
from .factory import add_domains

logger = logging.getLogger(__name__)

# inits that start from no checkpoint
NO_CHECKPOINT = ("scratch", "imagenet")


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def save_weights(model: nn.Module, path: str | Path, metadata: dict | None = None) -> None:
    """model.state_dict() to safetensors, via a temporary file and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in (metadata or {}).items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)


def find_weights(path: str | Path) -> Path:
    """A .safetensors file, or the weights inside a run/checkpoint folder."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path} is not a .safetensors file; medformer loads only safetensors weights")
        return path
    for name in ("encoder.safetensors", "best.safetensors", "model.safetensors", "checkpoints/best.safetensors"):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"no weights found at {path}: pass a .safetensors file or a medformer run folder")


def load_weights(
    model: nn.Module, path: str | Path, strict: bool = False, prefix: str = ""
) -> dict[str, list[str]]:
    """Load matching tensors into `model`; report matched, missing, unexpected and mismatched keys.

    `prefix` is stripped from checkpoint keys (e.g. "model." for an objective's state).
    Raises CheckpointError when nothing matches or shapes conflict, since that means the
    checkpoint belongs to another model.
    """
    file = find_weights(path)
    try:
        state = load_file(str(file))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(f"cannot read {file}: {e}") from None
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    mismatch = getattr(model, "checkpoint_mismatch", None)
    reason = mismatch(state) if mismatch is not None else None
    if reason:
        raise CheckpointError(f"checkpoint {file} does not fit this model: {reason}")
    adapt = getattr(model, "adapt_checkpoint", None)
    state = adapt(state) if adapt is not None else state
    own = model.state_dict()
    matched = [k for k in state if k in own and own[k].shape == state[k].shape]
    mismatched = [k for k in state if k in own and own[k].shape != state[k].shape]
    report = {
        "matched": matched,
        "mismatched": mismatched,
        "missing": [k for k in own if k not in state],
        "unexpected": [k for k in state if k not in own],
    }
    if not matched:
        raise CheckpointError(f"checkpoint {file} does not fit this model: no parameter names match")
    if mismatched:
        first = mismatched[0]
        raise CheckpointError(
            f"checkpoint {file} does not fit this model: {first} has shape {tuple(state[first].shape)}, "
            f"model expects {tuple(own[first].shape)} (was it trained with another model size?)"
        )
    if strict and (report["missing"] or report["unexpected"]):
        raise CheckpointError(f"checkpoint {file}: missing {report['missing'][:3]}, unexpected {report['unexpected'][:3]}")
    with torch.no_grad():
        for k in matched:
            own[k].copy_(state[k])
    return report


def run_model_config(path: str | Path) -> ModelConfig | None:
    """The model section of the medformer run folder that holds `path` (its config.yaml), if any."""
    path = Path(path)
    config = path / "config.yaml" if path.is_dir() else path.parent / "config.yaml"
    if not config.is_file():
        return None
    section = (yaml.safe_load(config.read_text()) or {}).get("model")
    return ModelConfig(**section) if isinstance(section, dict) else None


def load_encoder(
    init: str,
    model_cfg: ModelConfig | None,
    infos: Sequence[DatasetInfo],
    size: int,
    *,
    domains: Sequence[tuple[str, str]] = (),
    strict: bool = False,
    seed: int | None = None,
) -> tuple[nn.Module, dict[str, list[str]] | None]:
    """The model a run starts from, and the load report (None without a checkpoint).

    `init`: scratch (random init, seeded by `seed` when given), imagenet (timm's weights, at
    creation), or a .safetensors file / run folder. With `model_cfg` None, a run folder's
    config.yaml names the model (else medformer_small). `domains`: extra (modality, body part)
    latents, added before loading so that a checkpoint's own domains fit.
    """
    from_checkpoint = init not in NO_CHECKPOINT
    model_cfg = model_cfg or (run_model_config(init) if from_checkpoint else None) or ModelConfig()
    if seed is not None:
        torch.manual_seed(seed)
    model = build_model(model_cfg, list(infos), size, pretrained=init == "imagenet")
    add_domains(model, list(domains))
    if not from_checkpoint:
        return model, None
    report = load_weights(model, init, strict=strict)
    logger.info("loaded %s: %s", init, {k: len(v) for k, v in report.items()})
    return model, report
