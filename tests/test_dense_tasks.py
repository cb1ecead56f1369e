"""Segmentation and regression tasks end to end: derived targets, heads on every encoder, fine-tuning,
metrics.json, the study report, config errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from finetune.__main__ import main as finetune_main
from medformer.config import ModelConfig, load_config
from medformer.data.batch import make_inputs
from medformer.data.derived import Derivation, register_derived, smooth, targets_of
from medformer.data.domains import BINARY, REGRESSION, SEGMENTATION, dataset_info
from medformer.data.medmnist import load_arrays
from medformer.data.synthetic import synthetic_info, write_synthetic_npz
from medformer.eval.dense_metrics import segmentation_metrics
from medformer.models.factory import create_model
from medformer.objectives.losses import task_loss
from medformer.study import StudyConfig, run_study

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "finetune" / "pneumoniamnist_small.yaml")
TINY = ["train.progress=false", "train.log_every=1", "train.warmup_epochs=0.5"]


def finetune(args: list[str], name: str = "medformer_small") -> int:
    """A fine-tune run of `name` (a Medformer with one body block)."""
    model = ["model.overrides.depth=1"] if name.startswith("medformer") else []
    return finetune_main(["--config", CONFIG, *TINY, f"model.name={name}", *model, *args])


def metrics_of(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def train_losses(out: Path) -> list[float]:
    event_dir = next(p.parent for p in (out / "logs").rglob("events.out.tfevents*")
                     if "loss/total" in EventAccumulator(str(p.parent)).Reload().Tags()["scalars"])
    return [e.value for e in EventAccumulator(str(event_dir)).Reload().Scalars("loss/total")]


def went_down(losses: list[float]) -> bool:
    k = max(3, len(losses) // 5)
    return sum(losses[-k:]) / k < 0.8 * sum(losses[:k]) / k


def test_derived_targets_are_measured_from_the_real_images(shared_root):
    images, _ = load_arrays("breastmnist", "train", root=shared_root)
    masks = targets_of(images, dataset_info("breastmnist_seg"))
    blurred = smooth(torch.from_numpy(images).float() / 255, 1.0)
    assert torch.equal(masks, (blurred > 0.4).long())
    share = masks.float().mean().item()
    assert 0.25 < share < 0.5  # a real foreground, neither empty nor everything
    area = targets_of(images, dataset_info("breastmnist_fgarea"))
    assert area.shape == (len(images),)
    assert torch.allclose(area, masks.flatten(1).float().mean(1) * 100)
    assert area.std() > 10  # the property varies between images: something to regress


@pytest.mark.parametrize("dim", ["2d", "3d"])
@pytest.mark.parametrize("kind", ["transformer", "cnn"])
@pytest.mark.parametrize("name", ["medformer_small", "resnet18"])
def test_heads_predict_full_resolution_masks_and_one_value_per_image(name, kind, dim):
    seg, reg = ("breastmnist_seg", "breastmnist_fgarea") if dim == "2d" else ("adrenalmnist3d_seg", "adrenalmnist3d_fgvolume")
    cls = "breastmnist" if dim == "2d" else "adrenalmnist3d"
    side = 28 if dim == "2d" else 16
    shape = (1, side, side) if dim == "2d" else (1, side, side, side)
    overrides = {"depth": 1} if name.startswith("medformer") else {}
    infos = [dataset_info(f) for f in (seg, reg, cls)]
    model = create_model(ModelConfig(name=name, dense_head=kind, overrides=overrides), infos, image_size=side)
    torch.manual_seed(0)
    flags = [seg, seg, reg, reg, reg, cls, cls]
    out = model(make_inputs([torch.randn(shape) for _ in flags], flags))
    assert out[seg].shape == (2, 2, *shape[1:])
    assert out[reg].shape == (3,)
    assert out[cls].shape == (2, 1)  # the classification head beside them is unchanged
    masks = torch.randint(0, 2, (2, *shape[1:]))
    loss = task_loss(out[seg], masks, SEGMENTATION) + task_loss(out[reg], torch.rand(3), REGRESSION)
    loss.backward()
    grads = [p.grad for p in model.dense_heads.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(("name", "kind", "n_train"), [("medformer_small", "cnn", 546), ("resnet18", "transformer", 320)])
def test_segmentation_of_real_images_beats_trivial_masks_and_writes_dice(shared_root, tmp_path, name, kind, n_train):
    out = tmp_path / "seg"
    assert finetune([f"data.root={shared_root}", "data.datasets=[breastmnist_seg]", f"model.dense_head={kind}",
                     f"data.max_train_samples={n_train}", "train.epochs=3", "train.batch_size=32",
                     f"output_dir={out}"], name) == 0
    metrics = metrics_of(out)["breastmnist_seg"]
    assert set(metrics) == {"val", "test"} and set(metrics["test"]) == {"dice", "iou"}
    images, _ = load_arrays("breastmnist", "test", root=shared_root)
    masks = targets_of(images, dataset_info("breastmnist_seg")).numpy()
    all_foreground = segmentation_metrics(np.ones_like(masks), masks, 2)["dice"]  # all-background: 0
    assert metrics["test"]["dice"] > all_foreground + 0.2, (metrics, all_foreground)
    assert went_down(train_losses(out))


@pytest.mark.parametrize(("name", "kind"), [("medformer_small", "transformer"), ("medformer_small", "cnn")])
def test_regression_of_a_measured_property_beats_the_train_mean_and_writes_mae(shared_root, tmp_path, name, kind):
    out = tmp_path / "reg"
    assert finetune([f"data.root={shared_root}", "data.datasets=[breastmnist_fgarea]", f"model.dense_head={kind}",
                     "train.epochs=3", "train.batch_size=32", f"output_dir={out}"], name) == 0
    metrics = metrics_of(out)["breastmnist_fgarea"]
    assert set(metrics["test"]) == {"mae", "rmse", "r2"}
    info = dataset_info("breastmnist_fgarea")
    train_mean = targets_of(load_arrays("breastmnist", "train", root=shared_root)[0], info).mean()
    test_targets = targets_of(load_arrays("breastmnist", "test", root=shared_root)[0], info)
    mean_mae = (test_targets - train_mean).abs().mean().item()
    assert metrics["test"]["mae"] < 0.6 * mean_mae, (metrics, mean_mae)
    assert went_down(train_losses(out))


def test_synthetic_3d_segmentation_learns_the_bright_region(tmp_path):
    source = synthetic_info("synth_cube3d", "3d", BINARY, 2, 1)
    write_synthetic_npz(tmp_path, "synth_cube3d", n=(48, 16, 16), info=source)
    register_derived("synth_cube3d_seg", "synth_cube3d", SEGMENTATION, Derivation(threshold=0.45, sigma=1.0))
    out = tmp_path / "run"
    assert finetune([f"data.root={tmp_path}", "data.verify_md5=false", "data.datasets=[synth_cube3d_seg]",
                     "model.dense_head=cnn", "train.epochs=3", "train.batch_size=8", "train.lr=2e-3",
                     "train.ema=0", f"output_dir={out}"]) == 0
    dice = metrics_of(out)["synth_cube3d_seg"]["test"]["dice"]
    images, _ = load_arrays("synth_cube3d", "test", root=tmp_path, verify_md5=False)
    masks = targets_of(images, dataset_info("synth_cube3d_seg")).numpy()
    assert dice > segmentation_metrics(np.ones_like(masks), masks, 2)["dice"] + 0.2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.dense_heads.breastmnist=cnn", "breastmnist is a binary-class task with no masks"),
        ("model.dense_heads.breastmnist_seg=unet", "'model.dense_heads.breastmnist_seg' must be one of transformer, cnn"),
        ("model.dense_head=unet", "'model.dense_head' must be one of transformer, cnn"),
    ],
)
def test_a_dense_head_for_a_task_without_dense_targets_is_a_one_line_error(shared_root, tmp_path, capsys, override, message):
    out = tmp_path / "bad"
    datasets = "[breastmnist]" if "breastmnist=" in override else "[breastmnist_seg]"
    assert finetune([f"data.root={shared_root}", f"data.datasets={datasets}", override, f"output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_study_reports_dice_and_mae_beside_classification(shared_root, tmp_path):
    out = tmp_path / "study"
    cfg = load_config(StudyConfig, REPO / "configs" / "study" / "smoke.yaml", [
        f"data.root={shared_root}", f"output_dir={out}", "data.datasets=[breastmnist,breastmnist_seg,breastmnist_fgarea]",
        "label_fractions=[1.0]", "seeds=[0]", "finetune.model.dense_head=transformer"])
    run_study(cfg)
    with open(out / "results.csv", newline="") as fh:
        rows = {r["dataset"]: r for r in csv.DictReader(fh)}
    assert all(r["status"] == "done" for r in rows.values())
    assert 0 < float(rows["breastmnist_seg"]["test_dice"]) <= 1 and rows["breastmnist_seg"]["test_auc"] == ""
    assert float(rows["breastmnist_fgarea"]["test_mae"]) > 0 and rows["breastmnist_fgarea"]["test_dice"] == ""
    assert 0 <= float(rows["breastmnist"]["test_auc"]) <= 1 and rows["breastmnist"]["test_dice"] == ""
    report = (out / "report.md").read_text()
    seg = report.split("## breastmnist_seg")[1].split("## breastmnist_fgarea")[0]
    assert "### Test Dice" in seg and "### Test AUC" not in seg
    assert "### Test MAE" in report.split("## breastmnist_fgarea")[1]
    assert "### Test AUC" in report.split("## breastmnist_seg")[0]
