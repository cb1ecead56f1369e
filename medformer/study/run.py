"""run_study: run (or skip) every cell, then write results.csv, figures, statistics and report.md."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from ..config.study import StudyConfig
from ..data.domains import dataset_info
from .baselines import read_baselines
from .cells import enumerate_cells
from .evidence import paired_comparisons, ranking, recommendations
from .paths import resolve_baselines
from .plots import convergence_plot, critical_difference_plot, label_efficiency_plot, series_key
from .report import Evidence, primary_metrics, write_report
from .results import collect_rows, val_history, write_csv
from .runner import run_cells, study_log
from .stages import resolve_reference, run_stages, stage_lines
from .validate import validate

logger = logging.getLogger(__name__)


def study_figures(cfg: StudyConfig, rows: list[dict]) -> dict[str, dict[str, Path | None]]:
    """Label-efficiency and convergence PNGs per dataset, plus explainability panels."""
    out = Path(cfg.output_dir)
    cells_root = out / "cells"
    figures: dict[str, dict[str, Path | None]] = {}
    for flag in cfg.data.datasets:
        drows = [r for r in rows if r["dataset"] == flag and r["status"] == "done"]
        metric = primary_metrics(flag)[0][0].removeprefix("test_")
        with_mode = len({r["mode"] for r in drows}) > 1
        with_model = len({r["model"] for r in drows}) > 1
        histories: dict[tuple[str, float], list] = defaultdict(list)
        for r in drows:
            histories[(series_key(r, with_mode, with_model), r["fraction"])].append(
                val_history(cells_root / r["cell_id"], flag, metric))
        figures[flag] = {
            "label efficiency": label_efficiency_plot(rows, flag, out / "plots" / f"{flag}_label_efficiency.png",
                                                      f"test_{metric}"),
            "convergence": convergence_plot(histories, flag, out / "plots" / f"{flag}_convergence.png", metric),
        }
        if cfg.explain.enabled and not dataset_info(flag).is_dense:  # Grad-CAM explains class scores
            figures[flag].update(explain_figures(cfg, drows, flag))
    return figures


def explain_figures(cfg: StudyConfig, drows: list[dict], flag: str) -> dict[str, Path | None]:
    """One panel per (init, model): the cell with the most labels, first seed and mode."""
    from ..eval.explain import explain_cell

    out = Path(cfg.output_dir)
    chosen: dict[tuple[str, str], dict] = {}
    for r in sorted(drows, key=lambda r: (-r["fraction"], cfg.seeds.index(r["seed"]), cfg.modes.index(r["mode"]))):
        chosen.setdefault((r["init"], r["model"]), r)
    panels: dict[str, Path | None] = {}
    for (init, model), r in sorted(chosen.items()):
        png = out / "plots" / "explain" / f"{r['cell_id']}.png"
        title = f"{flag}: {init} / {model} ({r['mode']}, fraction {r['fraction']:g}, seed {r['seed']})"
        if not png.is_file():
            try:
                explain_cell(out / "cells" / r["cell_id"], flag, cfg.explain.per_group, title, png)
            except Exception as e:  # noqa: BLE001 - a missing panel must not lose the report
                logger.warning("no explainability panel for %s: %s", r["cell_id"], e)
                continue
        panels[f"explain {init} / {model}"] = png
    return panels


def study_evidence(rows: list[dict], out: Path) -> Evidence:
    """Paired comparisons from the cells' test predictions, the ranking, the recommendation."""
    comparisons = paired_comparisons(rows, out / "cells")
    rankings = ranking(rows)
    figures = {key: critical_difference_plot(rk, out / "plots" / f"critical_difference_{key[0]}_{key[1]}.png",
                                             f"{key[0]} / {key[1]}: mean rank over {rk.blocks} blocks")
               for key, rk in rankings.items()}
    return Evidence(recommendations(rows, comparisons), comparisons, rankings, figures)


def summary_lines(cfg: StudyConfig) -> list[str]:
    inits = ", ".join(f"`{k}` = {v}" for k, v in cfg.inits.items())
    return [*stage_lines(cfg),
        f"- datasets: {', '.join(cfg.data.datasets)} at {cfg.data.size} px",
        f"- inits: {inits}",
        f"- models: {', '.join(cfg.models)}; modes: {', '.join(cfg.modes)}",
        f"- label fractions: {', '.join(f'{f:g}' for f in cfg.label_fractions)}; seeds: {', '.join(map(str, cfg.seeds))}"
        + (" (each pretrained its own encoder)" if cfg.pretrain_per_seed and cfg.pretrain else ""),
        f"- base finetune overrides: {cfg.finetune or 'none'}" + (f" on {cfg.base_config}" if cfg.base_config else ""),
        "- per-cell outputs: `cells/<cell-id>/` (config.yaml, metrics.json, train_stats.json, status.json); all rows in `results.csv`",
    ]


def run_study(cfg: StudyConfig) -> list[dict]:
    """Run the grid (resumable), write results.csv and report.md; returns the rows."""
    validate(cfg)
    out = Path(cfg.output_dir)
    log = study_log(out)
    run_stages(cfg, log)
    cells = enumerate_cells(cfg, lambda init, seed: resolve_reference(cfg, init, seed))
    run_cells(cfg, cells, log)
    rows = collect_rows(cells, out / "cells")
    write_csv(rows, out / "results.csv")
    figures = study_figures(cfg, rows)
    published = read_baselines(resolve_baselines(cfg.published_baselines))
    write_report(out / "report.md", f"Transfer study: {out.name}", summary_lines(cfg), rows,
                 cfg.data.datasets, published, figures, size=cfg.data.size, evidence=study_evidence(rows, out))
    logger.info("study: %d cells, report in %s", len(rows), out / "report.md")
    return rows

