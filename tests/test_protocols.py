"""Fine-tuning protocols (linear probe, head only, layer decay), the CNN zoo, ImageNet init rules,
and the regression / segmentation downstream heads on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file, save_file

from finetune.__main__ import main as finetune_main
from medformer.config import ModelConfig, TrainConfig
from medformer.data.batch import make_inputs
from medformer.data.domains import dataset_info
from medformer.engine.trainer import build_optimizer
from medformer.models.cnn import RADIOLOGYNET_CNNS
from medformer.models.factory import create_model
from medformer.objectives.supervised import SupervisedObjective
from medformer.runs.modes import apply_finetune_mode, layer_decay_scales

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "finetune" / "pneumoniamnist_small.yaml")
TINY = ["model.overrides.depth=1", "train.progress=false", "train.log_every=50"]
TINY_MF = ModelConfig(name="medformer_small", overrides={"depth": 1})




def pneumonia_batch(n: int = 8):
    images = [torch.randn(1, 28, 28) for _ in range(n)]
    inputs = make_inputs(images, ["pneumoniamnist"] * n)
    return {"inputs": inputs, "targets": {"pneumoniamnist": torch.randint(0, 2, (n, 1))}}


def train_steps(model, steps: int = 3, lr: float = 1e-2) -> None:
    objective = SupervisedObjective(model)
    optimizer, _ = build_optimizer(objective, TrainConfig(lr=lr, weight_decay=0.05), 10, 0)
    model.train()
    for _ in range(steps):
        loss = sum(objective(pneumonia_batch()).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def changed(before: dict, model) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


# -- protocols ----------------------------------------------------------------------------------
def test_linear_probe_run_keeps_backbone_and_trains_head(shared_root, tmp_path):
    base = [f"data.root={shared_root}", "data.max_train_samples=64", "train.epochs=1", "train.batch_size=32",
            "train.eval_test=false", *TINY]
    assert finetune_main(["--config", CONFIG, *base, f"output_dir={tmp_path / 'a'}"]) == 0
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    assert finetune_main(["--config", CONFIG, *base, f"output_dir={tmp_path / 'b'}", f"init={tmp_path / 'a'}",
                          "finetune_mode=linear_probe", "train.lr=0.05", "train.warmup_epochs=0"]) == 0
    before = load_file(str(tmp_path / "a" / "best.safetensors"))
    last = load_file(str(tmp_path / "b" / "checkpoints" / "last" / "model.safetensors"))  # the objective's state
    after = {k.removeprefix("model."): v for k, v in last.items()}
    assert after.keys() == before.keys()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith(("output_adapt.heads.", "output_adapt.task_latents.")) for k in moved), moved
    assert "output_adapt.heads.pneumoniamnist.weight" in moved
    stats = json.loads((tmp_path / "b" / "train_stats.json").read_text())
    assert stats["epochs_to_best"] == stats["best_epoch"] + 1 == 1
    assert stats["finetune_mode"] == "linear_probe" and 0 < stats["parameters"]["trainable"] < stats["parameters"]["frozen"]


def test_head_only_medformer_freezes_body_blocks():
    model = create_model(TINY_MF, [dataset_info("pneumoniamnist")])
    apply_finetune_mode(model, "head_only")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model)
    moved = changed(before, model)
    assert not any(k.startswith(("blocks.", "norm.")) for k in moved)
    assert any(k.startswith("input_adapt.") for k in moved) and any(k.startswith("output_adapt.cross.") for k in moved)


def test_cnn_linear_probe_keeps_weights_and_batchnorm_statistics():
    model = create_model(ModelConfig(name="resnet18"), [dataset_info("pneumoniamnist")])
    apply_finetune_mode(model, "linear_probe")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model)
    moved = changed(before, model)
    assert moved == {"heads.pneumoniamnist.weight", "heads.pneumoniamnist.bias"}  # running_mean etc. unchanged


def test_layer_decay_gives_expected_per_block_learning_rates():
    depth, decay, lr = 3, 0.5, 1e-3
    model = create_model(ModelConfig(name="medformer_small", overrides={"depth": depth}), [dataset_info("pneumoniamnist")])
    scales = layer_decay_scales(model, decay)
    objective = SupervisedObjective(model)
    optimizer, scheduler = build_optimizer(
        objective, TrainConfig(lr=lr, weight_decay=0.05), 100, 0, lambda n: scales[n.removeprefix("model.")]
    )
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    for i in range(depth):
        expected = lr * decay ** (depth - i)
        assert group_of[id(named[f"blocks.{i}.attn.q.weight"])]["lr"] == pytest.approx(expected)
        assert group_of[id(named[f"blocks.{i}.attn.q.bias"])]["weight_decay"] == 0.0  # no-decay rule kept
    assert group_of[id(named["input_adapt.patch_2d.proj.weight"])]["lr"] == pytest.approx(lr * decay ** (depth + 1))
    assert group_of[id(named["input_adapt.latents"])]["weight_decay"] == 0.0
    assert group_of[id(named["output_adapt.heads.pneumoniamnist.weight"])]["lr"] == pytest.approx(lr)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    ratios = {round(g["lr"] / g["initial_lr"], 9) for g in optimizer.param_groups}
    assert len(ratios) == 1  # the schedule scales every group alike
    with pytest.raises(ValueError, match="Medformer models only"):
        layer_decay_scales(create_model(ModelConfig(name="resnet18"), [dataset_info("pneumoniamnist")]), 0.7)


@pytest.mark.parametrize(
    "override,message",
    [
        ("init=imagenet", "no ImageNet weights exist for medformer_small"),
        ("finetune_mode=probe", "'finetune_mode' must be one of full, linear_probe, head_only"),
        ("model.pretrained_file=/x.safetensors", "used only with init=imagenet"),
    ],
)
def test_bad_protocol_settings_one_line_error(tmp_path, capsys, override, message):
    out = tmp_path / "bad"
    assert finetune_main(["--config", CONFIG, *TINY, override, f"output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


# -- CNN zoo and ImageNet init ------------------------------------------------------------------
@pytest.mark.parametrize("name", RADIOLOGYNET_CNNS)
def test_radiologynet_cnn_builds_and_runs_at_28px(name):
    model = create_model(ModelConfig(name=name), [dataset_info("pneumoniamnist")], 28).eval()
    inputs = make_inputs([torch.randn(1, 28, 28) for _ in range(2)], ["pneumoniamnist"] * 2)
    with torch.no_grad():
        out = model(inputs)["pneumoniamnist"]
    assert out.shape == (2, 1) and torch.isfinite(out).all()


def test_imagenet_init_from_local_pretrained_file(tmp_path):
    import timm

    reference = timm.create_model("resnet18", num_classes=0)
    save_file(reference.state_dict(), str(tmp_path / "r18.safetensors"))
    cfg = ModelConfig(name="resnet18", pretrained_file=str(tmp_path / "r18.safetensors"))
    model = create_model(cfg, [dataset_info("pneumoniamnist")], pretrained=True)
    assert torch.equal(model.encoder_2d.conv1.weight, reference.conv1.weight)
    missing = ModelConfig(name="resnet18", pretrained_file=str(tmp_path / "nope.safetensors"))
    with pytest.raises(FileNotFoundError, match="pretrained_file"):
        create_model(missing, [dataset_info("pneumoniamnist")], pretrained=True)


def test_imagenet_init_offline_fails_at_once_or_uses_the_hub_cache(monkeypatch, tmp_path):
    import time

    from medformer.models import cnn

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(cnn, "cached_hub_weights", lambda name: None)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="unreachable and they are not cached.*model.pretrained_file"):
        create_model(ModelConfig(name="resnet18"), [dataset_info("pneumoniamnist")], pretrained=True)
    assert time.perf_counter() - t0 < 5  # no hub retries
    import timm

    reference = timm.create_model("resnet18", num_classes=0)
    save_file(reference.state_dict(), str(tmp_path / "cached.safetensors"))
    monkeypatch.setattr(cnn, "cached_hub_weights", lambda name: str(tmp_path / "cached.safetensors"))
    model = create_model(ModelConfig(name="resnet18"), [dataset_info("pneumoniamnist")], pretrained=True)
    assert torch.equal(model.encoder_2d.conv1.weight, reference.conv1.weight)
