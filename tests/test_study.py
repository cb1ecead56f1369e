"""`medformer study`: a tiny grid end to end (results, report, figures, failures, resume) and the
statistics it reports."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from finetune.__main__ import main as finetune_main
from medformer.config import load_config
from medformer.eval.stats import bonferroni, kruskal_wallis, min_attainable_p, pairwise_mann_whitney
from medformer.study import StudyConfig, run_study
from medformer.study.cells import Cell, cell_overrides, flatten, format_value

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "study" / "smoke.yaml"




def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_tiny_study_end_to_end_resumes_and_records_failures(shared_root, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert finetune_main(["--config", str(REPO / "configs/finetune/pneumoniamnist_small.yaml"),
                          f"data.root={shared_root}", "data.datasets=[breastmnist]", "data.max_train_samples=64",
                          "model.overrides.depth=1", "train.epochs=1", "train.batch_size=32", "train.progress=false",
                          "train.eval_test=false", f"output_dir={ckpt}"]) == 0
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    out = tmp_path / "study"
    missing = tmp_path / "runs" / "pretrain" / "not_there"
    overrides = [f"data.root={shared_root}", f"output_dir={out}", "data.datasets=[breastmnist,retinamnist]",
                 f"inits={{scratch: scratch, ckpt: {ckpt}, missing: {missing}}}"]
    run_study(load_config(StudyConfig, SMOKE, overrides))

    rows = read_rows(out / "results.csv")
    assert len(rows) == 3 * 2 * 2 * 2  # inits x datasets x fractions x seeds
    done = [r for r in rows if r["status"] == "done"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert {r["init"] for r in done} == {"scratch", "ckpt"} and len(done) == 16
    assert {r["init"] for r in failed} == {"missing"} and len(failed) == 8
    assert all("no weights found at" in r["error"] and str(missing) in r["error"] for r in failed)
    for r in done:
        assert 0.0 <= float(r["test_auc"]) <= 1.0 and 0.0 <= float(r["val_acc"]) <= 1.0
        assert int(r["epochs_to_best"]) >= 1 and float(r["train_seconds"]) > 0
    status = json.loads((out / "cells" / failed[0]["cell_id"] / "status.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith("finetune: error:")
    assert not list((out / "cells").glob("*/checkpoints")) and len(list((out / "cells").glob("*/best.safetensors"))) == 16
    init_report = json.loads((out / "cells" / "ckpt-medformer_small-breastmnist-f1-s0-full" / "init_report.json").read_text())
    assert init_report["matched"]  # the checkpoint init really loaded weights

    report = (out / "report.md").read_text()
    for text in ("## breastmnist", "## retinamnist", "### Test AUC (mean ± sd over seeds)", "Kruskal-Wallis",
                 "Bonferroni", "Published baselines", "ResNet-18 (28)", "## Failed cells", "no weights found"):
        assert text in report, text
    for flag in ("breastmnist", "retinamnist"):
        for kind in ("label_efficiency", "convergence"):
            png = out / "plots" / f"{flag}_{kind}.png"
            assert png.stat().st_size > 1000 and f"plots/{flag}_{kind}.png" in report
    # every finished cell saved its test predictions; re-scored by medmnist's Evaluator they give metrics.json's AUC
    from medmnist import Evaluator

    from medformer.eval.predictions import read_predictions

    for r in done[:4]:
        cell = out / "cells" / r["cell_id"]
        labels, scores = read_predictions(cell, r["dataset"])
        evaluator = Evaluator(r["dataset"], "test", root=str(shared_root))
        assert np.array_equal(evaluator.labels.reshape(len(labels), -1), labels)
        metrics = json.loads((cell / "metrics.json").read_text())[r["dataset"]]["test"]
        assert abs(evaluator.evaluate(scores.squeeze()).AUC - metrics["auc"]) < 1e-9
    for text in ("## Recommendation", "against the runner-up", "## Ranking across datasets and label fractions",
                 "sign test", "Paired comparisons on every test image", "detectable Δ (80% power)", "Power: ",
                 "against ResNet-18 (28)'s published 0.901: **below by", "against the default recipe's 80000",
                 "RadiologyNET-style"):
        assert text in report, text
    assert (out / "plots" / "critical_difference_medformer_small_full.png").stat().st_size > 1000
    assert report.index("## Recommendation") < report.index("## breastmnist")
    panels = sorted((out / "plots" / "explain").glob("*.png"))
    assert len(panels) == 4 and all(f"plots/explain/{p.name}" in report for p in panels)  # (scratch, ckpt) x datasets

    # second invocation (CLI, subprocess isolation): finished cells skipped, one new seed run in a subprocess
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/metrics.json")}
    log_lines = len((out / "study.log").read_text().splitlines())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "medformer.study", "--config", str(SMOKE), *overrides[:2],
           "data.datasets=[breastmnist]", "label_fractions=[1.0]", "seeds=[0,1,2]", "inits={scratch: scratch}",
           "isolation=subprocess", "explain.enabled=false"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    new_log = (out / "study.log").read_text().splitlines()[log_lines:]
    assert sum(" skip scratch-medformer_small-breastmnist-f1-s" in ln for ln in new_log) == 2
    assert any(" done scratch-medformer_small-breastmnist-f1-s2-full" in ln for ln in new_log)
    assert (out / "cells" / "scratch-medformer_small-breastmnist-f1-s2-full" / "log.txt").is_file()
    assert [r["seed"] for r in read_rows(out / "results.csv")] == ["0", "1", "2"]


def test_cell_overrides_round_trip_through_the_finetune_parser(tmp_path):
    from medformer.config import FinetuneConfig

    cfg = load_config(StudyConfig, SMOKE, [f"output_dir={tmp_path}", "finetune={train: {lr: 1e-3}, data.max_train_samples: 8}"])
    cell = Cell("ssl", "runs/pretrain/x", "medformer_small", "breastmnist", 0.1, 3, "linear_probe")
    fcfg = load_config(FinetuneConfig, None, cell_overrides(cfg, cell, tmp_path / "c", resume=False))
    assert fcfg.train.lr == 1e-3 and fcfg.data.max_train_samples == 8 and fcfg.data.label_fraction == 0.1
    assert fcfg.finetune_mode == "linear_probe" and fcfg.seed == 3 and fcfg.data.datasets == ["breastmnist"]
    assert Path(fcfg.init).is_absolute() and fcfg.init.endswith("runs/pretrain/x")
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": {}}) == {"a.b": 1, "a.c.d": 2, "e": {}}
    assert format_value("yes") == '"yes"' and format_value(0.1) == "0.1" and format_value(1e-5) == "1.0e-05" and format_value([1, 2]) == "[1, 2]" and format_value(None) == "null"


def test_kruskal_wallis_and_mann_whitney_with_bonferroni():
    groups = {"a": [0.50, 0.51, 0.52, 0.53, 0.54, 0.55], "b": [0.70, 0.71, 0.72, 0.73, 0.74, 0.75],
              "c": [0.90, 0.91, 0.92, 0.93, 0.94, 0.95]}
    kw = kruskal_wallis(groups)
    assert kw.pvalue < 0.001 and kw.sizes == {"a": 6, "b": 6, "c": 6}
    same = kruskal_wallis({"a": [0.1, 0.5, 0.9, 0.3], "b": [0.2, 0.6, 0.8, 0.4]})
    assert same.pvalue > 0.5
    assert kruskal_wallis({"a": [0.5, 0.5], "b": [0.5, 0.5]}).pvalue == 1.0  # all tied
    assert kruskal_wallis({"a": [0.5, 0.6]}).note  # one group: no test

    pairs = pairwise_mann_whitney(groups)
    assert [(p.a, p.b) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "c")]
    for p in pairs:
        assert p.p_bonferroni == pytest.approx(min(1.0, 3 * p.pvalue))
        assert p.pvalue == pytest.approx(min_attainable_p(6, 6))  # completely separated groups
    assert bonferroni([0.01, 0.2, 0.5, float("nan")]) == pytest.approx([0.04, 0.8, 1.0, float("nan")], nan_ok=True)
    two_seeds = pairwise_mann_whitney({"a": [0.1, 0.2], "b": [0.8, 0.9]})
    assert two_seeds[0].p_bonferroni == pytest.approx(1 / 3)  # the floor with two seeds per group


def test_bad_study_config_one_line_error(tmp_path, capsys):
    from medformer.study.__main__ import main

    assert main(["--config", str(SMOKE), f"output_dir={tmp_path / 's'}", "modes=[probe]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "modes" in err[0] and not (tmp_path / "s").exists()


@pytest.mark.parametrize("name,flag,size", [("medformer_small", "adrenalmnist3d", 28), ("medformer_small", "retinamnist", 28),
                                            ("medformer_small", "breastmnist", 64),  # 8-pixel tokens at 64 px
                                            ("resnet18", "pneumoniamnist", 28), ("resnet18", "adrenalmnist3d", 28)])
def test_explain_maps_cover_the_image(name, flag, size):
    from medformer.config import ModelConfig
    from medformer.data.domains import dataset_info
    from medformer.eval.explain import explain_maps, group_cases
    from medformer.models.factory import create_model

    info = dataset_info(flag)
    model = create_model(ModelConfig(name=name, overrides={"depth": 1} if name.startswith("medformer") else {}), [info], size).eval()
    shape = (info.n_channels, size, size) if info.dim == "2d" else (1, size, size, size)
    maps, method = explain_maps(model, torch.randn(2, *shape), flag)
    assert maps.shape == (2, *shape[1:]) and maps.min() >= 0 and maps.max() <= 1 and method
    groups = group_cases(np.array([0.9, 0.8, 0.2, 0.1]), np.array([[1], [0], [1], [0]]), "binary-class", 1)
    assert groups == {"TP": [0], "FP": [1], "FN": [2], "TN": [3]}


def test_study_runs_its_pretraining_stages_then_cells_in_worker_processes(shared_root, tmp_path):
    """pseudolabels -> pretrain (pseudo-label and VICReg) -> fine-tune cells from them, 2 workers."""
    tiny = {"depth": 1, "hidden_dim": 32, "heads": 2, "latent_dim": 16, "num_latent_tokens": 4}
    small_run = {"model.overrides": tiny, "data.datasets": ["breastmnist", "retinamnist"],
                 "data.max_train_samples": 64, "train.batch_size": 16, "train.epochs": 2, "monitor.knn_every": 0}
    stages = {"pool": {"config": "configs/pseudolabel/medmnist_pool_small.yaml", "overrides": {
        "data.datasets": ["breastmnist", "retinamnist"], "data.max_samples_per_dataset": 64,
        "model_overrides": tiny, "tsne_points": 50}}}
    pretrain = {
        "pl": {"config": "configs/pretrain/pseudolabel_small.yaml",
               "overrides": {"pseudolabel.labels": "pseudolabels:pool", **small_run}},
        "vicreg": {"config": "configs/pretrain/vicreg_small.yaml",
                   "overrides": {"ssl.vicreg.proj_hidden_dim": 32, "ssl.vicreg.proj_output_dim": 32, **small_run}},
    }
    finetune = {"model.overrides": tiny, "data.max_train_samples": 64, "train.epochs": 1, "train.batch_size": 16}
    out = tmp_path / "study"
    overrides = [f"data.root={shared_root}", f"output_dir={out}", f"pseudolabels={json.dumps(stages)}", f"pretrain={json.dumps(pretrain)}",
                 "inits={scratch: scratch, pl: 'pretrain:pl', vicreg: 'pretrain:vicreg'}", "label_fractions=[1.0]",
                 "seeds=[0]", "isolation=workers", "jobs=2", "explain.enabled=false",
                 f"finetune={json.dumps(finetune)}"]
    rows = run_study(load_config(StudyConfig, SMOKE, overrides))
    assert [r["status"] for r in rows] == ["done"] * 3, [r.get("error") for r in rows]
    for init in ("pl", "vicreg"):
        report = json.loads((out / "cells" / f"{init}-medformer_small-breastmnist-f1-s0-full" / "init_report.json").read_text())
        assert report["matched"] and not report["missing"]
        assert "INFO" in (out / "cells" / f"{init}-medformer_small-breastmnist-f1-s0-full" / "log.txt").read_text()
    assert json.loads((out / "pretrain" / "pl" / "metrics.json").read_text())["method"] == "pseudolabel"
    text = (out / "report.md").read_text()
    assert "pseudo-labels `pool`" in text and "pretraining `pl`" in text and "harmonic mean" in text

    log_lines = len((out / "study.log").read_text().splitlines())
    run_study(load_config(StudyConfig, SMOKE, overrides))  # everything done: all skipped
    new_log = (out / "study.log").read_text().splitlines()[log_lines:]
    assert sum(" skip " in ln for ln in new_log) == 1 + 2 + 3, new_log


def test_per_seed_pretraining_gives_each_seed_its_own_encoder(shared_root, tmp_path):
    """`pretrain_per_seed`: one pretraining run per study seed (with that seed), the cells of seed s
    start from run s, and the report's paired table carries Welch's test over the seeds."""
    from safetensors.torch import load_file

    tiny = {"depth": 1, "hidden_dim": 32, "heads": 2, "latent_dim": 16, "num_latent_tokens": 4}
    pretrain = {"vicreg": {"config": "configs/pretrain/vicreg_small.yaml", "overrides": {
        "model.overrides": tiny, "data.datasets": ["breastmnist"], "data.max_train_samples": 32, "train.batch_size": 16,
        "train.epochs": 1, "monitor.knn_every": 0, "ssl.vicreg.proj_hidden_dim": 32, "ssl.vicreg.proj_output_dim": 32}}}
    out = tmp_path / "study"
    overrides = [f"data.root={shared_root}", f"output_dir={out}", f"pretrain={json.dumps(pretrain)}",
                 "inits={scratch: scratch, vicreg: 'pretrain:vicreg'}", "pretrain_per_seed=true", "seeds=[0, 1]",
                 "label_fractions=[1.0]", "explain.enabled=false", "jobs=2", "isolation=workers",
                 f"finetune={json.dumps({'model.overrides': tiny, 'data.max_train_samples': 64, 'train.epochs': 1})}"]
    rows = run_study(load_config(StudyConfig, SMOKE, overrides))
    assert [r["status"] for r in rows] == ["done"] * 4, [r.get("error") for r in rows]
    encoders = [load_file(out / "pretrain" / "vicreg" / f"seed{s}" / "encoder.safetensors") for s in (0, 1)]
    assert any(not torch.equal(encoders[0][k], encoders[1][k]) for k in encoders[0])
    for seed in (0, 1):
        config = (out / "cells" / f"vicreg-medformer_small-breastmnist-f1-s{seed}-full" / "config.yaml").read_text()
        assert str(out / "pretrain" / "vicreg" / f"seed{seed}") in config
    text = (out / "report.md").read_text()
    assert "pretraining `vicreg` seed 1" in text and "Welch p (seeds)" in text


def test_a_mistyped_stage_stops_the_study_before_anything_runs(tmp_path, capsys):
    from medformer.study.__main__ import main

    out = tmp_path / "s"
    bad = "{vicreg: {config: configs/pretrain/vicreg_small.yaml, overrides: {ssl.methd: vicreg}}}"
    assert main(["--config", str(SMOKE), f"output_dir={out}", f"pretrain={bad}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pretrain.vicreg" in err[0] and "ssl.methd" in err[0] and not out.exists()
    assert main(["--config", str(SMOKE), f"output_dir={out}", "inits={x: 'pretrain:nope'}"]) == 2
    assert "names no stage" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("mode,method", [("knn", "knn"), ("logreg", "linear")])
def test_frozen_cells_score_the_encoder_with_the_cells_labeled_images(shared_root, tmp_path, mode, method):
    """knn and logreg cells equal eval.probe's classifiers on the same images, and save their per-image
    predictions, so that the study's paired statistics compare them."""
    from medformer.config import ModelConfig
    from medformer.eval.metrics import medmnist_metrics
    from medformer.eval.predictions import read_predictions
    from medformer.eval.probe import run_probe

    out = tmp_path / "study"
    overrides = [f"data.root={shared_root}", f"output_dir={out}", f"modes=[{mode}]", "label_fractions=[0.5]",
                 "seeds=[3]", "explain.enabled=false"]
    rows = run_study(load_config(StudyConfig, SMOKE, overrides))
    assert [(r["mode"], r["status"]) for r in rows] == [(mode, "done")]
    # the smoke finetune overrides apply: depth-1 model, 64 train images after the 50% fraction
    direct = run_probe("scratch", ["breastmnist"], root=str(shared_root), model_cfg=ModelConfig(overrides={"depth": 1}),
                       methods=(method,), max_train=64, label_fraction=0.5, seed=3)["breastmnist"][method]
    assert rows[0]["test_auc"] == pytest.approx(direct["test"]["auc"]) and rows[0]["val_acc"] == pytest.approx(direct["val"]["acc"])
    labels, scores = read_predictions(out / "cells" / rows[0]["cell_id"], "breastmnist", "test")
    assert medmnist_metrics(labels, scores, "binary-class")["auc"] == pytest.approx(direct["test"]["auc"])
    assert mode in (out / "report.md").read_text()


@pytest.mark.parametrize("isolation", ["workers", "subprocess"])
def test_concurrent_frozen_cells_draw_each_seeds_own_random_encoder(shared_root, tmp_path, isolation):
    """Two frozen cells at a time: each random-init encoder is its seed's draw, as when run alone (the
    study's threads once shared torch's global RNG, so a cell's encoder depended on its neighbour's timing)."""
    from medformer.config import ModelConfig
    from medformer.eval.probe import run_probe

    out = tmp_path / "study"
    overrides = [f"data.root={shared_root}", f"output_dir={out}", "modes=[logreg]", "label_fractions=[1.0]",
                 "seeds=[0,1,2,3]", "explain.enabled=false", f"isolation={isolation}", "jobs=2"]
    rows = run_study(load_config(StudyConfig, SMOKE, overrides))
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows)
    for r in rows:
        alone = run_probe("scratch", [r["dataset"]], root=str(shared_root), model_cfg=ModelConfig(overrides={"depth": 1}),
                          methods=("linear",), max_train=64, seed=int(r["seed"]))[r["dataset"]]["linear"]
        assert float(r["test_auc"]) == pytest.approx(alone["test"]["auc"]), r["cell_id"]


@pytest.mark.parametrize("name,cells", [("full.yaml", 3780), ("full_imagenet_cnn.yaml", 1080)])
def test_full_study_configs_load_and_enumerate_their_grid(name, cells):
    """The GPU-sized studies are valid configs (every key known, stages well-formed) with the grid the docs cost."""
    from medformer.study.cells import enumerate_cells
    from medformer.study.validate import validate

    cfg = load_config(StudyConfig, REPO / "configs" / "study" / name)
    validate(cfg)
    assert len(cfg.data.datasets) == 18 and cfg.seeds == [0, 1, 2, 3, 4]
    assert len(enumerate_cells(cfg)) == cells


def test_ssl_benchmark_study_config_covers_every_pretext_task_and_a_combination():
    """configs/study/ssl_benchmark.yaml: each method a time-budgeted pretraining stage, probed and fine-tuned."""
    from medformer.study.cells import enumerate_cells
    from medformer.study.validate import validate

    cfg = load_config(StudyConfig, REPO / "configs" / "study" / "ssl_benchmark.yaml")
    validate(cfg)
    assert {"mae", "rotation", "jigsaw", "inpainting", "vicreg_mae", "simclr", "vicreg"} == set(cfg.pretrain)
    assert all(stage.overrides["train.max_minutes"] == 3 for stage in cfg.pretrain.values())
    assert len(enumerate_cells(cfg)) == 8 * 4 * 2 * 3


def test_ssl_seeds_study_config_pretrains_the_thesis_encoder_once_per_seed():
    """configs/study/ssl_seeds.yaml (the committed SSL table's protocol): each method pretrains the
    thesis encoder per seed for 15 minutes, and every seed's encoder is probed against that seed's random init."""
    from medformer.study.cells import enumerate_cells
    from medformer.study.stages import resolve_reference
    from medformer.study.validate import validate

    cfg = load_config(StudyConfig, REPO / "configs" / "study" / "ssl_seeds.yaml")
    validate(cfg)
    assert cfg.pretrain_per_seed and cfg.models == ["medformer_small_thesis"]
    assert all(s.overrides["model.name"] == "medformer_small_thesis" and s.overrides["train.max_minutes"] == 15
               for s in cfg.pretrain.values())
    cells = enumerate_cells(cfg)
    assert len(cells) == 3 * 4 * 2 * 2 and {c.mode for c in cells} == {"logreg", "knn"}
    assert resolve_reference(cfg, "pretrain:simclr", 1).endswith("pretrain/simclr/seed1")


def test_pseudolabel_benchmark_study_config_clusters_every_train_image_for_the_thesis_encoder():
    """configs/study/pseudolabel_benchmark.yaml: the pool is every train image, the two pseudo-label
    stages read it, and every stage pretrains the thesis encoder for the same 3 minutes."""
    from medformer.study.cells import enumerate_cells
    from medformer.study.validate import validate

    cfg = load_config(StudyConfig, REPO / "configs" / "study" / "pseudolabel_benchmark.yaml")
    validate(cfg)
    assert cfg.pseudolabels["pool"].overrides["data.max_samples_per_dataset"] is None
    assert {n for n, s in cfg.pretrain.items() if s.overrides.get("pseudolabel.labels") == "pseudolabels:pool"} == {
        "pseudolabel", "vicreg_pseudolabel"}
    assert all(s.overrides["model.name"] == "medformer_small_thesis" and s.overrides["train.max_minutes"] == 3
               for s in cfg.pretrain.values())
    assert len(enumerate_cells(cfg)) == 4 * 4 * 2
