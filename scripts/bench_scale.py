"""Launcher of medformer.bench.scale: `python scripts/bench_scale.py --help`; usage and what it writes are in that module."""

import sys

from medformer.bench.scale import main

if __name__ == "__main__":
    sys.exit(main())
