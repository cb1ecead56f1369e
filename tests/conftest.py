"""Shared fixtures: the real MedMNIST files in ../shared and tiny model settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_MEDMNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"
REPO = Path(__file__).resolve().parents[1]

# tiny test models run faster on one thread than on two contended ones
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """In-process runs each build an Accelerator; its process-wide state must not leak."""
    yield
    from medformer.engine.trainer import reset_accelerate_state

    reset_accelerate_state()


@pytest.fixture
def shared_root() -> Path:
    if not (SHARED_MEDMNIST / "pneumoniamnist.npz").is_file():
        pytest.skip(f"real MedMNIST files not found in {SHARED_MEDMNIST} (../shared beside the repo)")
    return SHARED_MEDMNIST
