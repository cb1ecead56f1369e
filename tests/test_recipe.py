"""The fine-tuning recipe's parts: class weights from label counts, weighted losses, epochs from the
training set's size, EMA weights (evaluated, kept, resumed), and their config checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_finetune import max_weight_diff, run

from medformer.config import ConfigError, FinetuneConfig, TrainConfig, load_config
from medformer.data.domains import BINARY, MULTI_CLASS, MULTI_LABEL, ORDINAL
from medformer.engine.trainer import resolve_epochs
from medformer.objectives.class_balance import class_weights
from medformer.objectives.losses import task_loss


def test_balanced_weights_give_every_class_the_same_total_weight():
    labels = np.array([0] * 30 + [1] * 10 + [3] * 60).reshape(-1, 1)  # class 2 absent
    w = class_weights(labels, MULTI_CLASS, 4, "balanced")
    counts = np.bincount(labels.ravel(), minlength=4)
    np.testing.assert_allclose((w.numpy() * counts)[counts > 0], [100 / 3] * 3, rtol=1e-6)
    assert w[2] == 0
    sqrt = class_weights(labels, MULTI_CLASS, 4, "sqrt").numpy()
    np.testing.assert_allclose(sqrt / sqrt[0], np.sqrt(w.numpy() / w[0].item()), rtol=1e-6)
    for weights in (w.numpy(), sqrt):  # mean 1 over the training labels
        assert (weights * counts).sum() / counts.sum() == pytest.approx(1.0)
    assert class_weights(labels, MULTI_CLASS, 4, "none") is None
    with pytest.raises(ValueError, match="class_weights must be one of"):
        class_weights(labels, MULTI_CLASS, 4, "inverse")


def test_multi_label_weights_are_negatives_over_positives():
    labels = np.array([[1, 0], [0, 0], [0, 1], [0, 1]])
    np.testing.assert_allclose(class_weights(labels, MULTI_LABEL, 2, "balanced").numpy(), [3.0, 1.0])


@pytest.mark.parametrize("task,width", [(BINARY, 1), (ORDINAL, 3), (MULTI_CLASS, 4)])
def test_weighted_loss_is_the_batch_mean_of_weighted_per_sample_losses(task, width):
    torch.manual_seed(0)
    logits, target = torch.randn(12, width), torch.randint(0, 4 if task != BINARY else 2, (12, 1))
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0])[: 2 if task == BINARY else 4]
    w = weight[target.reshape(-1)]
    if task == BINARY:
        per = F.binary_cross_entropy_with_logits(logits.reshape(-1), target.float().reshape(-1), reduction="none")
    elif task == ORDINAL:
        cumulative = (target.reshape(-1, 1) > torch.arange(width)).float()
        per = F.binary_cross_entropy_with_logits(logits, cumulative, reduction="none").mean(1)
    else:
        per = F.cross_entropy(logits, target.reshape(-1), reduction="none")
    torch.testing.assert_close(task_loss(logits, target, task, weight), (per * w).mean())
    halves = [task_loss(logits[rows], target[rows], task, weight) for rows in (slice(0, 6), slice(6, 12))]
    torch.testing.assert_close(sum(halves) / 2, task_loss(logits, target, task, weight))  # 2 processes = 1
    torch.testing.assert_close(task_loss(logits, target, task), per.mean())


def test_auto_epochs_follow_the_training_set_size():
    for n, epochs in ((546, 147), (4708, 17), (80_000, 1), (160_000, 1)):
        train = TrainConfig(epochs="auto", auto_samples=80_000)
        resolve_epochs(train, n)
        assert train.epochs == epochs, n
    four = TrainConfig(epochs="auto", auto_samples=40_000)
    resolve_epochs(four, 7522, n_datasets=4)  # the four shared datasets: each about 40k when balanced
    assert four.epochs == 22
    fixed = TrainConfig(epochs=7)
    resolve_epochs(fixed, 546)
    assert fixed.epochs == 7


def test_overriding_one_train_key_keeps_the_recipe():
    """`train.max_minutes=10` (a study's budget) must not reset the other train keys to
    TrainConfig's defaults: FinetuneConfig's recipe stays."""
    cfg = load_config(FinetuneConfig, None, ["train.max_minutes=10"])
    recipe = FinetuneConfig().train
    keys = ("epochs", "auto_samples", "batch_size", "lr", "ema", "select")
    assert [getattr(cfg.train, k) for k in keys] == [getattr(recipe, k) for k in keys] == ["auto", 80_000, 32, 5e-4, 0.999, "last"]
    yaml = load_config(FinetuneConfig, Path(__file__).parents[1] / "configs/finetune/pneumoniamnist_small.yaml", [])
    assert [getattr(yaml.train, k) for k in keys] == [getattr(recipe, k) for k in keys]  # the config users copy
    assert cfg.train.max_minutes == 10
    assert load_config(FinetuneConfig, None, ["train.lr=0.01"]).train.ema == 0.999


def test_medmnist_protocol_config_is_medmnists_resnet18_recipe():
    """configs/finetune/medmnist_protocol_resnet18.yaml: 100 epochs of Adam 1e-3 at batch 128, /10 at
    epochs 50 and 75 (test_schedule), no augmentation, no EMA or class weights, the best-val epoch tested
    (MedMNIST v2's script)."""
    cfg = load_config(FinetuneConfig, Path(__file__).parents[1] / "configs/finetune/medmnist_protocol_resnet18.yaml", [])
    train = cfg.train
    assert (cfg.model.name, train.epochs, train.batch_size, train.lr, train.weight_decay) == ("resnet18_28", 100, 128, 1e-3, 0)
    assert (train.schedule, train.warmup_epochs, train.grad_clip, train.ema, train.select) == ("multistep", 0, 0, 0, "best_val")
    assert not cfg.augment.enabled and cfg.class_weights == "none"


def test_enum_keys_fail_at_load_with_the_choices():
    with pytest.raises(ConfigError, match="'class_weights' must be one of none, sqrt, balanced"):
        load_config(FinetuneConfig, None, ["class_weights=inverse"])
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(FinetuneConfig, None, ["train.epochs=many"])
    assert load_config(FinetuneConfig, None, ["train.epochs=auto"]).train.epochs == "auto"


def test_class_weights_reach_the_loss_of_a_real_run(shared_root, tmp_path):
    """A run with balanced weights on BreastMNIST (27% malignant) writes metrics and trains; its
    objective holds the weights computed from the training labels."""
    from medformer.data.loaders import augment_factory, train_dataset
    from medformer.runs.finetune import train_class_weights

    cfg = load_config(FinetuneConfig, None, [f"data.root={shared_root}", "data.datasets=[breastmnist]"])
    weights, offsets = train_class_weights(train_dataset(cfg.data, augment_factory(cfg.augment), 0), "balanced")
    labels = np.load(shared_root / "breastmnist.npz")["train_labels"].ravel()
    counts = np.bincount(labels)
    torch.testing.assert_close(weights["breastmnist"], torch.tensor(len(labels) / (2 * counts), dtype=torch.float32))
    assert offsets == {}  # plain balanced weights move the predictions; only balanced_prior shifts the loss


@pytest.mark.parametrize("task,n_classes", [(BINARY, 2), (MULTI_CLASS, 3), (ORDINAL, 4), (MULTI_LABEL, 2)])
def test_balanced_prior_keeps_the_prior_as_the_optimum_without_features(task, n_classes):
    """A head that sees no image (one free logit vector for all samples) trained with balanced
    weights ends at the balanced prior; with balanced_prior's offset in the loss it ends at the
    training prior, as an unweighted one does."""
    from medformer.models.heads import head_width, logits_to_scores
    from medformer.objectives.class_balance import prior_offset

    rng = np.random.default_rng(0)
    if task == MULTI_LABEL:
        labels = (rng.random((400, n_classes)) < [0.1, 0.3]).astype(np.int64)
        target = torch.tensor(labels)
    else:
        labels = rng.choice(n_classes, size=(400, 1), p=np.linspace(4, 1, n_classes) / np.linspace(4, 1, n_classes).sum())
        target = torch.tensor(labels.ravel())

    def fitted(weight, offset):
        z = torch.zeros(head_width(task, n_classes), requires_grad=True)
        opt = torch.optim.LBFGS([z], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            logits = z.expand(len(target), -1)
            loss = task_loss(logits if offset is None else logits + offset, target, task, weight)
            loss.backward()
            return loss

        opt.step(closure)
        return logits_to_scores(z.detach()[None], task)[0] if task != BINARY else torch.sigmoid(z.detach())

    w = class_weights(labels, task, n_classes, "balanced_prior")
    unweighted = fitted(None, None)
    kept = fitted(w, prior_offset(labels, task, n_classes, w))
    moved = fitted(w, None)
    torch.testing.assert_close(kept, unweighted, atol=2e-3, rtol=0)
    assert (moved - unweighted).abs().max() > 0.05


def test_ema_weights_are_evaluated_kept_and_resumed(shared_root, tmp_path, monkeypatch):
    """With train.ema the kept weights are the EMA's at the tested epoch, and a run resumed from its
    epoch-1 checkpoint ends with the same EMA and raw weights as an uninterrupted one."""
    import shutil

    from safetensors.torch import load_file

    from medformer.engine.trainer import Trainer

    full, part = tmp_path / "full", tmp_path / "part"
    ema_after_epoch: dict[int, dict] = {}
    save_last = Trainer.save_last

    def save_and_snapshot(self):
        save_last(self)
        if self.output_dir == full:
            ema_after_epoch[self.state.epoch] = load_file(str(self.last_dir / "ema.safetensors"))
            if self.state.epoch == 1:  # the run as it stood after epoch 1: resumed below
                shutil.copytree(full, part)

    monkeypatch.setattr(Trainer, "save_last", save_and_snapshot)
    args = [f"data.root={shared_root}", "data.max_train_samples=256", "train.batch_size=32", "train.ema=0.99",
            "train.epochs=3", "train.eval_test=false"]
    assert run([*args, f"output_dir={full}"]) == 0
    assert run([*args, f"resume={part}", f"output_dir={part}"]) == 0
    last = "checkpoints/last"
    assert max_weight_diff(full / last / "ema.safetensors", part / last / "ema.safetensors") == 0.0
    assert max_weight_diff(full / last / "model.safetensors", part / last / "model.safetensors") == 0.0
    tested_epoch = json.loads((full / "train_stats.json").read_text())["tested_epoch"]
    best = load_file(str(full / "best.safetensors"))
    assert all(torch.equal(best[k], v) for k, v in ema_after_epoch[tested_epoch + 1].items())
    raw = {k.removeprefix("model."): v for k, v in load_file(str(full / last / "model.safetensors")).items()}
    ema = load_file(str(full / last / "ema.safetensors"))
    assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in ema)


def test_select_last_tests_the_final_ema_weights(shared_root, tmp_path, monkeypatch):
    """train.select=last: the weights kept as best.safetensors (and tested) are the last epoch's EMA,
    even when val says every later epoch is worse than the first."""
    from medformer.engine import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "_improves", lambda *args: False)
    out = tmp_path / "run"
    args = [f"data.root={shared_root}", "data.max_train_samples=128", "train.batch_size=32", "train.ema=0.99",
            "train.epochs=3", "train.eval_test=false", "train.select=last", f"output_dir={out}"]
    assert run(args) == 0
    stats = json.loads((out / "train_stats.json").read_text())
    assert (stats["best_epoch"], stats["tested_epoch"]) == (0, 2)  # val's best stays reported
    assert max_weight_diff(out / "best.safetensors", out / "checkpoints/last/ema.safetensors") == 0.0
