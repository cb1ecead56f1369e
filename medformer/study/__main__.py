"""`medformer study --config configs/study/<name>.yaml [key=value ...]` (or `python -m medformer.study`)."""

from __future__ import annotations

import sys

from ..cli import run_entry
from ..config.study import StudyConfig
from .run import run_study


def main(argv: list[str] | None = None) -> int:
    return run_entry(StudyConfig, run_study, argv, "study")


if __name__ == "__main__":
    sys.exit(main())
