"""Self-supervised pretraining: every method learns, momentum encoders, 2-process == 1-process,
the pretrain entry point end to end (encoder export -> finetune init), probes and kNN."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from medmnist.evaluator import getACC, getAUC
from ssl_heads import tiny_ssl

from medformer.config import ConfigError, DataConfig, ModelConfig, TrainConfig, load_config
from medformer.config.pretrain import PretrainConfig
from medformer.data.batch import make_inputs
from medformer.data.domains import BINARY, MULTI_CLASS, MULTI_LABEL, dataset_info
from medformer.data.loaders import train_dataset, train_loader
from medformer.data.transforms import MultiViewTransform, ViewConfig
from medformer.engine.trainer import build_optimizer
from medformer.eval.bootstrap import paired_bootstrap
from medformer.eval.metrics import medmnist_metrics
from medformer.eval.probe import (
    C_GRID,
    knn_eval,
    linear_probe,
    linear_probe_scores,
    run_probe,
    select_C,
)
from medformer.models.factory import create_model
from medformer.objectives.pretext import PRETEXT_TASKS
from medformer.objectives.ssl import (
    SSL_METHODS,
    CollapseDetector,
    DistBatchNorm,
    MomentumObjective,
    build_ssl_objective,
)
from medformer.runs.pretrain import check_objectives, predictor_lr_scale

REPO = Path(__file__).resolve().parents[1]
METHODS = sorted(SSL_METHODS)
MIXED = ["pneumoniamnist", "adrenalmnist3d"]
TINY = {"depth": 1, "hidden_dim": 32, "heads": 2, "latent_dim": 16, "num_latent_tokens": 4}
TINY_ARGS = [f"model.overrides.{k}={v}" for k, v in TINY.items()]
TINY_HEADS = {"proj_hidden_dim": 64, "proj_output_dim": 32, "pred_hidden_dim": 64}




def tiny_objective(method: str, datasets=MIXED, **ssl) -> MomentumObjective:
    torch.manual_seed(0)
    model = create_model(ModelConfig(overrides=dict(TINY)), [dataset_info(f) for f in datasets], 28)
    return build_ssl_objective(method, model, tiny_ssl(method, **{**TINY_HEADS, **ssl}))


@pytest.fixture(scope="module")
def view_batches():
    """24 multi-view batches (16 samples, 2D and 3D mixed) of real data, new views each epoch."""
    root = REPO.parent / "shared" / "data" / "medmnist"
    if not all((root / f"{f}.npz").is_file() for f in MIXED):
        pytest.skip(f"real MedMNIST files not found in {root}")
    torch.set_num_threads(1)
    data = DataConfig(root=str(root), datasets=MIXED, max_train_samples=32)
    dataset = train_dataset(data, lambda dim: MultiViewTransform(ViewConfig(), dim), seed=0)
    loader = train_loader(dataset, batch_size=16, seed=0)
    batches: list[dict] = []
    for epoch in range(6):
        dataset.set_epoch(epoch)
        batches += list(loader)
    return batches[:24]


# ------------------------------------------------------------------ learning


@pytest.mark.parametrize("method", ["byol", "vicreg"])
def test_cnn_encoders_pretrain_on_mixed_2d_3d_views(method):
    """A timm CNN (2D) with the R3D-18 path (3D) as the encoder: the loss falls when the same
    two-view batch is fitted for a few steps, and BatchNorm/momentum copies work."""
    torch.manual_seed(0)
    model = create_model(ModelConfig(name="resnet18"), [dataset_info(f) for f in MIXED], 28)
    objective = build_ssl_objective(method, model, tiny_ssl(method, **TINY_HEADS))
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(1, 28, 28, generator=g) if i % 2 else torch.rand(1, 28, 28, 28, generator=g) for i in range(4)]
    flags = [MIXED[i % 2 == 0] for i in range(4)]
    views = [make_inputs([x + 0.05 * torch.randn(x.shape, generator=g) for x in images], flags) for _ in range(2)]
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(1, 5):
        loss = sum(objective({"views": views}).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        objective.on_step_end(step, 4)
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert objective.last_embeddings.shape == (4, 512)


@pytest.mark.parametrize("method", METHODS)
def test_loss_goes_down_on_mixed_2d_3d_batches(method, view_batches):
    # MoCo v2's first step contrasts against the random initial queue, whose easy negatives give
    # a low loss that later steps (real keys as negatives) cannot be compared with: skip that step.
    skip = 1 if method == "mocov2" else 0
    objective = tiny_objective(method, queue_size=16)
    batch_dims = {d for v in view_batches[0]["views"] for d in v.dim}
    assert batch_dims == {"2d", "3d"}
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad],
                                  lr=1e-3 if method == "mocov2" else 2e-3, weight_decay=0.0)
    totals = []
    for step, batch in enumerate(view_batches, start=1):
        losses = objective(batch)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        objective.on_step_end(step, len(view_batches))
        totals.append(total.item())
    assert all(np.isfinite(totals))
    first, last = np.mean(totals[skip:skip + 3]), np.mean(totals[-3:])
    assert last < first, f"{method}: loss {first:.4f} -> {last:.4f}: {np.round(totals, 3)}"
    assert objective.last_embeddings.shape == (16, TINY["hidden_dim"])


def test_loss_terms_are_named_and_vicreg_terms_sum_to_lightly_loss():
    from lightly.loss import VICRegLoss

    objective = tiny_objective("vicreg")
    z0, z1 = torch.randn(16, 32), torch.randn(16, 32)
    terms = objective.invariance(z0, z1)
    from lightly.loss.vicreg_loss import covariance_loss, variance_loss

    terms["ssl/variance"] = 25.0 * 0.5 * (variance_loss(z0) + variance_loss(z1))
    terms["ssl/covariance"] = covariance_loss(z0) + covariance_loss(z1)
    assert torch.allclose(sum(terms.values()), VICRegLoss(gather_distributed=True)(z0, z1), rtol=1e-6)
    # the thesis variant with a pure-MSE invariance is plain VICReg
    thesis = tiny_objective("vicreg_thesis", cosine_weight=0.0, mse_weight=1.0)
    assert torch.allclose(sum(thesis.invariance(z0, z1).values()), terms["ssl/invariance"])
    cos_only = tiny_objective("vicreg_thesis", cosine_weight=1.0, mse_weight=0.0)
    assert torch.allclose(sum(cos_only.invariance(z0, 3 * z0).values()), torch.tensor(0.0), atol=1e-5)


def test_unknown_method_and_single_view_batches_are_refused():
    with pytest.raises(ValueError, match="unknown ssl.method 'simsiam'"):
        tiny_objective("simsiam")
    with pytest.raises(ValueError, match="2 views"):
        tiny_objective("simclr")({"inputs": None})


def test_predictor_lr_scale_sets_the_predictors_lr_and_is_refused_without_a_predictor():
    objective = tiny_objective("byol")
    optimizer, _ = build_optimizer(objective, TrainConfig(lr=1e-3), 10, 0, predictor_lr_scale(10.0))
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in objective.named_parameters():
        if p.requires_grad:
            assert lr_of[id(p)] == pytest.approx(1e-2 if name.startswith("predictor.") else 1e-3), name
    # only the methods with a predictor have the knob, and it must be > 0
    with pytest.raises(ConfigError, match="unknown config key 'ssl.simclr.predictor_lr_scale'"):
        load_config(PretrainConfig, None, ["ssl.method=simclr", "ssl.simclr.predictor_lr_scale=10"])
    with pytest.raises(ConfigError, match="ssl.byol.predictor_lr_scale"):
        load_config(PretrainConfig, None, ["ssl.method=byol", "ssl.byol.predictor_lr_scale=0"])


def test_settings_of_a_method_that_does_not_run_are_refused():
    cfg = load_config(PretrainConfig, None, ["ssl.method=vicreg", "ssl.byol.momentum=0.996"])
    with pytest.raises(ConfigError, match="'ssl.byol.momentum' is set, but ssl.method is 'vicreg'"):
        check_objectives(cfg)
    with pytest.raises(ConfigError, match="'ssl.method' must be one of"):
        load_config(PretrainConfig, None, ["ssl.method=simsiam"])


def test_head_widths_follow_the_model_size():
    small = build_ssl_objective("vicreg", create_model(ModelConfig(overrides={"depth": 1}), [dataset_info("pneumoniamnist")]))
    widths = [m.out_features for m in small.projector.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [1024, 1024, 1024]  # expander 3 x 1024 for medformer_small
    small.embed_dim = 512  # a large encoder (medformer_large: 512) gets 3 x 8192
    assert not small.is_small and small.pick(None, 1024, 8192) == 8192
    cnn = build_ssl_objective("vicreg", create_model(ModelConfig(name="resnet18"), [dataset_info("pneumoniamnist")]))
    assert cnn.is_small  # a 512-d ResNet-18 keeps 3 x 1024, not a 138 M-parameter expander
    cnn.embed_dim = 2048  # ResNet-50 width
    assert not cnn.is_small


# ------------------------------------------------------------------ momentum encoders


@pytest.mark.parametrize("method", ["mocov2", "mocov3", "byol"])
def test_momentum_encoders_change_only_by_ema(method, view_batches):
    objective = tiny_objective(method, queue_size=16)
    pairs = objective.momentum_pairs
    assert pairs and all(not p.requires_grad for _, target in pairs for p in target.parameters())
    optimizer, _ = build_optimizer(objective, TrainConfig(lr=1e-2), total_steps=10, warmup_steps=0)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for _, target in pairs for p in target.parameters()}

    before = [[p.detach().clone() for p in target.parameters()] for _, target in pairs]
    sum(objective(view_batches[0]).values()).backward()
    optimizer.step()
    assert all(p.grad is None for _, target in pairs for p in target.parameters())
    for (_, target), old in zip(pairs, before, strict=True):  # the optimizer step left them alone
        assert all(torch.equal(p, q) for p, q in zip(target.parameters(), old, strict=True))

    objective.on_step_end(1, 10)
    m = objective.current_momentum
    assert 0.9 < m < 1.0
    moved = False
    for (online, target), old in zip(pairs, before, strict=True):
        for p_t, p_o, p_old in zip(target.parameters(), online.parameters(), old, strict=True):
            assert torch.allclose(p_t, m * p_old + (1 - m) * p_o, atol=1e-6)
            moved |= not torch.equal(p_t, p_old)
    assert moved
    if method != "mocov2":  # cosine schedule towards 1
        assert objective.momentum_at(10, 10) == pytest.approx(1.0)


def test_mocov2_queue_holds_the_latest_keys():
    objective = tiny_objective("mocov2", queue_size=12)
    keys = torch.nn.functional.normalize(torch.randn(8, 32), dim=1)
    objective.enqueue(keys)
    assert torch.allclose(objective.queue[:8], keys) and objective.queue_ptr.item() == 8
    objective.enqueue(keys)  # wraps around
    assert torch.allclose(objective.queue[8:12], keys[:4]) and torch.allclose(objective.queue[:4], keys[4:])
    assert "queue" in objective.state_dict()  # saved with checkpoints: exact resume


# ------------------------------------------------------------------ distributed


@pytest.fixture(scope="module")
def distributed_runs(tmp_path_factory):
    """tests/dist_ssl_check.py in float64 as one process and under torchrun (2 gloo processes,
    DDP); the torchrun processes then run a tiny `pretrain` with a time budget (one launch)."""
    root = REPO.parent / "shared" / "data" / "medmnist"
    tmp = tmp_path_factory.mktemp("dist")
    script = str(REPO / "tests" / "dist_ssl_check.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::FutureWarning"}
    env.pop("WORLD_SIZE", None)
    pretrain_args = []
    if all((root / f"{f}.npz").is_file() for f in MIXED):
        pretrain_args = [
            "--pretrain", "--config", str(REPO / "configs" / "pretrain" / "simclr_small.yaml"), *TINY_ARGS,
            f"data.root={root}", f"data.datasets=[{','.join(MIXED)}]", "data.max_train_samples=64",
            "train.batch_size=8", "train.epochs=50", "train.progress=false", "ssl.simclr.proj_hidden_dim=64",
            "ssl.simclr.proj_output_dim=32", "monitor.every=2", "monitor.knn_every=3", "monitor.knn_bank_size=32",
            "monitor.knn_max_queries=32", "ssl.max_minutes=0.01", "train.schedule_by=time",
            "data.balance_datasets=true", "data.batch_by_dataset=true", f"output_dir={tmp / 'ddp_pretrain'}",
        ]
    single = subprocess.Popen([sys.executable, script, str(tmp / "one.pt"), "--dtype", "float64"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    double = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         script, str(tmp / "two.pt"), "--dtype", "float64", *pretrain_args],
        env=env, capture_output=True, text=True, timeout=400, cwd=REPO,
    )
    single_out = single.communicate(timeout=300)[0]
    assert single.returncode == 0, single_out[-3000:]
    assert double.returncode == 0, (double.stdout + double.stderr)[-3000:]
    return tmp, bool(pretrain_args)


def test_two_processes_equal_one_process_for_every_method_and_pretext_task(distributed_runs):
    tmp, _ = distributed_runs
    one = torch.load(tmp / "one.pt", weights_only=False)
    two = torch.load(tmp / "two.pt", weights_only=False)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    methods = set(METHODS) | set(PRETEXT_TASKS) | {"pseudolabel", "vicreg+pseudolabel", "vicreg+mae+pseudolabel"}
    assert set(one["results"]) == set(two["results"]) == methods
    for method in methods:
        a, b = one["results"][method], two["results"][method]
        for step in range(len(a["losses"])):
            for term, value in a["losses"][step].items():
                assert b["losses"][step][term] == pytest.approx(value, rel=1e-9, abs=1e-12), (method, step, term)
            for key in ("encoder_grad", "head_grad"):
                g1, g2 = a[key][step], b[key][step]
                assert g1.abs().max() > 0, (method, key)
                err = ((g2 - g1).abs().max() / g1.abs().max()).item()
                assert err < 1e-9, f"{method} step {step} {key}: max rel diff {err:.2e}"
            for name, value in a["momentum"][step].items():
                assert torch.allclose(b["momentum"][step][name], value, rtol=1e-9, atol=1e-12), (method, name)


def test_two_process_pretrain_run_stops_together_on_the_time_budget(distributed_runs):
    """`pretrain` in 2 gloo processes: DDP, synced BatchNorm, rank-0 kNN, dataset-balanced sampling in
    batches of one dataset each, and a stop step and time-driven schedule decided by rank 0's clock."""
    tmp, ran = distributed_runs
    if not ran:
        pytest.skip("real MedMNIST files not found beside the repo")
    out = tmp / "ddp_pretrain"
    stats = json.loads((out / "train_stats.json").read_text())
    card = json.loads((out / "model_card.json").read_text())
    assert stats["num_processes"] == 2 and stats["stopped_by_time_budget"]
    assert 1 <= card["steps"] < 50 * 8 and card["samples_seen"] == card["steps"] * 16
    assert (out / "encoder.safetensors").is_file()


def test_dist_batchnorm_is_plain_batchnorm_in_one_process():
    torch.manual_seed(0)
    bn, dbn = torch.nn.BatchNorm1d(8), DistBatchNorm(8)
    x = torch.randn(16, 8)
    assert torch.allclose(bn(x), dbn(x)) and torch.allclose(bn.running_var, dbn.running_var)


# ------------------------------------------------------------------ monitoring


def test_collapse_detector_warns_once(caplog):
    detector = CollapseDetector()
    healthy = detector(torch.randn(64, 32), step=1)
    assert healthy["embedding/collapsed"] == 0.0 and healthy["embedding/effective_rank"] > 16
    collapsed = torch.ones(64, 32) + 1e-6 * torch.randn(64, 32)
    with caplog.at_level(logging.WARNING):
        stats = detector(collapsed, step=2)
        detector(collapsed, step=3)
    assert stats["embedding/collapsed"] == 1.0 and stats["embedding/std"] < 0.1 / np.sqrt(32)
    assert sum("collapse" in r.message for r in caplog.records) == 1


# ------------------------------------------------------------------ entry point, export, finetune init


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    """A few pretraining steps through `pretrain.__main__.main` (tiny model, mixed 2D/3D data)."""
    root = REPO.parent / "shared" / "data" / "medmnist"
    if not all((root / f"{f}.npz").is_file() for f in MIXED):
        pytest.skip(f"real MedMNIST files not found in {root}")
    from pretrain.__main__ import main as pretrain_main

    out = tmp_path_factory.mktemp("pretrain") / "byol"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = pretrain_main([
            "--config", str(REPO / "configs" / "pretrain" / "byol_small.yaml"), *TINY_ARGS,
            f"data.root={root}", f"data.datasets=[{','.join(MIXED)}]", "data.max_train_samples=32",
            "train.batch_size=16", "train.epochs=2", "train.max_steps=6", "train.progress=false",
            "train.warmup_epochs=0", "ssl.byol.proj_hidden_dim=64", "ssl.byol.proj_output_dim=32", "ssl.byol.pred_hidden_dim=64",
            "monitor.every=2", "monitor.knn_every=3", "monitor.knn_bank_size=64", "monitor.knn_max_queries=64",
            f"output_dir={out}",
        ])
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert code == 0
    return out


def test_pretrain_writes_encoder_model_card_and_contract_outputs(pretrained_run):
    out = pretrained_run
    for name in ("config.yaml", "encoder.safetensors", "model_card.md", "model_card.json", "metrics.json"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "last" / "trainer_state.json").is_file()
    assert list((out / "logs").rglob("events.out.tfevents*"))
    card = json.loads((out / "model_card.json").read_text())
    assert card["method"] == "byol" and card["steps"] == 6 and card["samples_seen"] == 6 * 16
    assert set(card["datasets"]) == set(MIXED) and card["config"]["ssl"]["method"] == "byol"
    assert set(card["final_loss"]) == {"ssl/neg_cosine"} and np.isfinite(card["final_loss"]["ssl/neg_cosine"])
    assert {"embedding/std", "embedding/effective_rank"} <= set(card["embedding"])
    assert 0 <= card["knn"]["knn/pneumoniamnist/auc"] <= 1
    assert "byol" in (out / "model_card.md").read_text()


def test_finetune_init_from_pretrain_dir_loads_every_backbone_tensor_and_latent(pretrained_run, tmp_path, fresh_accelerate_state):
    from safetensors.torch import load_file

    from finetune.__main__ import main as finetune_main

    encoder = load_file(str(pretrained_run / "encoder.safetensors"))
    assert any("modality_latents.ct" in k for k in encoder) and any("dim_latents.3d" in k for k in encoder)
    out = tmp_path / "ft"
    code = finetune_main([
        "--config", str(REPO / "configs" / "finetune" / "pneumoniamnist_small.yaml"), *TINY_ARGS,
        f"data.root={REPO.parent / 'shared' / 'data' / 'medmnist'}",
        "data.max_train_samples=32", "train.batch_size=16", "train.epochs=1", "train.progress=false",
        "train.eval_test=false", f"init={pretrained_run}", f"output_dir={out}",
    ])
    assert code == 0
    report = json.loads((out / "init_report.json").read_text())
    model = create_model(ModelConfig(overrides=dict(TINY)), [dataset_info("pneumoniamnist")], 28)
    backbone = set(model.backbone_parameter_names())
    assert not backbone & set(report["missing"]), sorted(backbone & set(report["missing"]))[:5]
    latents = [k for k in model.state_dict() if "latent" in k]
    assert set(latents) <= set(report["matched"])
    assert not report["mismatched"]


def test_linear_probe_and_knn_of_random_vs_pretrained_encoder(pretrained_run):
    root = str(REPO.parent / "shared" / "data" / "medmnist")
    results = {
        init: run_probe(init, ["pneumoniamnist"], root=root, max_train=200, splits=("test",), batch_size=128)
        for init in ("scratch", str(pretrained_run))
    }
    assert results[str(pretrained_run)]["_init"]["matched"] > 0
    assert results[str(pretrained_run)]["_init"]["model"] == "medformer_small"
    assert all(res["_linear_C"]["pneumoniamnist"] in C_GRID for res in results.values())  # chosen on val
    for res in results.values():
        for method in ("linear", "knn"):
            metrics = res["pneumoniamnist"][method]["test"]
            assert 0.0 <= metrics["auc"] <= 1.0 and 0.0 <= metrics["acc"] <= 1.0, metrics


def test_probe_metrics_are_medmnist_evaluator_metrics_of_the_probe_scores():
    rng = np.random.default_rng(0)
    for task, n_classes, width in ((BINARY, 2, 1), (MULTI_CLASS, 4, 1), (MULTI_LABEL, 3, 3)):
        x = rng.normal(size=(120, 8))
        if task == MULTI_LABEL:
            y = (x[:, :3] + 0.5 * rng.normal(size=(120, 3)) > 0).astype(int)
        else:
            y = np.digitize(x[:, :1] + 0.5 * rng.normal(size=(120, 1)), np.linspace(-1, 1, n_classes - 1))
        assert y.shape[1] == width
        scores = linear_probe_scores(x[:80], y[:80], x[80:], task, n_classes)
        metrics = linear_probe(x[:80], y[:80], x[80:], y[80:], task, n_classes)
        assert metrics == medmnist_metrics(y[80:], scores, task)
        assert metrics["auc"] == pytest.approx(getAUC(y[80:], scores, task))
        assert metrics["acc"] == pytest.approx(getACC(y[80:], scores, task))
        assert metrics["auc"] > 0.7, (task, metrics)


def test_probe_regularization_is_the_best_on_val():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(340, 100))
    y = (x[:, :5].sum(1, keepdims=True) + 0.5 * rng.normal(size=(340, 1)) > 0).astype(int)
    train, val = slice(0, 60), slice(60, 340)
    aucs = {c: linear_probe(x[train], y[train], x[val], y[val], BINARY, 2, C=c)["auc"] for c in C_GRID}
    chosen = select_C(x[train], y[train], x[val], y[val], BINARY, 2)
    assert aucs[chosen] == max(aucs.values()) > min(aucs.values()), aucs


def test_knn_of_separable_features_is_perfect():
    rng = np.random.default_rng(0)
    centers = np.eye(3, 16) * 10
    y = np.repeat(np.arange(3), 30)
    x = centers[y] + rng.normal(scale=0.1, size=(90, 16))
    train, test = np.arange(90) % 3 != 0, np.arange(90) % 3 == 0
    metrics = knn_eval(x[train], y[train, None], x[test], y[test, None], MULTI_CLASS, k=5)
    assert metrics["auc"] == 1.0 and metrics["acc"] == 1.0
    binary = y[:60, None]
    metrics = knn_eval(x[:60][train[:60]], binary[train[:60]], x[:60][test[:60]], binary[test[:60]], BINARY, k=20)
    assert metrics["auc"] == 1.0 and metrics["acc"] == 1.0


def test_probe_cli_writes_json_and_refuses_a_bad_checkpoint(pretrained_run, tmp_path, capsys):
    from medformer.eval.probe_cli import main as probe_main

    root = str(REPO.parent / "shared" / "data" / "medmnist")
    out = tmp_path / "probe.json"
    assert probe_main(["--init", str(pretrained_run), "--datasets", "breastmnist", "--root", root,
                       "--max-train", "100", "--splits", "test", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results["breastmnist"]) == {"linear", "knn"}
    assert "breastmnist" in capsys.readouterr().out
    assert probe_main(["--init", str(tmp_path / "missing"), "--datasets", "breastmnist", "--root", root]) == 2
    assert "no weights found" in capsys.readouterr().err


def test_paired_bootstrap_separates_a_real_gain_from_noise():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.4).astype(int)[:, None]
    good = y[:, 0] + 0.6 * rng.normal(size=300)  # AUC ~0.9
    noisy = [y[:, 0] + 2.0 * rng.normal(size=300) for _ in range(2)]  # two equally weak scorers
    gain = paired_bootstrap(y, good, noisy[0], BINARY, n_resamples=300)
    assert gain["delta"] == pytest.approx(getAUC(y, good, BINARY) - getAUC(y, noisy[0], BINARY))
    assert gain["ci_low"] > 0.1 and gain["p_value"] < 0.01, gain
    tie = paired_bootstrap(y, noisy[1], noisy[0], BINARY, n_resamples=300)
    assert tie["ci_low"] < 0 < tie["ci_high"] and tie["p_value"] > 0.05, tie
    same = paired_bootstrap(y, good, good, BINARY, n_resamples=50)
    assert same["delta"] == same["ci_low"] == same["ci_high"] == 0 and same["p_value"] == 1.0


def test_pixel_baseline_probe_is_a_probe_on_the_flattened_images(shared_root):
    from medformer.data.medmnist import load_arrays

    res = run_probe("pixels", ["breastmnist"], root=str(shared_root), splits=("test",), C=1.0)
    (x_train, y_train), (x_test, y_test) = (load_arrays("breastmnist", s, root=shared_root) for s in ("train", "test"))
    flat = [x.reshape(len(x), -1).astype(np.float32) / 255 for x in (x_train, x_test)]
    direct = linear_probe(flat[0], y_train, flat[1], y_test, BINARY, 2, C=1.0)
    assert res["_init"]["model"] == "pixels"
    assert res["breastmnist"]["linear"]["test"]["auc"] == pytest.approx(direct["auc"], abs=2e-3)
    assert res["breastmnist"]["linear"]["test"]["auc"] > 0.7  # raw pixels are a strong baseline at 28 px
