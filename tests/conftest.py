"""Shared fixtures: synthetic volumes, and the real data folder (skipped cleanly if absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cellcut.synthetic import make_nuclei_volume

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED_DATA = Path(
    os.environ.get("CELLCUT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def shared_file(relative: str) -> Path:
    """Path of a file under ../shared/data, or skip the test with a message saying why."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data {relative} not found under {SHARED_DATA} (set CELLCUT_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def small_synthetic():
    return make_nuclei_volume((24, 40, 40), seed=1, radius_um=(3.0, 5.0), voxel_size=(1.5, 1, 1))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
