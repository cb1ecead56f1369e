"""`medformer pseudolabel --config configs/pseudolabel/<x>.yaml [key=value ...]`."""

import sys

from medformer.cli import run_entry
from medformer.pseudolabels.run import PseudoLabelConfig, run_pseudolabel


def main(argv: list[str] | None = None) -> int:
    return run_entry(PseudoLabelConfig, run_pseudolabel, argv, "pseudolabel")


if __name__ == "__main__":
    sys.exit(main())
