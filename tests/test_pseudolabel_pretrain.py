"""Pseudo-label pretraining: labels aligned to samples, balanced sampling, the objective alone and
with SSL, DeepCluster-style re-clustering, resume, and the run end to end on the real pool."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from ssl_heads import tiny_ssl

from medformer.config import DataConfig, ModelConfig
from medformer.data.batch import make_inputs
from medformer.data.domains import dataset_info
from medformer.data.loaders import train_dataset
from medformer.models.factory import create_model
from medformer.objectives.pretrain import PretrainObjective
from medformer.objectives.pseudolabel import LOSS, PseudoLabelTerm
from medformer.objectives.ssl import SSL_METHODS, build_ssl_objective
from medformer.pseudolabels.targets import (
    UNLABELED,
    BalancedSampler,
    PseudoLabeled,
    PseudoLabelError,
    align_labels,
    match_to_previous,
    read_label_table,
)
from pretrain.__main__ import main as pretrain_main

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDMNIST = REPO.parent / "shared" / "data" / "medmnist"
POOL = ["pneumoniamnist", "breastmnist", "retinamnist", "adrenalmnist3d"]
TINY = {"depth": 1, "hidden_dim": 32, "heads": 2, "latent_dim": 16, "num_latent_tokens": 4}
TINY_ARGS = [f"model.overrides.{k}={v}" for k, v in TINY.items()]


def write_labels(folder: Path, rows: list[tuple[str, int, int]], split: str = "train") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["sample,source,source_index,cluster,label"]
    lines += [f"{i},{flag},{idx},{max(label, 0)},{label}" for i, (flag, idx, label) in enumerate(rows)]
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"split": split}}))
    return folder


# ------------------------------------------------------------------ labels and sampling


def test_labels_follow_dataset_and_index_of_each_sample(shared_root, tmp_path):
    data = DataConfig(datasets=["breastmnist", "pneumoniamnist"], root=str(shared_root), max_train_samples=5)
    dataset = train_dataset(data, lambda dim: None, seed=0)
    folder = write_labels(tmp_path / "pl", [("pneumoniamnist", 3, 1), ("breastmnist", 0, 2), ("breastmnist", 4, 0),
                                            ("retinamnist", 0, 1)])
    labels = align_labels(dataset, read_label_table(folder))
    # breastmnist rows 0-4 first, then pneumoniamnist 0-4 (the concat order of data.datasets)
    assert labels.tolist() == [2, -1, -1, -1, 0, -1, -1, -1, 1, -1]
    item = PseudoLabeled(dataset, labels)[8]
    assert (item["dataset"], item["index"], item["pseudolabel"]) == ("pneumoniamnist", 3, 1)


def test_unusable_label_folders_are_refused_with_the_fix(shared_root, tmp_path):
    with pytest.raises(PseudoLabelError, match="run `medformer pseudolabel"):
        read_label_table(tmp_path / "missing")
    other = tmp_path / "other"
    other.mkdir()
    (other / "labels.csv").write_text("image,class\n0,1\n")
    with pytest.raises(PseudoLabelError, match="not a labels file of `medformer pseudolabel`"):
        read_label_table(other)
    with pytest.raises(PseudoLabelError, match="data.split=train"):
        read_label_table(write_labels(tmp_path / "val", [("breastmnist", 0, 0)], split="val"))
    data = DataConfig(datasets=["breastmnist"], root=str(shared_root), max_train_samples=5)
    with pytest.raises(PseudoLabelError, match="no pretraining sample has a pseudo-label"):
        align_labels(train_dataset(data, lambda dim: None, 0), {("retinamnist", 0): 1})


class _Labels:
    def __init__(self, labels: np.ndarray):
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)


def test_balanced_sampler_draws_every_cluster_equally_and_is_seeded_per_epoch():
    labels = np.array([0] * 2700 + [1] * 240 + [2] * 60 + [UNLABELED] * 600)
    sampler = BalancedSampler(_Labels(labels), seed=3, keep_unlabeled=False)
    first = list(sampler)
    counts = np.bincount(labels[first] + 1, minlength=4)
    assert counts[0] == 0  # unlabeled rows are never drawn without an SSL objective
    assert counts[1:].min() > 0.85 * counts[1:].max()  # 45:4:1 in the data, about 1:1:1 drawn
    assert list(sampler) == first  # a pure function of (seed, epoch): resume- and rank-safe
    sampler.set_epoch(1)
    assert list(sampler) != first
    keep = BalancedSampler(_Labels(labels), seed=3, keep_unlabeled=True)
    assert (labels[list(keep)] == UNLABELED).mean() > 0.05  # still fed to the SSL objective


def test_reclustered_labels_are_renumbered_to_the_previous_ids():
    rng = np.random.default_rng(0)
    old = rng.integers(0, 4, 500)
    permuted = np.array([2, 0, 3, 1])[old]
    permuted[:50] = rng.integers(0, 4, 50)  # some samples really move
    matched = match_to_previous(permuted, old, n_outputs=4)
    assert (matched[50:] == old[50:]).all()
    # more outputs than clusters (re-clustering with a smaller k): ids stay inside the head
    assert match_to_previous(np.zeros(10, dtype=np.int64), np.full(10, 5), n_outputs=6).tolist() == [5] * 10


# ------------------------------------------------------------------ objective


def _views(batch: int = 6) -> list:
    g = torch.Generator().manual_seed(0)
    flags = ["pneumoniamnist", "adrenalmnist3d"] * (batch // 2)
    shapes = {"pneumoniamnist": (1, 28, 28), "adrenalmnist3d": (1, 28, 28, 28)}
    return [make_inputs([torch.rand(shapes[f], generator=g) for f in flags], flags) for _ in range(2)]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    infos = [dataset_info(f) for f in ("pneumoniamnist", "adrenalmnist3d")]
    return create_model(ModelConfig(overrides=dict(TINY)), infos, 28)


def test_with_ssl_the_classifier_reuses_the_ssl_pass_through_the_body(monkeypatch):
    model = _model()
    ssl = build_ssl_objective("vicreg", model, tiny_ssl("vicreg", proj_hidden_dim=32, proj_output_dim=16))
    objective = PretrainObjective(model, ssl, PseudoLabelTerm(model, n_classes=3))
    calls = []
    original = model.tokens
    monkeypatch.setattr(model, "tokens", lambda *a, **k: calls.append(1) or original(*a, **k))
    targets = torch.tensor([0, 1, 2, UNLABELED, 1, 0])
    losses = objective({"views": _views(), "pseudolabels": targets})
    assert len(calls) == 2  # one pass per view serves VICReg and the pseudo-label head
    assert set(losses) == {"ssl/invariance", "ssl/variance", "ssl/covariance", LOSS}
    # the unlabeled row is ignored: the loss equals the mean CE of the labeled rows over both views
    with torch.no_grad():
        logits = [model(v.__class__(**{**v.__dict__, "task": ["pseudolabel"] * 6}))["pseudolabel"] for v in _views()]
    expected = np.mean([torch.nn.functional.cross_entropy(lg[targets >= 0], targets[targets >= 0]).item()
                        for lg in logits])
    assert losses[LOSS].item() == pytest.approx(expected, rel=1e-5)
    sum(losses.values()).backward()
    assert model.output_adapt.heads["pseudolabel"].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("method", sorted(SSL_METHODS))
def test_every_ssl_method_sums_with_pseudolabel_classification(method):
    model = _model()
    cfg = tiny_ssl(method, proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=32, queue_size=12)
    objective = PretrainObjective(model, build_ssl_objective(method, model, cfg), PseudoLabelTerm(model, n_classes=3))
    losses = objective({"views": _views(), "pseudolabels": torch.tensor([0, 1, 2, 0, 1, 2])})
    assert LOSS in losses and len(losses) >= 2 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.output_adapt.heads["pseudolabel"].weight.grad.abs().sum() > 0
    assert objective.last_embeddings is not None and objective.last_embeddings.shape == (6, TINY["hidden_dim"])


def test_a_batch_without_labeled_rows_gives_zero_loss_and_no_nan():
    model = _model()
    objective = PretrainObjective(model, pseudolabel=PseudoLabelTerm(model, n_classes=3))
    losses = objective({"views": _views()[:1], "pseudolabels": torch.full((6,), UNLABELED)})
    assert losses[LOSS].item() == 0.0
    losses[LOSS].backward()


# ------------------------------------------------------------------ runs on the real pool


@pytest.fixture(scope="module")
def pool_labels(tmp_path_factory):
    root = SHARED_MEDMNIST
    if not all((root / f"{f}.npz").is_file() for f in POOL):
        pytest.skip(f"shared MedMNIST files missing in {root}")
    from medformer.cli import main

    out = tmp_path_factory.mktemp("pool")
    code = main(["pseudolabel", "--config", str(REPO / "configs/pseudolabel/medmnist_pool_small.yaml"),
                 f"data.root={root}", "data.max_samples_per_dataset=150", "tsne_points=100",
                 f"model_overrides={json.dumps(TINY)}", f"output_dir={out}"])
    assert code == 0
    return root, out


def _pretrain_args(root: Path, labels: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(REPO / "configs/pretrain/pseudolabel_small.yaml"), *TINY_ARGS, f"data.root={root}",
            f"pseudolabel.labels={labels}", "data.max_train_samples=150", "train.batch_size=32",
            "train.progress=false", "monitor.knn_every=0", f"output_dir={out}", *extra]


def test_pseudolabel_pretraining_learns_the_clusters_and_finetune_loads_it(pool_labels, tmp_path):
    root, labels = pool_labels
    k = json.loads((labels / "metrics.json").read_text())["n_labels"]
    out = tmp_path / "pl"
    assert pretrain_main(_pretrain_args(root, labels, out, "train.epochs=8", "train.lr=2e-3",
                                        "monitor.every=10")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "pseudolabel"
    # from chance (ln k) to well below it on balanced batches of the real pool
    assert metrics["final_loss"][LOSS] < 0.6 * np.log(k), metrics
    weights = load_file(str(out / "encoder.safetensors"))
    assert weights["output_adapt.heads.pseudolabel.weight"].shape[0] == k

    from finetune.__main__ import main as finetune_main

    ft = tmp_path / "ft"
    code = finetune_main(["--config", str(REPO / "configs/finetune/pneumoniamnist_small.yaml"), *TINY_ARGS,
                          f"data.root={root}", "data.max_train_samples=64", "train.epochs=1", "train.progress=false",
                          "train.eval_test=false", f"init={out}", f"output_dir={ft}"])
    assert code == 0
    report = json.loads((ft / "init_report.json").read_text())
    assert report["missing"] == [] and any("pseudolabel" in name for name in report["unexpected"])


def test_reclustering_run_resumed_after_sigkill_equals_uninterrupted(pool_labels, tmp_path):
    root, labels = pool_labels
    args = ["train.epochs=3", "pseudolabel.recluster_every=1", "train.checkpoint_every=3", "ssl.method=vicreg",
            "views.n_views=2", "ssl.vicreg.proj_hidden_dim=32", "ssl.vicreg.proj_output_dim=16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    cmd = lambda out, *more: [sys.executable, "-m", "pretrain", *_pretrain_args(root, labels, out, *args, *more)]  # noqa: E731
    subprocess.run(cmd(full), check=True, env=env, capture_output=True, cwd=REPO)
    steps_per_epoch = json.loads((full / "train_stats.json").read_text())["steps"] // 3
    proc = subprocess.Popen(cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    state_file = killed / "checkpoints" / "last" / "trainer_state.json"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill after a mid-epoch checkpoint of epoch 1 (labels re-clustered once)
        if state_file.is_file() and json.loads(state_file.read_text())["epoch"] >= 1 \
                and json.loads(state_file.read_text())["batches_in_epoch"] > 0:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads(state_file.read_text())
    assert state["epoch"] == 1 and 0 < state["batches_in_epoch"] < steps_per_epoch, state
    subprocess.run(cmd(killed, f"resume={killed}"), check=True, env=env, capture_output=True, cwd=REPO)
    for epoch in (1, 2):
        name = f"pseudolabels/epoch_{epoch:04d}.npy"
        assert (np.load(full / name) == np.load(killed / name)).all()
    a, b = load_file(str(full / "encoder.safetensors")), load_file(str(killed / "encoder.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0


def test_bad_pseudolabel_settings_exit_2_with_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    code = pretrain_main(["--config", str(REPO / "configs/pretrain/pseudolabel_small.yaml"),
                          f"pseudolabel.labels={tmp_path / 'nothing'}", f"output_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "medformer pseudolabel" in err[0]
    code = pretrain_main(["--config", str(REPO / "configs/pretrain/pseudolabel_small.yaml"),
                          "pseudolabel.labels=null", f"output_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "ssl.method=none needs pseudolabel.labels" in err[-1]
    code = pretrain_main(["--config", str(REPO / "configs/pretrain/pseudolabel_small.yaml"),
                          f"pseudolabel.labels={tmp_path}", "data.balance_datasets=true", f"output_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "set one to false" in err[0]
    assert not out.exists()
