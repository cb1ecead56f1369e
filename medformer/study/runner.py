"""Run the cells of a study: each a normal fine-tune in `output_dir/cells/<cell-id>/`.

Resumable: a cell whose status.json records it done is skipped, an interrupted one resumes from
its last checkpoint, a failed one is recorded in its status.json with the one-line error (and retried
on the next invocation when `retry_failed`); the study always goes on to the next cell.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..config import ConfigError, FinetuneConfig, load_config
from ..config.study import FROZEN_MODES, StudyConfig
from ..engine.trainer import reset_accelerate_state
from ..errors import UserError
from ..eval.predictions import write_predictions
from ..eval.probe import run_probe
from ..io import write_json
from ..lifeline import child_env, die_with_parent
from ..models.weights import find_weights
from ..runs.finetune import check_init, run_finetune
from .cells import SPECIAL_INITS, Cell, cell_overrides, resolve_init

STATUS_FILE = "status.json"
LOG_FILE = "study.log"
ERROR_PREFIX = "finetune: error:"
# the eval.probe method of each frozen-encoder study mode
PROBE_METHODS = {"knn": "knn", "logreg": "linear"}


@dataclass
class CellOutcome:
    cell: Cell
    status: str  # done | failed | skipped (done before) | skipped-failed (failed before, not retried)
    error: str | None = None
    seconds: float = 0.0


def cell_dir(cfg: StudyConfig, cell: Cell) -> Path:
    return Path(cfg.output_dir) / "cells" / cell.id


def has_metrics(directory: Path) -> bool:
    return (directory / "metrics.json").is_file()


def is_done(directory: Path) -> bool:
    """Done once its completion record says so: a metrics.json alone may be from a run cut short
    before the study recorded it (killed study), or from a failed attempt."""
    status = read_status(directory)
    return has_metrics(directory) and status is not None and status["status"] == "done"


def read_status(directory: Path) -> dict | None:
    path = directory / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_status(directory: Path, cell: Cell, status: str, error: str | None, seconds: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    previous = read_status(directory) or {}
    record = {
        "cell": cell.to_dict(), "status": status, "error": error, "seconds": round(seconds, 2),
        "finished": _now(), "attempts": previous.get("attempts", 0) + 1,
    }
    tmp = directory / (STATUS_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(directory / STATUS_FILE)


def precheck(cfg: StudyConfig, cell: Cell, overrides: list[str]) -> str | None:
    """The one-line error a cell would stop with on its config or init, found without running it."""
    try:
        fcfg = load_config(FinetuneConfig, cfg.base_config, overrides)
        check_init(fcfg)
        if cell.init not in SPECIAL_INITS:
            find_weights(resolve_init(cell.init))
    except UserError as e:
        return f"{ERROR_PREFIX} {e}"
    return None


def error_line(log: str) -> str:
    """The finetune one-line error, else the last line of the log (a traceback's exception)."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith(ERROR_PREFIX):
            return ln
    return lines[-1] if lines else "failed without output"


def run_subprocess(cfg: StudyConfig, overrides: list[str], directory: Path) -> str | None:
    """`python -m finetune ...` with its output in the cell's log.txt; returns the error or None."""
    cmd = [sys.executable, "-m", "finetune"]
    if cfg.base_config:
        cmd += ["--config", cfg.base_config]
    cmd += overrides
    env = child_env(dict(os.environ))  # the cell dies with the study (kill -9 included)
    if cfg.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(cfg.threads)
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "log.txt"
    with open(log, "w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    return None if rc == 0 else error_line(log.read_text())


@contextlib.contextmanager
def cell_threads(cfg: StudyConfig):
    """torch's thread count for one in-process cell (cfg.threads; restored after)."""
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_inprocess(cfg: StudyConfig, overrides: list[str], directory: Path) -> str | None:
    """run_finetune in this process (no import cost per cell; for tests and small CPU studies)."""
    try:
        with cell_threads(cfg):
            run_finetune(load_config(FinetuneConfig, cfg.base_config, overrides))
    except UserError as e:
        return f"{ERROR_PREFIX} {e}"
    except Exception as e:  # noqa: BLE001 - a crashing cell is recorded, the study goes on
        return f"{type(e).__name__}: {e}"
    finally:
        reset_accelerate_state()
    return None


def run_in_worker(cfg: StudyConfig, overrides: list[str], directory: Path, frozen_mode: str | None = None) -> str | None:
    """run_inprocess, or run_frozen for a `frozen_mode` cell, in a worker process, its output (logging,
    warnings) in the cell's log.txt."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "log.txt", "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            if frozen_mode is None:
                return run_inprocess(cfg, overrides, directory)
            return run_frozen(cfg, overrides, directory, frozen_mode)
        finally:
            root.removeHandler(handler)


def run_frozen(cfg: StudyConfig, overrides: list[str], directory: Path, method: str) -> str | None:
    """A frozen-encoder cell (`knn` or `logreg`), in this process: the classifier fitted on the
    cell's labeled train images (logreg: its L2 strength chosen on val), scored on val and test;
    metrics.json and predictions/ like a fine-tune's (no training, no history). Not thread-safe:
    a random-init encoder is drawn from torch's global RNG."""
    try:
        fcfg = load_config(FinetuneConfig, cfg.base_config, overrides)
        if fcfg.init == "imagenet":
            raise ConfigError(f"{method} cells need init=scratch or a checkpoint, not imagenet")
        flag, t0 = fcfg.data.datasets[0], time.perf_counter()
        with cell_threads(cfg):
            result = run_probe(
                fcfg.init, [flag], root=fcfg.data.root, model_cfg=fcfg.model if fcfg.init == "scratch" else None,
                size=fcfg.data.size, methods=(PROBE_METHODS[method],), max_train=fcfg.data.max_train_samples,
                label_fraction=fcfg.data.label_fraction, seed=fcfg.seed, keep_scores=True,
            )
    except UserError as e:
        return f"{ERROR_PREFIX} {e}"
    directory.mkdir(parents=True, exist_ok=True)
    for split, scores in result["_scores"][flag].items():
        write_predictions(directory, flag, split, scores[PROBE_METHODS[method]], scores["labels"])
    stats = {"train_seconds": round(time.perf_counter() - t0, 2)}
    if method == "logreg":
        stats["C"] = result["_linear_C"][flag]
    write_json(directory / "train_stats.json", stats)
    write_json(directory / "metrics.json", {flag: result[flag][PROBE_METHODS[method]]})
    return None


def run_cell(
    cfg: StudyConfig, cell: Cell, log: Callable[[str], None], train: Callable[[StudyConfig, list[str], Path], str | None],
    frozen: Callable[[StudyConfig, list[str], Path, str], str | None] = run_frozen,
) -> CellOutcome:
    """Skip, resume or run one cell (`train` a fine-tune, `frozen` a frozen-encoder cell); record its status."""
    directory = cell_dir(cfg, cell)
    if is_done(directory):
        log(f"skip {cell.id} (done)")
        return CellOutcome(cell, "skipped")
    status = read_status(directory)
    if status and status["status"] == "failed" and not cfg.retry_failed:
        log(f"skip {cell.id} (failed before: {status['error']})")
        return CellOutcome(cell, "skipped-failed", status["error"])
    resume = (directory / "checkpoints" / "last" / "trainer_state.json").is_file()
    overrides = cell_overrides(cfg, cell, directory, resume)
    t0 = time.perf_counter()
    error = precheck(cfg, cell, overrides)
    if error is None:
        log(f"{'resume' if resume else 'run'} {cell.id}")
        if cell.mode in FROZEN_MODES:
            error = frozen(cfg, overrides, directory, cell.mode)
        else:
            error = train(cfg, overrides, directory)
        if error is None and not has_metrics(directory):
            error = "finished without metrics.json"
    seconds = time.perf_counter() - t0
    result = "failed" if error else "done"
    if result == "done" and not cfg.keep_resume_state:
        shutil.rmtree(directory / "checkpoints", ignore_errors=True)  # best.safetensors stays
    _write_status(directory, cell, result, error, seconds)
    log(f"{result} {cell.id} in {seconds:.1f}s" + (f": {error}" if error else ""))
    return CellOutcome(cell, result, error, seconds)


def study_log(out: Path) -> Callable[[str], None]:
    """A logger to stderr and to output_dir/study.log (appended)."""
    out.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(f"study: {message}", file=sys.stderr, flush=True)
        with open(out / LOG_FILE, "a") as fh:
            fh.write(f"{_now()} {message}\n")

    return log


def run_cells(cfg: StudyConfig, cells: list[Cell], log: Callable[[str], None] | None = None) -> list[CellOutcome]:
    """All cells, `cfg.jobs` at a time (subprocess isolation); logs to output_dir/study.log."""
    log = log or study_log(Path(cfg.output_dir))
    if cfg.isolation == "inprocess":
        return [run_cell(cfg, c, log, run_inprocess) for c in cells]
    with contextlib.ExitStack() as stack:
        train, frozen = run_subprocess, serialized(run_frozen)
        if cfg.isolation == "workers":
            workers = stack.enter_context(ProcessPoolExecutor(
                cfg.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent, initargs=(os.getpid(),)
            ))
            train = lambda *args: workers.submit(run_in_worker, *args).result()  # noqa: E731
            frozen = train
        pool = stack.enter_context(ThreadPoolExecutor(cfg.jobs))
        return list(pool.map(lambda c: run_cell(cfg, c, log, train, frozen), cells))


def serialized(fn: Callable) -> Callable:
    """`fn` one call at a time: the study's threads share torch's global RNG and thread count."""
    lock = threading.Lock()

    def call(*args):
        with lock:
            return fn(*args)

    return call
