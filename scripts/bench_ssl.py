"""Launcher of medformer.bench.ssl: `python scripts/bench_ssl.py --help`; usage and what it writes are in that module."""

import sys

from medformer.bench.ssl import main

if __name__ == "__main__":
    sys.exit(main())
