"""Cells of a study: one fine-tune run each, with its folder name and finetune overrides."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError
from ..config.study import FROZEN_MODES, StudyConfig

SPECIAL_INITS = ("scratch", "imagenet")


@dataclass(frozen=True)
class Cell:
    init_name: str
    init: str  # scratch | imagenet | checkpoint path as configured
    model: str
    dataset: str
    fraction: float
    seed: int
    mode: str

    @property
    def id(self) -> str:
        raw = f"{self.init_name}-{self.model}-{self.dataset}-f{self.fraction:g}-s{self.seed}-{self.mode}"
        return re.sub(r"[^A-Za-z0-9_.+-]", "_", raw)

    def to_dict(self) -> dict:
        return {**asdict(self), "id": self.id}


def enumerate_cells(cfg: StudyConfig, resolve: Callable[[str, int], str] | None = None) -> list[Cell]:
    """The full grid, in a stable order (init, model, dataset, fraction, seed, mode). `resolve`
    (init, seed) -> what the cell starts from (stage references become the stages' folders)."""
    cells = [
        Cell(name, resolve(init, int(seed)) if resolve else init, model, flag, float(frac), int(seed), mode)
        for (name, init), model, flag, frac, seed, mode in itertools.product(
            cfg.inits.items(), cfg.models, cfg.data.datasets, cfg.label_fractions, cfg.seeds, cfg.modes
        )
    ]
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"two study cells share the folder name {dup!r}: make init names and values distinct")
    return cells


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> dotted keys ({"train": {"epochs": 3}} -> {"train.epochs": 3})."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def format_value(value: Any) -> str:
    """A value as the override parser (YAML) reads it back unchanged."""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, float):
        text = repr(value)
        mantissa, _, exponent = text.partition("e")
        if exponent and "." not in mantissa:  # YAML 1.1 reads 1e-05 as a string, 1.0e-05 as a float
            text = f"{mantissa}.0e{exponent}"
        return text
    raw = str(value)
    try:
        same = yaml.safe_load(raw) == value
    except yaml.YAMLError:
        same = False
    return raw if same else json.dumps(value)


def resolve_init(init: str) -> str:
    """Checkpoint paths become absolute (cells run with their own output folder)."""
    return init if init in SPECIAL_INITS else str(Path(init).expanduser().resolve())


def cell_overrides(cfg: StudyConfig, cell: Cell, cell_dir: Path, resume: bool) -> list[str]:
    """finetune `key=value` overrides of one cell: the study's base overrides, its model's, then the cell's own."""
    own: dict[str, Any] = {
        "data.size": cfg.data.size,
        "data.datasets": [cell.dataset],
        "data.label_fraction": cell.fraction,
        "model.name": cell.model,
        "init": resolve_init(cell.init),
        "finetune_mode": "full" if cell.mode in FROZEN_MODES else cell.mode,  # frozen cells only read data/model/init
        "seed": cell.seed,
        "output_dir": str(cell_dir),
        "train.progress": False,
    }
    if cfg.data.root:
        own["data.root"] = str(Path(cfg.data.root).expanduser().resolve())
    if resume:
        own["resume"] = str(cell_dir)
    merged = {**flatten(cfg.finetune), **flatten(cfg.model_finetune.get(cell.model, {})), **own}
    return [f"{k}={format_value(v)}" for k, v in merged.items()]
