"""The backbone benchmark's results file: a row's seeds all come from one run of the benchmark."""

import json

from medformer.bench.backbone import summarize, with_previous


def _record(model: str, seed: int, auc: float) -> dict:
    return {"model": model, "dataset": "breastmnist", "seed": seed, "auc": auc, "acc": 0.8, "balanced_acc": 0.7,
            "mcc": 0.5, "img_per_s": 300.0, "peak_mb": 1000.0, "epochs": 10, "train_minutes": 2.0}


def test_a_fresh_run_replaces_the_earlier_files_whole_row(tmp_path):
    earlier = tmp_path / "backbone_benchmark.json"
    old = [_record("medformer_small", s, 0.70) for s in (0, 1, 2)] + [_record("resnet18_28", 0, 0.78)]
    earlier.write_text(json.dumps({"runs": old}))

    merged = with_previous([_record("medformer_small", 0, 0.88)], earlier)

    rows = {r["model"]: r for r in summarize(merged)}
    assert rows["medformer_small"]["seeds"] == [0]  # not the earlier recipe's seeds 1-2 beside the new seed 0
    assert rows["medformer_small"]["auc"] == (0.88, 0.0)
    assert rows["resnet18_28"]["auc"] == (0.78, 0.0)  # a row no run touched is kept


def test_without_an_earlier_file_the_records_are_the_rows(tmp_path):
    records = [_record("medformer_small", s, 0.8 + s / 100) for s in (0, 1)]
    assert with_previous(records, tmp_path / "missing.json") == records
