"""Launcher of medformer.bench.backbone: `python scripts/bench_backbone.py --help`; usage and what it writes are in that module."""

import sys

from medformer.bench.backbone import main

if __name__ == "__main__":
    sys.exit(main())
