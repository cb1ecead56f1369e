"""LR schedules: valid for any run length, warm up then anneal."""

from __future__ import annotations

import pytest
import torch

from medformer.config import TrainConfig
from medformer.engine.trainer import build_optimizer


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_every_short_run_length_and_warmup_works(schedule):
    for total in range(1, 12):
        for warmup in range(total + 1):
            opt, sched = build_optimizer(torch.nn.Linear(2, 2), TrainConfig(schedule=schedule), total, warmup)
            for _ in range(total):
                opt.step()
                sched.step()


def test_cosine_warms_up_then_anneals_to_zero():
    opt, sched = build_optimizer(torch.nn.Linear(2, 2), TrainConfig(schedule="cosine", lr=1.0), 100, 10)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))
    assert lrs[-1] < 0.01
