"""Checkpoints: safetensors weights written atomically, and loading them into a model.

Resume state (optimizer, scheduler, RNG) is Accelerate's `save_state`, written into a temporary
folder and swapped in, so a kill mid-write never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import UserError


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


def swap_dir(tmp: str | Path, path: str | Path) -> None:
    """Replace folder `path` by the fully written folder `tmp` (old one removed after)."""
    tmp, path = Path(tmp), Path(path)
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


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
