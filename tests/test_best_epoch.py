"""Which epoch a run keeps as best: the monitored val score, but never an epoch whose predictions are at
chance level (MCC <= 0, e.g. every image called the majority class) over one that is not; or, with
train.select=last, the final epoch."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader
from toy_objective import Regression

from medformer.config.finetune import TrainConfig
from medformer.engine import trainer as trainer_module
from medformer.engine.trainer import TrainerState


def _kept_epoch(tmp_path, val_per_epoch: list[dict[str, dict[str, float]]], select: str = "best_val") -> int:
    """Run one epoch per entry of `val_per_epoch` (what `evaluate` reports then); the epoch kept and tested."""
    cfg = TrainConfig(epochs=len(val_per_epoch), batch_size=8, progress=False, eval_test=False, select=select)
    data = [{"x": torch.randn(4), "y": torch.randn(()), "index": torch.tensor(i)} for i in range(16)]
    scripted = iter(val_per_epoch)
    acc = trainer_module.make_accelerator(cfg, tmp_path, log=False)
    trainer = trainer_module.Trainer(cfg, Regression(), DataLoader(data, batch_size=8), tmp_path, acc,
                                     evaluate=lambda model: next(scripted))
    trainer.fit()
    trainer.close()
    return trainer.stats()["tested_epoch"]


def _val(auc: float, mcc: float) -> dict[str, dict[str, float]]:
    return {"adrenalmnist3d": {"auc": auc, "acc": 0.78, "mcc": mcc}}


@pytest.mark.parametrize(
    ("epochs", "kept"),
    [
        # the AdrenalMNIST3D seed that ended at the prior: its best val AUC came at an epoch predicting one class
        ([_val(0.789, 0.47), _val(0.792, 0.0), _val(0.784, 0.47)], 0),
        ([_val(0.70, 0.0), _val(0.65, 0.2), _val(0.80, 0.0), _val(0.75, 0.3)], 3),
        # every epoch at chance level: the monitored score alone, as before
        ([_val(0.70, 0.0), _val(0.75, 0.0), _val(0.72, 0.0)], 1),
        # no epoch at chance level: the monitored score alone
        ([_val(0.70, 0.2), _val(0.75, 0.1), _val(0.72, 0.4)], 1),
    ],
)
def test_an_epoch_at_chance_level_is_never_kept_over_one_that_is_not(tmp_path, epochs, kept):
    assert _kept_epoch(tmp_path, epochs) == kept


def test_select_last_keeps_the_final_epoch_unless_it_is_at_chance_level(tmp_path):
    epochs = [_val(0.80, 0.4), _val(0.90, 0.5), _val(0.70, 0.2)]
    assert _kept_epoch(tmp_path / "best", epochs) == 1
    assert _kept_epoch(tmp_path / "last", epochs, select="last") == 2
    assert _kept_epoch(tmp_path / "one", epochs[:1], select="last") == 0
    # the last epoch at chance level: the last one that is not; all at chance: the last
    assert _kept_epoch(tmp_path / "chance", [_val(0.8, 0.0), _val(0.9, 0.4), _val(0.7, 0.3), _val(0.95, 0.0)],
                       select="last") == 2
    assert _kept_epoch(tmp_path / "all", [_val(0.8, 0.0), _val(0.9, 0.0)], select="last") == 1


def test_a_task_at_chance_level_marks_the_whole_epoch(tmp_path):
    """Multi-task: one task predicting a single class is enough; tasks without an MCC (Dice) do not count."""
    both = {"a": {"auc": 0.9, "mcc": 0.5}, "b": {"auc": 0.9, "mcc": 0.0}, "seg": {"dice": 0.1}}
    fine = {"a": {"auc": 0.8, "mcc": 0.5}, "b": {"auc": 0.8, "mcc": 0.3}, "seg": {"dice": 0.1}}
    assert _kept_epoch(tmp_path, [fine, both]) == 0


def test_resumed_state_keeps_whether_its_best_was_at_chance_level():
    state = TrainerState(best_metric=0.79, best_epoch=4, best_at_chance=True, tested_epoch=6)
    resumed = TrainerState.from_json(state.to_json())
    assert resumed.best_at_chance and resumed.tested_epoch == 6
    older = json.loads(state.to_json())
    del older["best_at_chance"]  # a checkpoint written before the field existed
    assert TrainerState.from_json(json.dumps(older)).best_at_chance is False
