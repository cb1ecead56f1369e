"""Before a run resumes: is `resume=` a run, and does the config fit the state saved there?

Checked before anything is written, so a refused resume leaves the run's folder as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ConfigError, load_config
from ..engine.trainer import STATE_FILE
from ..models.weights import CheckpointError

# keys that shape the saved state (parameters, heads, optimizer groups, scheduler, EMA weights)
FINETUNE_STATE_KEYS = (
    "model.name", "model.overrides", "data.datasets", "data.size", "data.shards", "finetune_mode", "class_weights",
    "train.schedule", "train.layer_decay", "train.ema",
)
PRETRAIN_STATE_KEYS = (
    "model.name", "model.overrides", "data.datasets", "data.size", "data.dicom_cache", "data.shards", "ssl.method",
    "ssl.settings",  # the method's heads and loss
    "pseudolabel.labels", "pseudolabel.recluster_k", "train.schedule", "train.ema",
)


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_resume(cfg: Any, state_keys: tuple[str, ...]) -> None:
    """Refuse (CheckpointError) a `resume=` that is not a run, or whose state_keys differ from the
    run's config.yaml; `cfg` is the dataclass config of the new invocation."""
    run = Path(cfg.resume)
    if run.resolve() != Path(cfg.output_dir).resolve():
        raise ConfigError(f"resume={cfg.resume} must equal output_dir={cfg.output_dir} (a run continues in place)")
    for needed in (run / "config.yaml", run / "checkpoints" / "last" / STATE_FILE):
        if not needed.is_file():
            raise CheckpointError(f"resume={run} is not a run to continue: {needed} does not exist "
                                  "(drop resume= to start a new run)")
    try:
        saved = load_config(type(cfg), run / "config.yaml")
    except ConfigError as e:
        raise CheckpointError(f"resume={run}: its config.yaml does not load ({e})") from None
    differing = [k for k in state_keys if _get(saved, k) != _get(cfg, k)]
    if differing:
        changes = "; ".join(f"{k}: {_get(saved, k)!r} there, {_get(cfg, k)!r} now" for k in differing)
        raise CheckpointError(f"resume={run} does not fit the saved state ({changes}): resume with the run's values "
                              f"(see {run / 'config.yaml'}) or start a new output_dir")

