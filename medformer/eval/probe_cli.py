"""`medformer probe --init <run dir | .safetensors | scratch> --datasets ...`: linear probe and kNN
of a frozen encoder, printed as a table and optionally written to JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..config import ModelConfig, Range
from ..errors import UserError

# bounds of the numeric options (None: option not given)
OPTION_RANGES = {
    "size": Range(ge=1), "max_train": Range(ge=1), "k": Range(ge=1), "temperature": Range(gt=0.0),
    "C": Range(gt=0.0), "batch_size": Range(ge=1), "seed": Range(ge=0),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medformer probe", description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True,
                        help="scratch (random encoder), pixels (no encoder), a run folder or a .safetensors file")
    parser.add_argument("--datasets", nargs="+", required=True, help="MedMNIST flags, e.g. pneumoniamnist breastmnist")
    parser.add_argument("--root", default=None, help="npz folder (else $MEDMNIST_ROOT, ~/.medmnist)")
    parser.add_argument("--model", default=None, help="model name; default: the run's config.yaml, else medformer_small")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--splits", nargs="+", default=["val", "test"], choices=["val", "test"])
    parser.add_argument("--methods", nargs="+", default=["linear", "knn"], choices=["linear", "knn"])
    parser.add_argument("--max-train", type=int, default=None, help="cap the train split (features bank) per dataset")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--C", type=float, default=None,
                        help="inverse L2 strength of the logistic regression (default: chosen on the val split)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """A numeric option out of its range stops with a one-line UserError naming it."""
    for name, bounds in OPTION_RANGES.items():
        value = getattr(args, name)
        if value is not None and not bounds.holds(value):
            raise UserError(f"--{name.replace('_', '-')} must be {bounds}, got {value}")


def format_table(results: dict) -> str:
    rows = ["dataset          method  split  auc     acc"]
    for flag, per_method in results.items():
        if flag.startswith("_"):
            continue
        for method, per_split in per_method.items():
            for split, m in per_split.items():
                c = f"  (C={results['_linear_C'][flag]:g})" if method == "linear" else ""
                rows.append(f"{flag:16s} {method:7s} {split:6s} {m['auc']:.4f}  {m['acc']:.4f}{c}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    from .probe import run_probe

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        check_args(args)
        results = run_probe(
            args.init, args.datasets, root=args.root,
            model_cfg=ModelConfig(name=args.model) if args.model else None, size=args.size,
            splits=args.splits, methods=args.methods, batch_size=args.batch_size,
            max_train=args.max_train, k=args.k, temperature=args.temperature, C=args.C, seed=args.seed,
        )
    except UserError as e:
        print(f"probe: error: {e}", file=sys.stderr)
        return 2
    print(format_table(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
