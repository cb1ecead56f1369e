"""Where a study finds files named relative to the repository (its stage configs, the published
baselines)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_baselines(path: str | None) -> Path | None:
    """The baselines CSV: as given (relative to the working directory), else relative to the repo."""
    if not path:
        return None
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return p
    return REPO_ROOT / p
