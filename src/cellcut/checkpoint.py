"""Checkpoints: one self-describing file per run.

A checkpoint holds the model's weights and architecture, the full training configuration, the
optimizer state, the learning-rate scale, every random-number state (torch, the patch
sampler's), the step, epoch and elapsed time, the resolved σ_I and the foreground classes: enough
to rebuild the model without the code that trained it, and to resume a run exactly. Files are
written atomically and read with ``weights_only=True`` (no arbitrary code runs on load).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cellcut._version import __version__
from cellcut.errors import CheckpointError
from cellcut.model import WNet3D, WNetArchitecture

FORMAT = "cellcut-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus format markers) atomically to ``path``."""
    from cellcut.io import _commit, _temp_sibling

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cellcut_version": __version__,
        **payload,
    }
    tmp = _temp_sibling(target)
    try:
        torch.save(data, tmp)
        _commit(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint; raise CheckpointError when missing, corrupt or not cellcut's."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.exists():
        raise CheckpointError(
            "cannot load checkpoint",
            "the file does not exist",
            "give a run folder or a checkpoint/model file",
            file=p,
        )
    try:
        data = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for damaged files
        raise CheckpointError(
            "cannot load checkpoint",
            f"the file is corrupt or truncated ({type(e).__name__}: {str(e)[:120]})",
            "use an intact copy, or the previous checkpoint",
            file=p,
        ) from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            "cannot load checkpoint",
            "this is not a cellcut checkpoint",
            "give a file written by cellcut train",
            file=p,
        )
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            "cannot load checkpoint",
            f"written by a newer cellcut (format {data['format_version']})",
            "upgrade cellcut",
            file=p,
        )
    return data


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, in eval mode, and what inference needs with it."""

    model: WNet3D
    foreground_classes: list[int]
    normalization: str
    intensity_sigma: float | None
    input_scale: float
    source: str
    meta: dict[str, Any]

    @property
    def n_classes(self) -> int:
        return self.model.n_classes


def build_model(data: dict, source: str = "checkpoint") -> WNet3D:
    """Rebuild the W-Net of a loaded checkpoint and load its weights."""
    try:
        arch = WNetArchitecture(**data["architecture"])
        model = WNet3D.from_architecture(arch)
        model.load_state_dict(data["model"])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            "cannot load checkpoint",
            f"its model does not match its architecture ({str(e)[:160]})",
            "the file may be damaged or from another program",
            file=source,
        ) from e
    return model


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Load a trained model for inference from a run folder or checkpoint file."""
    data = load_checkpoint(path, map_location)
    model = build_model(data, os.fspath(path))
    model.eval()
    config = data.get("config", {})
    classes = list(data.get("foreground_classes") or [0])
    if any(not 0 <= c < model.n_classes for c in classes):
        raise CheckpointError(
            "cannot load model",
            f"its foreground classes {classes} do not exist in a model with "
            f"K={model.n_classes} classes",
            "the file was edited or mixed with another model's; retrain or re-export it",
            file=path,
        )
    return LoadedModel(
        model=model,
        foreground_classes=classes,
        normalization=config.get("data", {}).get("normalization", "remap"),
        intensity_sigma=data.get("intensity_sigma"),
        input_scale=float(data.get("input_scale", 100.0)),
        source=os.fspath(path),
        meta={k: v for k, v in data.items() if k not in ("model", "optimizer")},
    )
