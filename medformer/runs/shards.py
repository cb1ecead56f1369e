"""`medformer shards`: write a shard set (MedMNIST splits or an ingested DICOM cache) that every
process and node of a pretraining or fine-tuning run reads with `data.shards=[<output_dir>]`."""

from __future__ import annotations

import logging

from ..cli import run_entry
from ..config.shards import ShardsConfig
from ..data.shards import write_shards

logger = logging.getLogger(__name__)


def run_shards(cfg: ShardsConfig) -> dict:
    manifest = write_shards(cfg)
    for dim, part in manifest["dims"].items():
        logger.info("%s: %d %s samples in %d files (%s)", cfg.output_dir, part["samples"], dim, len(part["files"]),
                    ", ".join(f"{k} {v}" for k, v in part["datasets"].items()))
    return manifest


def main(argv: list[str] | None = None) -> int:
    """`medformer shards [--config FILE] source=... [key=value ...]`."""
    return run_entry(ShardsConfig, run_shards, argv, "shards")


if __name__ == "__main__":
    raise SystemExit(main())
