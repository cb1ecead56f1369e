"""scripts/ssl_seeds.py: bench_ssl reports of several pretraining seeds summarized against random init."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medformer.bench import ssl_seeds

DATASETS = ssl_seeds.DATASETS


def probe(auc: float) -> dict:
    return {f: {k: {"auc": auc, "acc": 0.5} for k in ("linear", "knn")} for f in DATASETS}


def report(seed: int | None, probes: dict[str, float], lr: float = 1e-3, ft: list[float] | None = None,
           by_dataset: bool = False, steps: int = 800) -> dict:
    r = {"minutes_per_method": 15.0, "probe_max_train": None, "finetune_steps": 150, "probe_C_grid": "1, 10",
         "probe": {init: probe(a) for init, a in probes.items()},
         "pretrain": {init: {"lr": lr, "batch_by_dataset": by_dataset, "steps": steps} for init in probes if init != "random"},
         "finetune": {}}
    if ft:
        r["finetune"] = {m: {"pneumoniamnist": {"0.1": {"runs": [{"auc": a} for a in ft]}}} for m in probes if m != "random"}
    if seed is not None:
        r["seed"] = seed
    return r


def write(tmp_path: Path, name: str, r: dict) -> str:
    (tmp_path / name).write_text(json.dumps(r))
    return str(tmp_path / name)


def test_means_over_seeds_against_random_init(tmp_path: Path) -> None:
    files = [
        write(tmp_path, "s0.json", report(None, {"random": 0.70, "byol": 0.60})),  # before --seed: seed 0
        write(tmp_path, "s0_lr.json", report(0, {"byol": 0.80}, ft=[0.90, 0.92])),  # replaces byol seed 0
        write(tmp_path, "s1.json", report(1, {"random": 0.72, "byol": 0.84}, ft=[0.94])),
        write(tmp_path, "s2.json", {**report(2, {"random": 0.74, "byol": 0.82}), "finetune_steps": 0}),  # probes only
    ]
    assert ssl_seeds.main([*files, "--out", str(tmp_path), "--name", "out"]) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    s = out["summary"]
    assert s["seeds"] == {"random": [0, 1, 2], "byol": [0, 1, 2]}
    assert s["auc"]["byol"]["breastmnist"]["linear"]["mean"] == pytest.approx(0.82)
    assert s["versus_random"]["byol"]["breastmnist"]["linear"]["diff"] == pytest.approx(0.10)
    assert s["versus_random"]["byol"]["breastmnist"]["linear"]["p_welch"] < 0.01
    assert s["finetune_10pct"]["byol"]["values"] == [0.90, 0.92, 0.94]
    assert out["replaced"] == ["byol seed 0: s0_lr.json replaces s0.json"]
    assert "- byol (seeds [0, 1, 2]): yes" in (tmp_path / "out.md").read_text()


def test_mixed_learning_rates_or_settings_are_refused(tmp_path: Path) -> None:
    a = write(tmp_path, "a.json", report(0, {"random": 0.7, "byol": 0.8}, lr=5e-4))
    b = write(tmp_path, "b.json", report(1, {"random": 0.7, "byol": 0.8}, lr=1e-3))
    with pytest.raises(SystemExit, match=r"byol pretrained with lr \{0: 0.0005, 1: 0.001\}"):
        ssl_seeds.main([a, b, "--out", str(tmp_path)])
    f = write(tmp_path, "f.json", {**report(1, {"random": 0.7, "byol": 0.8}, lr=5e-4),
                                   "pretrain_overrides": ["ssl.predictor_lr_scale=10"]})  # before it was recorded
    with pytest.raises(SystemExit, match="pass one predictor_lr_scale per method"):
        ssl_seeds.main([a, f, "--out", str(tmp_path)])
    m = write(tmp_path, "m.json", {**report(1, {"random": 0.7, "byol": 0.8}, lr=5e-4),
                                   "pretrain_overrides": ["ssl.momentum=0.996"]})  # a (0.99) before it was recorded
    with pytest.raises(SystemExit, match=r"byol pretrained with momentum \{0: 0.99, 1: 0.996\}"):
        ssl_seeds.main([a, m, "--out", str(tmp_path)])
    r = report(1, {"random": 0.7, "byol": 0.8}, lr=5e-4)
    r["pretrain"]["byol"]["momentum"] = 0.99  # recorded: the same recipe as a's
    assert ssl_seeds.main([a, write(tmp_path, "r.json", r), "--out", str(tmp_path)]) == 0
    c = write(tmp_path, "c.json", {**report(1, {"byol": 0.8}), "minutes_per_method": 3.0})
    with pytest.raises(SystemExit, match="minutes_per_method is 3.0"):
        ssl_seeds.main([a, c, "--out", str(tmp_path)])
    e = write(tmp_path, "e.json", {**report(1, {"byol": 0.8}), "finetune_steps": 300})
    with pytest.raises(SystemExit, match=r"fine-tuned for \[150, 300\] steps"):
        ssl_seeds.main([a, e, "--out", str(tmp_path)])
    d = write(tmp_path, "d.json", report(1, {"byol": 0.8}))
    with pytest.raises(SystemExit, match="random-init baseline"):
        ssl_seeds.main([d, "--out", str(tmp_path)])


def test_batches_by_dataset_get_their_own_row_which_can_be_shown_alone(tmp_path: Path) -> None:
    files = [write(tmp_path, f"s{seed}.json", report(seed, {"random": 0.70, "byol": 0.72 + seed / 100})) for seed in (0, 1)]
    files += [write(tmp_path, f"bd{seed}.json", report(seed, {"byol": 0.80 + seed / 100}, ft=[0.9], by_dataset=True))
              for seed in (0, 1)]
    assert ssl_seeds.main([*files, "--out", str(tmp_path), "--name", "out"]) == 0
    s = json.loads((tmp_path / "out.json").read_text())["summary"]
    assert s["seeds"] == {"random": [0, 1], "byol": [0, 1], "byol/by-dataset": [0, 1]}
    assert s["auc"]["byol"]["pneumoniamnist"]["linear"]["mean"] == pytest.approx(0.725)
    assert s["auc"]["byol/by-dataset"]["pneumoniamnist"]["linear"]["mean"] == pytest.approx(0.805)
    assert s["finetune_10pct"]["byol/by-dataset"]["values"] == [0.9, 0.9]
    assert ssl_seeds.main([*files, "--out", str(tmp_path), "--name", "only", "--rows", "byol/by-dataset"]) == 0
    assert json.loads((tmp_path / "only.json").read_text())["summary"]["seeds"] == {"random": [0, 1], "byol/by-dataset": [0, 1]}


def test_steps_per_seed_are_listed_and_uneven_ones_named(tmp_path: Path) -> None:
    files = [write(tmp_path, "s0.json", report(0, {"random": 0.7, "byol": 0.8, "simclr": 0.8}, steps=800)),
             write(tmp_path, "s1.json", report(1, {"random": 0.7, "byol": 0.8}, steps=600)),
             write(tmp_path, "s1b.json", report(1, {"simclr": 0.8}, steps=780))]
    assert ssl_seeds.main([*files, "--out", str(tmp_path), "--name", "out"]) == 0
    assert json.loads((tmp_path / "out.json").read_text())["summary"]["steps"] == {
        "byol": {"0": 800, "1": 600}, "simclr": {"0": 800, "1": 780}}
    md = (tmp_path / "out.md").read_text()
    assert "| byol | 0: 800, 1: 600 |" in md
    assert "more than 20% between seeds of: byol (" in md
