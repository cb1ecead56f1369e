"""Launcher of medformer.bench.ssl_seeds: `python scripts/ssl_seeds.py --help`; usage and what it writes are in that module."""

import sys

from medformer.bench.ssl_seeds import main

if __name__ == "__main__":
    sys.exit(main())
