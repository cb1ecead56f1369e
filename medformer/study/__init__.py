"""Transfer studies: a grid of fine-tuning cells (init x model x dataset x label fraction x seed x
mode), run resumably, summarized as results.csv and report.md with tables, plots and statistics."""

from .cells import Cell, enumerate_cells
from .config import ExplainConfig, StudyConfig, StudyDataConfig
from .run import run_study
from .stats import bonferroni, kruskal_wallis, pairwise_mann_whitney

__all__ = [
    "Cell", "ExplainConfig", "StudyConfig", "StudyDataConfig", "bonferroni", "enumerate_cells",
    "kruskal_wallis", "pairwise_mann_whitney", "run_study",
]
