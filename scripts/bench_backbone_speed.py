"""Launcher of medformer.bench.backbone_speed: `python scripts/bench_backbone_speed.py --help`; usage and what it writes are in that module."""

import sys

from medformer.bench.backbone_speed import main

if __name__ == "__main__":
    sys.exit(main())
