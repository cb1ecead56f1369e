"""Shared fixtures: the real MedMNIST files in ../shared and tiny model settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_MEDMNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"
REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def shared_root() -> Path:
    if not (SHARED_MEDMNIST / "pneumoniamnist.npz").is_file():
        pytest.skip(f"real MedMNIST files not found in {SHARED_MEDMNIST} (../shared beside the repo)")
    return SHARED_MEDMNIST
