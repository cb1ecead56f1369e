"""Launcher of medformer.bench.augment: `python scripts/bench_augment.py --help`; usage and what it writes are in that module."""

import sys

from medformer.bench.augment import main

if __name__ == "__main__":
    sys.exit(main())
