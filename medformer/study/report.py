"""report.md of a study: tables (mean ± sd over seeds), figures, statistics, baselines, failures."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import finetune_recipe
from ..data.domains import REGRESSION, SEGMENTATION, dataset_info
from ..eval.compare import Ranking
from ..eval.stats import kruskal_wallis, min_attainable_p, pairwise_mann_whitney
from .evidence import Comparison, Recommendation

ALPHA = 0.05


def primary_metrics(flag: str) -> list[tuple[str, str]]:
    """(results.csv column, title) of the tables of a dataset: AUC and ACC; Dice and IoU for
    segmentation; MAE and R2 for regression."""
    task = dataset_info(flag).task
    if task == SEGMENTATION:
        return [("test_dice", "Test Dice"), ("test_iou", "Test IoU")]
    if task == REGRESSION:
        return [("test_mae", "Test MAE"), ("test_r2", "Test R2")]
    return [("test_auc", "Test AUC"), ("test_acc", "Test ACC")]


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


def _setting(setting: tuple, with_model: bool) -> list[str]:
    dataset, model, mode, fraction = setting
    return [dataset, *([f"{model} / {mode}"] if with_model else []), f"{fraction:g}"]


def _delta(c: Comparison) -> str:
    r = c.result
    return f"{r.delta:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]" if r is not None else "–"


def recommendation_section(recs: list[Recommendation]) -> list[str]:
    """Which init to use per dataset and label budget, computed from the paired comparisons."""
    if not recs:
        return ["No finished fine-tune cells yet: nothing to recommend."]
    with_model = len({(r.setting[1], r.setting[2]) for r in recs}) > 1
    body = []
    for r in recs:
        c = r.against
        if c is None or c.result is None:
            verdict = r.note or (c.note if c is not None else "not testable")
        elif not r.tied:
            verdict = f"**use {r.best}**: better than every other init (runner-up {c.b})"
        else:
            verdict = (f"insufficient evidence: {r.best} is not shown better than {', '.join(r.tied)}; "
                       f"differences below {c.result.detectable:.3f} AUC cannot be detected here")
        p = _fmt_p(c.result.p_value) if c is not None and c.result is not None else "–"
        body.append([*_setting(r.setting, with_model), r.best or "–", _fmt(r.mean_auc),
                     f"{c.b}: {_delta(c)}" if c is not None else "–", p, verdict])
    cols = ["dataset", *(["model / mode"] if with_model else []), "label fraction", "best init", "its mean test AUC",
            "against the runner-up: Δ AUC [95% CI]", "p", "verdict"]
    detectable = [r.against.result.detectable for r in recs if r.against is not None and r.against.result is not None]
    power = (f"Power: with these seeds and test sets, a difference of {np.median(detectable):.3f} AUC (median over the "
             f"rows; {min(detectable):.3f}-{max(detectable):.3f}) is detected with 80% power at α = {ALPHA}."
             if detectable else "Power: no comparison was testable.")
    return [*_table(cols, body), "",
            "Δ: mean over seeds of the AUC difference on the same test images; the interval and p come from "
            "a paired bootstrap that resamples both the seeds and the test images (medformer.eval.compare). " + power]


def paired_section(comparisons: list[Comparison]) -> list[str]:
    """Every pair of inits per setting, on the same test images, seeds combined."""
    if not comparisons:
        return ["Paired comparisons need at least two inits with finished cells (not testable)."]
    with_model = len({(c.setting[1], c.setting[2]) for c in comparisons}) > 1
    body = []
    for c in comparisons:
        r = c.result
        body.append([*_setting(c.setting, with_model)[1:], f"{c.a} vs {c.b}", _delta(c),
                     _fmt_p(r.p_value) if r else "–", ("yes" if r.significant else "no") if r else "not testable",
                     str(r.seeds) if r else "–", str(r.n_images) if r else "–", _fmt(r.detectable) if r else "–",
                     _fmt_p(c.welch_p) if c.welch_p is not None else "–", c.note])
    cols = [*(["model / mode"] if with_model else []), "fraction", "pair (better mean first)", "Δ AUC [95% CI]", "p",
            "significant", "seeds", "test images", "detectable Δ (80% power)", "Welch p (seeds)", "note"]
    return [*_table(cols, body), "",
            "p and significant: the paired bootstrap over seeds and test images. Welch p (seeds): Welch's t-test "
            "of the two inits' per-seed test AUCs, which ignores the pairing on test images (reported beside it, "
            "as the pretraining-seed benchmark did; with `pretrain_per_seed` the seeds span pretraining too)."]


def ranking_section(rankings: dict[tuple[str, str], Ranking], figures: dict[tuple[str, str], Path | None],
                    root: Path) -> list[str]:
    out: list[str] = []
    for (model, mode), rk in rankings.items():
        out += [f"{model} / {mode}: {rk.blocks} blocks (dataset x label fraction, mean test AUC over seeds)."]
        if not rk.mean_rank:
            out += [f"{rk.note}.", ""]
            continue
        test = "sign test" if len(rk.inits) == 2 else "Friedman χ²"
        out += [f"{test} {_fmt(rk.statistic, 2)}, p {_fmt_p(rk.p_value)}; Nemenyi critical difference of mean "
                f"ranks {_fmt(rk.critical_difference, 2)} (α = {ALPHA})" + (f"; {rk.note}" if rk.note else "") + ".", ""]
        order = sorted(rk.inits, key=lambda i: rk.mean_rank[i])
        rows = [[i, f"{rk.mean_rank[i]:.2f}", ", ".join(j for j in order if j != i and rk.differs(i, j)) or "none"]
                for i in order]
        out += _table(["init", "mean rank (1 = best)", "differs from (rank gap > CD)"], rows) + [""]
        png = figures.get((model, mode))
        if png is not None and Path(png).is_file():
            out += [f"![critical difference {model} {mode}]({Path(png).relative_to(root).as_posix()})", ""]
    return out


RECIPE_SAMPLES = finetune_recipe().auto_samples  # the default fine-tuning recipe's training samples


def reference_check(rows: list[dict], published: list[dict], init: str = "scratch") -> list[str]:
    """Does `init` at the largest label fraction reach the published ResNet-18 (28 px; 3D for volumes)?
    If not, the training samples its cells saw, against the default recipe's."""
    done = [r for r in rows if r["status"] == "done" and r["init"] == init]
    if not done:
        return []
    top = max(float(r["fraction"]) for r in done)
    cells = [r for r in done if float(r["fraction"]) == top]
    ours = _values(cells, "test_auc")
    ref = next((b for b in published if b["method"] in ("ResNet-18 (28)", "ResNet-18+3D (28)")), None)
    if ref is None or not ours:
        return []
    mean = float(np.mean(ours))
    seen = _values(cells, "train_samples")
    line = (f"{init} at label fraction {top:g}: test AUC {mean:.3f} against {ref['method']}'s published {ref['auc']:.3f}: ")
    if mean >= ref["auc"]:
        return [line + "reached.", ""]
    why = (f"each cell trained on {np.mean(seen):.0f} samples, against the default recipe's {RECIPE_SAMPLES}; "
           "this study is sized for speed, not for the best absolute numbers" if seen and np.mean(seen) < RECIPE_SAMPLES
           else "not explained by the training budget")
    return [line + f"**below by {ref['auc'] - mean:.3f}**: {why}.", ""]


def stats_section(rows: list[dict], metric: str = "test_auc") -> list[str]:
    """Kruskal-Wallis across inits per (model, mode, fraction); pairwise Mann-Whitney U, Bonferroni
    (RadiologyNET's reporting: seeds as samples, blind to which test images were hard)."""
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
    out += [f"RadiologyNET-style, for reference: Kruskal-Wallis across inits on {metric} (seeds as samples), "
            f"α = {ALPHA}:", ""]
    out += _table(["model", "mode", "fraction", "H", "p", "significant", "n per init"], kw_rows)
    out += ["", "Pairwise two-sided Mann-Whitney U, Bonferroni-corrected (p × number of pairs, capped at 1):", ""]
    out += _table(["model", "mode", "fraction", "pair", "U", "p", "p (Bonferroni)", "significant", "note"], pair_rows)
    out += ["", "With few seeds the exact test cannot reach small p (`min p` column): more seeds are needed "
                "before a difference can be called significant."]
    return out


@dataclass
class Evidence:
    recommendations: list[Recommendation]
    comparisons: list[Comparison]
    rankings: dict[tuple[str, str], Ranking]
    rank_figures: dict[tuple[str, str], Path | None]


def _figure_lines(figs: dict[str, Path | None], flag: str, root: Path) -> list[str]:
    lines = []
    for kind, png in figs.items():
        if png is not None and Path(png).is_file():
            lines += [f"![{flag} {kind}]({Path(png).relative_to(root).as_posix()})", ""]
    return lines


def write_report(
    path: Path, title: str, summary: list[str], rows: list[dict], datasets: list[str],
    published: list[dict], figures: dict[str, dict[str, Path]], size: int | str = "",
    evidence: Evidence | None = None,
) -> Path:
    """Assemble report.md; `figures[dataset]` maps a figure kind to its PNG (relative paths written)."""
    root = path.parent
    done = [r for r in rows if r["status"] == "done"]
    failed = [r for r in rows if r["status"] == "failed"]
    lines = [f"# {title}", ""]
    if evidence is not None:
        lines += ["## Recommendation", "", *recommendation_section(evidence.recommendations), ""]
    lines += [*summary, "",
              f"Cells: {len(rows)} in the grid, {len(done)} done, {len(failed)} failed, "
              f"{len(rows) - len(done) - len(failed)} pending.", ""]
    if evidence is not None:
        lines += ["## Ranking across datasets and label fractions", "",
                  *ranking_section(evidence.rankings, evidence.rank_figures, root)]
    if failed:
        lines += ["## Failed cells", ""]
        lines += _table(["cell", "error"], [[r["cell_id"], str(r["error"]).replace("|", "\\|")] for r in failed])
        lines.append("")
    for flag in datasets:
        drows = [r for r in rows if r["dataset"] == flag]
        fractions = sorted({r["fraction"] for r in drows})
        lines += [f"## {flag}", ""]
        metrics = primary_metrics(flag)
        for metric, name in metrics:
            lines += [f"### {name} (mean ± sd over seeds)", "", *metric_table(drows, metric, fractions), ""]
        lines += ["### Convergence cost (epochs to best val, training seconds; means)", "", *cost_table(drows, fractions), ""]
        if dataset_info(flag).is_dense:  # no published baselines, paired AUC tests or Grad-CAM panels
            lines += [*_figure_lines(figures.get(flag, {}), flag, root),
                      f"### Statistics over seeds ({flag})", "", *stats_section(drows, metrics[0][0]), ""]
            continue
        own_published = [b for b in published if b.get("dataset") == flag and str(b.get("size", size)) == str(size)]
        lines += ["### Published baselines beside ours", "",
                  *baseline_table(drows, [b for b in published if b.get("dataset") == flag], size), "",
                  *reference_check(drows, own_published)]
        lines += _figure_lines(figures.get(flag, {}), flag, root)
        if evidence is not None:
            lines += [f"### Paired comparisons on every test image ({flag}, seeds combined)", "",
                      *paired_section([c for c in evidence.comparisons if c.setting[0] == flag]), ""]
        lines += [f"### Statistics over seeds ({flag})", "", *stats_section(drows), ""]
    path.write_text("\n".join(lines) + "\n")
    return path
