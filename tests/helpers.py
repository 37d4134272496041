"""Small things several tests make."""

from __future__ import annotations

from pathlib import Path

import torch

from cellcut.model import Checkpoint, WNet3D


def untrained_model(path: Path, seed: int = 0, normalization: str = "percentile") -> Path:
    """A tiny seeded, untrained W-Net saved as a model file (foreground class 1)."""
    torch.manual_seed(seed)
    model = WNet3D(base_width=2, depth=1)
    Checkpoint(
        architecture=model.arch.__dict__,
        model=model.state_dict(),
        config={"data": {"normalization": normalization}},
        foreground_classes=[1],
        input_scale=100.0,
    ).save(path)
    return path
