"""Fine-tuning protocols: which parameters train (full, linear probe, head only) and layer-wise LR decay.

Frozen parameters get requires_grad=False and their modules are kept in eval mode during
training, so BatchNorm statistics, dropout and drop-path of the frozen part do not move either.
"""

from __future__ import annotations

from torch import nn

from ..config import ConfigError

MODES = ("full", "linear_probe", "head_only")

# Trainable parameter-name prefixes per (architecture, mode); everything else is frozen.
_MEDFORMER_TRAINABLE = {
    "linear_probe": ("output_adapt.task_latents.", "output_adapt.heads.", "dense_heads."),
    "head_only": ("input_adapt.", "output_adapt.", "dense_heads."),  # body blocks and final norm frozen
}
_CNN_TRAINABLE = {"linear_probe": ("heads.", "dense_heads."), "head_only": ("heads.", "dense_heads.")}


def _is_medformer(model: nn.Module) -> bool:
    return hasattr(model, "blocks") and hasattr(model, "output_adapt")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"finetune_mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def trainable_prefixes(model: nn.Module, mode: str) -> tuple[str, ...] | None:
    """Name prefixes of the parameters that train under `mode` (None: all of them)."""
    check_mode(mode)
    if mode == "full":
        return None
    table = _MEDFORMER_TRAINABLE if _is_medformer(model) else _CNN_TRAINABLE
    return table[mode]


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """Outermost submodules whose parameters are all frozen (kept in eval mode while training)."""
    out: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(module)
            return
        for child in module.children():
            visit(child)

    for child in model.children():
        visit(child)
    return out


def apply_finetune_mode(model: nn.Module, mode: str) -> dict[str, int]:
    """Freeze what `mode` does not train; returns {"trainable": n, "frozen": n} parameter counts."""
    prefixes = trainable_prefixes(model, mode)
    for name, p in model.named_parameters():
        p.requires_grad_(prefixes is None or name.startswith(prefixes))
    frozen = frozen_modules(model)
    if frozen:
        def keep_frozen_in_eval(module: nn.Module, args) -> None:
            for m in frozen:
                m.eval()

        model.register_forward_pre_hook(keep_frozen_in_eval)
    counts = {"trainable": 0, "frozen": 0}
    for p in model.parameters():
        counts["trainable" if p.requires_grad else "frozen"] += p.numel()
    return counts


def medformer_layer_id(name: str, depth: int) -> int:
    """0 for the Input Adaptformer, i + 1 for body block i, depth + 1 for final norm and output."""
    if name.startswith("input_adapt."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_decay_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """LR factor per parameter name: decay ** (depth + 1 - layer id), so deeper layers learn faster."""
    if decay == 1.0:
        return {name: 1.0 for name, _ in model.named_parameters()}
    if not 0.0 < decay <= 1.0:
        raise ConfigError(f"train.layer_decay must be in (0, 1], got {decay}")
    if not _is_medformer(model):
        raise ConfigError("train.layer_decay is implemented for Medformer models only; use 1.0 for CNNs")
    depth = len(model.blocks)
    return {name: decay ** (depth + 1 - medformer_layer_id(name, depth)) for name, _ in model.named_parameters()}
