"""`accelerate launch -m pretrain --config configs/pretrain/<method>_small.yaml [key=value ...]`."""

import sys

from medformer.cli import run_entry
from medformer.config.pretrain import PretrainConfig
from medformer.runs.pretrain import run_pretrain


def main(argv: list[str] | None = None) -> int:
    return run_entry(PretrainConfig, run_pretrain, argv, "pretrain")


if __name__ == "__main__":
    sys.exit(main())
