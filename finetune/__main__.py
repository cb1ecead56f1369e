"""`accelerate launch -m finetune --config configs/finetune/<x>.yaml [key=value ...]`."""

import sys

from medformer.cli import run_entry
from medformer.config import FinetuneConfig
from medformer.runs.finetune import run_finetune


def main(argv: list[str] | None = None) -> int:
    return run_entry(FinetuneConfig, run_finetune, argv, "finetune")


if __name__ == "__main__":
    sys.exit(main())
