"""Resume state on disk: Accelerate's `save_state` (optimizer, scheduler, RNG) is written into a
temporary folder and swapped in, so a kill mid-write never leaves a half-written checkpoint behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def swap_dir(tmp: str | Path, path: str | Path) -> None:
    """Replace folder `path` by the fully written folder `tmp` (old one removed after)."""
    tmp, path = Path(tmp), Path(path)
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
