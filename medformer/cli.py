"""Command-line parsing shared by the entry points: `--config FILE [key=value ...]`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

from .config import load_config
from .errors import UserError
from .lifeline import die_with_parent_from_env


def parse_run_args(argv: list[str] | None, prog: str) -> tuple[str | None, list[str]]:
    parser = argparse.ArgumentParser(prog=prog, description=f"medformer {prog}: --config FILE [key=value ...]")
    parser.add_argument("--config", help="YAML config file (configs/...)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=5")
    args = parser.parse_intermixed_args(argv)
    return args.config, args.overrides


def run_entry(schema: type, run: Callable, argv: list[str] | None, prog: str) -> int:
    """Load and validate the config, run, turn user errors into one-line messages."""
    die_with_parent_from_env()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config, overrides = parse_run_args(argv, prog)
    try:
        cfg = load_config(schema, config, overrides)
        run(cfg)
    except UserError as e:  # input mistakes: one line, exit 2; anything else is a bug and keeps its traceback
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """`medformer <command> ...` dispatcher."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"finetune": "finetune.__main__", "pretrain": "pretrain.__main__", "probe": "medformer.eval.probe_cli", "pseudolabel": "medformer.runs.pseudolabel", "shards": "medformer.runs.shards", "study": "medformer.study.__main__"}
    if not argv or argv[0] not in commands:
        print(f"usage: medformer {{{','.join(commands)}}} --config FILE [key=value ...]", file=sys.stderr)
        return 2

    return importlib.import_module(commands[argv[0]]).main(argv[1:])
