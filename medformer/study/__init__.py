"""Transfer studies: a grid of fine-tuning cells (init x model x dataset x label fraction x seed x
mode), run resumably, summarized as results.csv and report.md with tables, plots and statistics."""

from ..config.study import ExplainConfig, StudyConfig, StudyDataConfig
from .cells import Cell, enumerate_cells
from .run import run_study

__all__ = ["Cell", "ExplainConfig", "StudyConfig", "StudyDataConfig", "enumerate_cells", "run_study"]
