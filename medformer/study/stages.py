"""Pretraining stages of a study: `medformer pseudolabel` and `pretrain` runs made before the grid.

A study config may declare them, so one command goes from raw data to the comparison:

    pseudolabels:
      pool: {config: configs/pseudolabel/medmnist_pool_small.yaml, overrides: {...}}
    pretrain:
      vicreg: {config: configs/pretrain/vicreg_small.yaml, overrides: {ssl.max_minutes: 3}}
      pseudolabel: {config: configs/pretrain/pseudolabel_small.yaml,
                    overrides: {pseudolabel.labels: "pseudolabels:pool"}}
    inits: {scratch: scratch, vicreg: "pretrain:vicreg", pseudolabel: "pretrain:pseudolabel"}

`pseudolabels:<name>` and `pretrain:<name>` (in overrides and inits) name the stage's output folder,
`<output_dir>/pseudolabels/<name>` or `<output_dir>/pretrain/<name>` (`.../<name>/seed<s>`, one per
seed, with `pretrain_per_seed`). Stages are resumable like cells: a stage with metrics.json is
skipped, an interrupted pretraining run resumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..config import ConfigError, load_config
from ..config.pretrain import PretrainConfig
from ..config.pseudolabel import PseudoLabelConfig
from ..config.study import StageConfig, StudyConfig
from ..lifeline import child_env
from .cells import flatten, format_value
from .paths import REPO_ROOT

KINDS = ("pseudolabels", "pretrain")
COMMANDS = {"pseudolabels": ["-m", "medformer", "pseudolabel"], "pretrain": ["-m", "pretrain"]}


def stage_dir(cfg: StudyConfig, kind: str, name: str, seed: int | None = None) -> Path:
    """A stage's output folder; `seed`: which run of a per-seed pretrain stage."""
    folder = Path(cfg.output_dir).resolve() / kind / name
    return folder / f"seed{seed}" if seed is not None else folder


def stage_seeds(cfg: StudyConfig, kind: str) -> list[int | None]:
    """The runs of each stage of `kind`: one per study seed for per-seed pretraining, else one."""
    return list(cfg.seeds) if kind == "pretrain" and cfg.pretrain_per_seed else [None]


def resolve_reference(cfg: StudyConfig, value: Any, seed: int | None = None) -> Any:
    """`pretrain:<name>` / `pseudolabels:<name>` -> that stage's folder (of `seed`'s run for per-seed
    pretraining; the first seed's when None); other values unchanged."""
    if not isinstance(value, str):
        return value
    kind, sep, name = value.partition(":")
    if not sep or kind not in KINDS:
        return value
    if name not in getattr(cfg, kind):
        raise ConfigError(f"{value!r} names no stage: the study declares {kind} {sorted(getattr(cfg, kind)) or 'none'}")
    runs = stage_seeds(cfg, kind)
    return str(stage_dir(cfg, kind, name, seed if seed in runs else runs[0]))


def resolve_config_path(path: str) -> str:
    """As given (relative to the working directory), else relative to the repository."""
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return str(p)
    return str(REPO_ROOT / p)


def stage_overrides(cfg: StudyConfig, kind: str, name: str, stage: StageConfig, seed: int | None = None) -> list[str]:
    """`key=value` arguments of a stage: its own overrides, then data.root, output_dir (and seed)."""
    out = stage_dir(cfg, kind, name, seed)
    own: dict[str, Any] = {"output_dir": str(out), **({"seed": seed} if seed is not None else {})}
    if cfg.data.root:
        own["data.root"] = str(Path(cfg.data.root).expanduser().resolve())
    if kind == "pretrain":
        own["train.progress"] = False
        if (out / "checkpoints" / "last" / "trainer_state.json").is_file():
            own["resume"] = str(out)
    merged = {k: resolve_reference(cfg, v) for k, v in {**flatten(stage.overrides), **own}.items()}
    return [f"{k}={format_value(v)}" for k, v in merged.items()]


def stage_command(cfg: StudyConfig, kind: str, name: str, stage: StageConfig, seed: int | None = None) -> list[str]:
    return [sys.executable, *COMMANDS[kind], "--config", resolve_config_path(stage.config),
            *stage_overrides(cfg, kind, name, stage, seed)]


def check_stage(cfg: StudyConfig, kind: str, name: str, stage: StageConfig) -> None:
    """Load the stage's config with its overrides (a UserError on any mistake)."""
    if not stage.config or not Path(resolve_config_path(stage.config)).is_file():
        raise ConfigError(f"config file {stage.config!r} not found")
    schema = PretrainConfig if kind == "pretrain" else PseudoLabelConfig
    load_config(schema, resolve_config_path(stage.config), stage_overrides(cfg, kind, name, stage, stage_seeds(cfg, kind)[0]))


def run_stage(cfg: StudyConfig, kind: str, name: str, stage: StageConfig, log: Callable[[str], None],
              seed: int | None = None) -> bool:
    """Run one stage (the run of `seed` of a per-seed one) as a subprocess (log beside its folder);
    True when its outputs are complete."""
    out = stage_dir(cfg, kind, name, seed)
    label = f"{kind}/{name}" + (f"/seed{seed}" if seed is not None else "")
    if (out / "metrics.json").is_file():
        log(f"skip {label} (done)")
        return True
    cmd = stage_command(cfg, kind, name, stage, seed)
    env = child_env(dict(os.environ))  # the stage dies with the study
    if cfg.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    log_file = out.parent / f"{out.name}.log"
    log(f"run {label}")
    t0 = time.perf_counter()
    with open(log_file, "w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT).returncode
    ok = rc == 0 and (out / "metrics.json").is_file()
    lines = [ln for ln in log_file.read_text().splitlines() if ln.strip()]
    log(f"{'done' if ok else 'failed'} {label} in {time.perf_counter() - t0:.0f}s"
        + ("" if ok else f": {lines[-1] if lines else 'no output'} (log: {log_file})"))
    return ok


def run_stages(cfg: StudyConfig, log: Callable[[str], None]) -> dict[str, bool]:
    """Pseudo-label stages one after another, then pretraining stages `cfg.jobs` at a time.

    A failed stage does not stop the study: cells that use it fail with "no weights found"."""
    done: dict[str, bool] = {}
    for name, stage in cfg.pseudolabels.items():
        done[f"pseudolabels:{name}"] = run_stage(cfg, "pseudolabels", name, stage, log)
    items = [(name, stage, seed) for name, stage in cfg.pretrain.items() for seed in stage_seeds(cfg, "pretrain")]
    with ThreadPoolExecutor(max(1, min(cfg.jobs, len(items) or 1))) as pool:
        results = pool.map(lambda item: run_stage(cfg, "pretrain", *item[:2], log, item[2]), items)
        for (name, _, seed), ok in zip(items, results, strict=True):
            key = f"pretrain:{name}" + (f"/seed{seed}" if seed is not None else "")
            done[key] = ok
    return done


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def stage_lines(cfg: StudyConfig) -> list[str]:
    """Report lines: what each stage ran and what it measured."""
    lines = []
    for name, stage in cfg.pseudolabels.items():
        m = _read_json(stage_dir(cfg, "pseudolabels", name) / "metrics.json")
        result = (f"{m['n_samples']} images, k={m['chosen_k']} (elbow {m['elbow_k']}), {m['n_labels']} labels kept, "
                  f"harmonic mean of homogeneity/NMI {m['quality']['harmonic_mean']:.3f} "
                  f"(shuffled labels {m['shuffled_baseline_harmonic_mean']:.3f})") if m else "not finished"
        lines.append(f"- pseudo-labels `{name}` ({stage.config}, {flatten(stage.overrides) or 'no overrides'}): {result}")
    for name, stage in cfg.pretrain.items():
        for seed in stage_seeds(cfg, "pretrain"):
            folder = stage_dir(cfg, "pretrain", name, seed)
            m, s = _read_json(folder / "metrics.json"), _read_json(folder / "train_stats.json")
            result = (f"{m['method']}, {m['steps']} steps in {s.get('train_seconds', 0) / 60:.1f} min "
                      f"({s.get('train_samples_per_second')} img/s), final "
                      + ", ".join(f"{k} {v:.3f}" for k, v in m["final_loss"].items())) if m else "not finished"
            run = f"`{name}`" + (f" seed {seed}" if seed is not None else "")
            lines.append(f"- pretraining {run} ({stage.config}, {flatten(stage.overrides) or 'no overrides'}): {result}")
    return lines
