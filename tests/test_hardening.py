"""Bad input and faults: one-line user errors that write nothing, internal errors that keep their
traceback, one run per output_dir, resume that refuses a config the saved state does not fit, and
study cells that die with the study."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune.__main__ import main as finetune_main
from medformer.cli import run_entry
from medformer.config import ConfigError, FinetuneConfig, load_config
from medformer.engine.trainer import TrainerState
from medformer.runs.lock import RunLock, RunLockedError
from medformer.study import StudyConfig
from medformer.study.cells import enumerate_cells
from medformer.study.runner import cell_dir, is_done, run_cell

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "finetune" / "pneumoniamnist_small.yaml")
SMOKE = REPO / "configs" / "study" / "smoke.yaml"
TINY = ["model.overrides.depth=1", "train.progress=false", "train.log_every=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def run(args: list[str]) -> int:
    return finetune_main(["--config", CONFIG, *TINY, *args])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def tree(folder: Path) -> dict[str, int]:
    """Every file under `folder` with its mtime: what a refused run must leave unchanged."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


# -- values checked at load time ---------------------------------------------------------------
@pytest.mark.parametrize(
    "override,message",
    [
        ("train.log_every=0", "'train.log_every' must be >= 1, got 0"),
        ("train.grad_accum=0", "'train.grad_accum' must be >= 1"),
        ("model.overrides.foo=1", "unknown config key 'model.overrides.foo'"),
        ("model.overrides.depth=0", "'model.overrides.depth' must be >= 1"),
        ("model.drop_path=2", "'model.drop_path' must be in [0, 1), got 2.0"),
        ("train.batch_size=-4", "'train.batch_size' must be >= 1, got -4"),
        ("data.label_fraction=2", "'data.label_fraction' must be in (0, 1]"),
        ("data.max_train_samples=0", "'data.max_train_samples' must be >= 1"),
        ("train.epochs=0", "'train.epochs' must be >= 1 or 'auto', got 0"),
        ("train.epochs=-1", "'train.epochs' must be >= 1 or 'auto'"),
        ("train.monitor=foo", "'train.monitor' must be one of auc, acc"),
        ("train.monitor=loss", "train.monitor=loss is for pretraining"),
        ("train.warmup_epochs=-1", "'train.warmup_epochs' must be >= 0"),
        ("train.grad_clip=-1", "'train.grad_clip' must be >= 0"),
        ("train.mixed_precision=fp8", "'train.mixed_precision' must be one of auto, no, bf16, fp16"),
    ],
)
def test_bad_value_one_line_error_naming_the_key_exit_2_nothing_written(tmp_path, capsys, override, message):
    out = tmp_path / "bad"
    assert run([override, f"output_dir={out}"]) == 2
    assert message in one_error_line(capsys)
    assert not out.exists()


def test_good_values_still_load():
    cfg = load_config(FinetuneConfig, CONFIG, ["train.epochs=auto", "data.max_train_samples=null", "train.grad_clip=0",
                                               "model.overrides.depth=2", "data.label_fraction=1"])
    assert cfg.train.epochs == "auto" and cfg.data.max_train_samples is None and cfg.model.overrides == {"depth": 2}
    assert load_config(FinetuneConfig, CONFIG, ["train.epochs=3"]).train.epochs == 3


def test_probe_k_0_is_refused(capsys):
    from medformer.eval.probe_cli import main as probe_main

    assert probe_main(["--init", "scratch", "--datasets", "breastmnist", "--k", "0"]) == 2
    assert "--k must be >= 1, got 0" in one_error_line(capsys)


# -- user errors vs bugs -----------------------------------------------------------------------
def test_only_user_errors_become_one_line_messages(capsys):
    def fails_with(error: Exception):
        def run_it(cfg):
            raise error
        return run_it

    assert run_entry(FinetuneConfig, fails_with(ConfigError("config key 'x' is bad")), [], "finetune") == 2
    assert one_error_line(capsys) == "finetune: error: config key 'x' is bad"
    for bug in (ValueError("internal"), KeyError("internal"), FileNotFoundError("internal")):
        with pytest.raises(type(bug)):  # a bug keeps its traceback (exit 1), not a user-error line
            run_entry(FinetuneConfig, fails_with(bug), [], "finetune")


def test_study_cell_records_a_bug_as_a_crash_not_a_user_error(monkeypatch, tmp_path):
    import medformer.study.runner as runner
    from medformer.study.runner import ERROR_PREFIX, run_inprocess

    def buggy(cfg):
        raise ValueError("internal bug")

    monkeypatch.setattr(runner, "run_finetune", buggy)
    cfg = load_config(StudyConfig, SMOKE, [f"output_dir={tmp_path}"])
    assert run_inprocess(cfg, [], tmp_path) == "ValueError: internal bug"

    def user_mistake(cfg):
        raise ConfigError("config key 'x' is bad")

    monkeypatch.setattr(runner, "run_finetune", user_mistake)
    assert run_inprocess(cfg, [], tmp_path) == f"{ERROR_PREFIX} config key 'x' is bad"


# -- resume ------------------------------------------------------------------------------------
def test_resume_with_another_model_refuses_and_keeps_the_run(shared_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    base = [f"data.root={shared_root}", "data.max_train_samples=64", "train.epochs=1", "train.batch_size=32",
            "train.eval_test=false", f"output_dir={run_dir}"]
    assert run(base) == 0
    before = tree(run_dir)
    capsys.readouterr()
    assert run([*base, "model.overrides.depth=2", "finetune_mode=head_only", f"resume={run_dir}"]) == 2
    line = one_error_line(capsys)
    assert "does not fit the saved state" in line and "model.overrides" in line and "finetune_mode" in line, line
    assert "train.epochs" not in line
    assert tree(run_dir) == before  # config.yaml and everything else untouched


def test_resume_of_a_folder_that_is_not_a_run_writes_nothing(tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert run([f"output_dir={folder}", f"resume={folder}"]) == 2
    assert "is not a run to continue" in one_error_line(capsys)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_trainer_state_is_valid_json_and_reads_back():
    def strict(text: str) -> dict:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))

    fresh = TrainerState()
    assert strict(fresh.to_json())["best_metric"] is None
    assert TrainerState.from_json(fresh.to_json()).best_metric == -math.inf
    nan_first = TrainerState(best_metric=math.nan, best_epoch=0, step=5)
    back = TrainerState.from_json(nan_first.to_json())
    assert math.isnan(back.best_metric) and back.step == 5  # a NaN first val score stays the best, as before
    scored = TrainerState(best_metric=0.75, best_epoch=2)
    assert TrainerState.from_json(scored.to_json()) == scored


# -- non-finite loss ---------------------------------------------------------------------------
def test_nan_loss_before_any_checkpoint_says_none_was_written(shared_root, tmp_path, capsys):
    out = tmp_path / "nan"
    assert run([f"data.root={shared_root}", "train.lr=1e9", "train.max_steps=20", f"output_dir={out}"]) == 2
    line = one_error_line(capsys)
    assert "non-finite" in line and "no checkpoint was written" in line and "last good checkpoint" not in line, line
    assert not (out / "checkpoints").exists()


# -- one run per output_dir --------------------------------------------------------------------
def finetune_process(out: Path, shared_root: Path, *args: str, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "finetune", "--config", CONFIG, *TINY, f"data.root={shared_root}",
           "data.max_train_samples=64", "train.batch_size=32", "train.eval_test=false", f"output_dir={out}", *args]
    return subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


def test_second_run_in_a_busy_output_dir_refuses(shared_root, tmp_path):
    out = tmp_path / "run"
    first = finetune_process(out, shared_root, "train.epochs=500")
    try:
        deadline = time.time() + 180
        while not (out / "config.yaml").is_file():  # written under the lock
            assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.2)
        second = finetune_process(out, shared_root, "train.max_steps=1")
        _, err = second.communicate(timeout=180)
        assert second.returncode == 2, err[-2000:]
        lines = [ln for ln in err.splitlines() if ln.startswith("finetune:")]
        assert len(lines) == 1 and f"output_dir {out} is in use by another run (pid {first.pid})" in lines[0], err[-2000:]
        assert not (out / "metrics.json").exists()
    finally:
        first.kill()
        first.wait()
    with RunLock(out):  # the lock of a killed run is not stuck
        with pytest.raises(RunLockedError):
            RunLock(out).acquire()


# -- studies: cells die with the study, and count as done only once recorded -------------------
def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie waits for its reaper but runs nothing


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("isolation", ["subprocess", "workers"])
def test_killing_a_study_kills_its_training_cell(shared_root, tmp_path, isolation):
    out = tmp_path / "study"
    overrides = [f"data.root={shared_root}", f"output_dir={out}", "label_fractions=[1.0]", "seeds=[0]",
                 "finetune.train.epochs=500", "finetune.train.checkpoint_every=1", "explain.enabled=false",
                 f"isolation={isolation}"]
    cmd = [sys.executable, "-m", "medformer.study", "--config", str(SMOKE), *overrides]
    study = subprocess.Popen(cmd, env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (cell,) = enumerate_cells(load_config(StudyConfig, SMOKE, overrides))
    directory = cell_dir(load_config(StudyConfig, SMOKE, overrides), cell)
    state = directory / "checkpoints" / "last" / "trainer_state.json"
    deadline = time.time() + 240
    while not state.is_file():  # the cell is training
        assert study.poll() is None and time.time() < deadline
        time.sleep(0.2)
    children = descendants(study.pid)
    assert children
    study.send_signal(signal.SIGKILL)
    study.wait()
    deadline = time.time() + 10
    while any(alive(p) for p in children) and time.time() < deadline:
        time.sleep(0.2)
    assert not [p for p in children if alive(p)], "a cell outlived its study"
    assert not (directory / "metrics.json").exists() and not is_done(directory)

    # the rerun takes the cell up again (resuming it) instead of skipping it
    calls = []

    def train(cfg, cell_overrides, folder):
        calls.append(cell_overrides)
        (folder / "metrics.json").write_text("{}")

    cfg = load_config(StudyConfig, SMOKE, overrides)
    assert run_cell(cfg, cell, lambda msg: None, train).status == "done"
    assert len(calls) == 1 and f"resume={directory}" in calls[0]


def test_a_cell_with_metrics_but_no_completion_record_is_not_done(tmp_path):
    cfg = load_config(StudyConfig, SMOKE, [f"output_dir={tmp_path}", "label_fractions=[1.0]", "seeds=[0]"])
    (cell,) = enumerate_cells(cfg)
    directory = cell_dir(cfg, cell)
    directory.mkdir(parents=True)
    (directory / "metrics.json").write_text("{}")  # written by a run the study never saw finish
    calls = []

    def train(cfg, overrides, folder):
        calls.append(folder)

    log: list[str] = []
    assert run_cell(cfg, cell, log.append, train).status == "done" and calls == [directory]
    assert is_done(directory)
    assert run_cell(cfg, cell, log.append, train).status == "skipped" and len(calls) == 1
