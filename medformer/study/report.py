"""report.md of a study: tables (mean ± sd over seeds), figures, statistics, baselines, failures."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .stats import kruskal_wallis, min_attainable_p, pairwise_mann_whitney

ALPHA = 0.05


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "–"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _values(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if not math.isnan(float(r[key]))]


def mean_sd(values: list[float], digits: int = 3) -> str:
    if not values:
        return "–"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.{digits}f} ± {sd:.{digits}f} (n={len(values)})"


def _row_keys(rows: list[dict]) -> tuple[list[str], Callable[[dict], tuple]]:
    """Row-label columns (init, mode, and model when the study varies it) and a key function."""
    with_model = len({r["model"] for r in rows}) > 1
    cols = ["init", "mode"] + (["model"] if with_model else [])
    return cols, lambda r: tuple(r[c] for c in cols)


def metric_table(rows: list[dict], metric: str, fractions: list[float]) -> list[str]:
    """Rows init x mode (x model), columns label fractions: mean ± sd over seeds."""
    cols, key = _row_keys(rows)
    groups: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["status"] == "done":
            groups[key(r)][r["fraction"]].append(float(r[metric]))
    body = [[*k, *(mean_sd([v for v in groups[k][f] if not math.isnan(v)]) for f in fractions)] for k in sorted(groups)]
    return _table([*cols, *(f"{f:g}" for f in fractions)], body)


def cost_table(rows: list[dict], fractions: list[float]) -> list[str]:
    """Mean epochs to the best val epoch and mean training seconds per fraction."""
    cols, key = _row_keys(rows)
    groups: dict[tuple, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["status"] == "done":
            groups[key(r)][r["fraction"]].append(r)
    body = []
    for k in sorted(groups):
        cells = []
        for f in fractions:
            rs = groups[k][f]
            ep, sec = _values(rs, "epochs_to_best"), _values(rs, "train_seconds")
            cells.append(f"{np.mean(ep):.1f} ep / {np.mean(sec):.0f} s" if ep and sec else "–")
        body.append([*k, *cells])
    return _table([*cols, *(f"{f:g}" for f in fractions)], body)


def baseline_table(rows: list[dict], published: list[dict], size: int | str = "") -> list[str]:
    """Ours at the largest label fraction beside the published test results of the dataset."""
    done = [r for r in rows if r["status"] == "done"]
    lines: list[list[str]] = []
    if done:
        top = max(r["fraction"] for r in done)
        cols, key = _row_keys(done)
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for r in done:
            if r["fraction"] == top:
                groups[key(r)].append(r)
        for k, rs in sorted(groups.items()):
            lines.append([f"ours: {' / '.join(map(str, k))} (label fraction {top:g})", str(size),
                          mean_sd(_values(rs, "test_auc")), mean_sd(_values(rs, "test_acc")), "this study"])
    for b in published:
        lines.append([b["method"], str(b.get("size", "")), _fmt(b["auc"]), _fmt(b["acc"]),
                      b.get("source", "") + (f" ({b['note']})" if b.get("note") else "")])
    return _table(["method", "size", "test AUC", "test ACC", "source"], lines)


def stats_section(rows: list[dict], metric: str = "test_auc") -> list[str]:
    """Kruskal-Wallis across inits per (model, mode, fraction); pairwise Mann-Whitney U, Bonferroni."""
    done = [r for r in rows if r["status"] == "done"]
    blocks: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in done:
        blocks[(r["model"], r["mode"], r["fraction"])][r["init"]].append(float(r[metric]))
    out: list[str] = []
    kw_rows, pair_rows = [], []
    for (model, mode, frac), groups in sorted(blocks.items()):
        if len(groups) < 2:
            continue
        kw = kruskal_wallis(groups)
        sizes = ", ".join(f"{k}={n}" for k, n in kw.sizes.items())
        sig = "yes" if not math.isnan(kw.pvalue) and kw.pvalue < ALPHA else "no"
        kw_rows.append([model, mode, f"{frac:g}", _fmt(kw.statistic), _fmt_p(kw.pvalue), sig, sizes + (f"; {kw.note}" if kw.note else "")])
        pairs = pairwise_mann_whitney(groups)
        for p in pairs:
            floor = min_attainable_p(len(groups[p.a]), len(groups[p.b]))
            pair_rows.append([model, mode, f"{frac:g}", f"{p.a} vs {p.b}", _fmt(p.u, 1), _fmt_p(p.pvalue),
                              _fmt_p(p.p_bonferroni), "yes" if p.p_bonferroni < ALPHA else "no",
                              f"{len(pairs)} pairs; min p {_fmt_p(floor)}"])
    if not kw_rows:
        return ["Statistics need at least two inits with finished cells."]
    out += [f"Kruskal-Wallis across inits on {metric} (seeds as samples), α = {ALPHA}:", ""]
    out += _table(["model", "mode", "fraction", "H", "p", "significant", "n per init"], kw_rows)
    out += ["", "Pairwise two-sided Mann-Whitney U, Bonferroni-corrected (p × number of pairs, capped at 1):", ""]
    out += _table(["model", "mode", "fraction", "pair", "U", "p", "p (Bonferroni)", "significant", "note"], pair_rows)
    out += ["", "With few seeds the exact test cannot reach small p (`min p` column): more seeds are needed "
                "before a difference can be called significant."]
    return out


def write_report(
    path: Path, title: str, summary: list[str], rows: list[dict], datasets: list[str],
    published: list[dict], figures: dict[str, dict[str, Path]], size: int | str = "",
) -> Path:
    """Assemble report.md; `figures[dataset]` maps a figure kind to its PNG (relative paths written)."""
    root = path.parent
    done = [r for r in rows if r["status"] == "done"]
    failed = [r for r in rows if r["status"] == "failed"]
    lines = [f"# {title}", "", *summary, "",
             f"Cells: {len(rows)} in the grid, {len(done)} done, {len(failed)} failed, "
             f"{len(rows) - len(done) - len(failed)} pending.", ""]
    if failed:
        lines += ["## Failed cells", ""]
        lines += _table(["cell", "error"], [[r["cell_id"], str(r["error"]).replace("|", "\\|")] for r in failed])
        lines.append("")
    for flag in datasets:
        drows = [r for r in rows if r["dataset"] == flag]
        fractions = sorted({r["fraction"] for r in drows})
        lines += [f"## {flag}", ""]
        for metric, name in (("test_auc", "Test AUC"), ("test_acc", "Test ACC")):
            lines += [f"### {name} (mean ± sd over seeds)", "", *metric_table(drows, metric, fractions), ""]
        lines += ["### Convergence cost (epochs to best val, training seconds; means)", "", *cost_table(drows, fractions), ""]
        lines += ["### Published baselines beside ours", "",
                  *baseline_table(drows, [b for b in published if b.get("dataset") == flag], size), ""]
        figs = figures.get(flag, {})
        for kind, png in figs.items():
            if png is not None and Path(png).is_file():
                lines += [f"![{flag} {kind}]({Path(png).relative_to(root).as_posix()})", ""]
        lines += [f"### Statistics ({flag})", "", *stats_section(drows), ""]
    path.write_text("\n".join(lines) + "\n")
    return path
