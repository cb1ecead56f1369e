"""Launcher of medformer.bench.gpu: `python scripts/bench_gpu.py --help`; usage and what it writes are in that module."""

import sys

from medformer.bench.gpu import main

if __name__ == "__main__":
    sys.exit(main())
