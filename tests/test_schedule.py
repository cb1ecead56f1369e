"""LR schedules: valid for any run length, warm up then anneal."""

from __future__ import annotations

import math
import types

import pytest
import torch
from toy_objective import Regression

from medformer.config import TrainConfig
from medformer.engine.trainer import build_optimizer


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant", "multistep"])
def test_every_short_run_length_and_warmup_works(schedule):
    for total in range(1, 12):
        for warmup in range(total + 1):
            opt, sched = build_optimizer(torch.nn.Linear(2, 2), TrainConfig(schedule=schedule), total, warmup)
            for _ in range(total):
                opt.step()
                sched.step()


def _lr_per_step(schedule: str, total: int, warmup: int) -> list[float]:
    """The LR of each of `total` optimizer steps at base LR 1."""
    opt, sched = build_optimizer(torch.nn.Linear(2, 2), TrainConfig(schedule=schedule, lr=1.0), total, warmup)
    lrs = []
    for _ in range(total):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return lrs


def test_cosine_warms_up_then_anneals_to_zero():
    lrs = _lr_per_step("cosine", 100, 10)
    assert lrs[0] < lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))
    assert lrs[-1] < 0.01


def test_multistep_divides_by_ten_at_half_and_three_quarters_as_medmnist_does():
    lrs = _lr_per_step("multistep", 100, 0)
    assert lrs[:50] == [1.0] * 50
    assert lrs[50:75] == pytest.approx([0.1] * 25) and lrs[75:] == pytest.approx([0.01] * 25)


def _time_scheduled_run(tmp_path, monkeypatch, **train):
    """A Trainer run under a fake clock that advances one second per reading: (trainer, LR per step)."""
    from torch.utils.data import DataLoader

    import medformer.engine.trainer as trainer_module

    ticks = iter(range(10**6))
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    trainer_module.reset_accelerate_state()  # called twice in one test
    cfg = TrainConfig(**{"lr": 1.0, "progress": False, "eval_test": False, **train})
    data = [{"x": torch.randn(4), "y": torch.randn(()), "index": torch.tensor(i)} for i in range(64)]
    loader = DataLoader(data, batch_size=8, shuffle=False)
    lrs = []
    acc = trainer_module.make_accelerator(cfg, tmp_path, log=False)
    trainer = trainer_module.Trainer(cfg, Regression(), loader, tmp_path, acc,
                                     step_callback=lambda step, objective: lrs.append(trainer.scheduler.get_last_lr()[0]))
    trainer.fit()
    return trainer, lrs


def test_time_schedule_spans_the_budget_whatever_the_step_estimate(tmp_path, monkeypatch):
    """schedule_by=time: about 60 one-second steps in a 1-minute budget whose nominal length is 40
    steps (an underestimate) or 400 (an overestimate); the LR warms up, anneals to 0 at the budget,
    and the run ends there, not at the nominal step count."""
    for nominal in (40, 400):
        trainer, lrs = _time_scheduled_run(tmp_path / str(nominal), monkeypatch, schedule_by="time", max_minutes=1.0,
                                           epochs=nominal // 8, max_steps=nominal, warmup_epochs=0.1 * nominal / 8)
        assert trainer.stopped_by_time and 45 <= trainer.state.step <= 61, trainer.state.step  # epoch ends read the clock too
        peak = lrs.index(max(lrs))
        assert 3 <= peak <= 9  # warmup: the first 10% of the time
        assert lrs[peak] == pytest.approx(1.0, abs=0.05) and lrs[-1] < 0.01
        assert all(a >= b for a, b in zip(lrs[peak:-1], lrs[peak + 1:], strict=True))


def test_step_schedule_is_unchanged_by_a_time_budget(tmp_path, monkeypatch):
    """schedule_by=steps keeps the step-based cosine; a generous time budget does not stop it."""
    trainer, lrs = _time_scheduled_run(tmp_path, monkeypatch, max_minutes=10.0, epochs=2, warmup_epochs=0)
    assert not trainer.stopped_by_time and trainer.state.step == 16
    expected = [0.5 * (1 + math.cos(math.pi * step / 16)) for step in range(1, 17)]
    assert lrs == pytest.approx(expected)


def test_time_schedule_without_a_budget_is_refused():
    with pytest.raises(ValueError, match="train.max_minutes"):
        build_optimizer(torch.nn.Linear(2, 2), TrainConfig(schedule_by="time"), 10, 1)
    with pytest.raises(ValueError, match="steps or time"):
        build_optimizer(torch.nn.Linear(2, 2), TrainConfig(schedule_by="epochs", max_minutes=1.0), 10, 1)
