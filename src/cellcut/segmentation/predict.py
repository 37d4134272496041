"""Block-wise prediction: the foreground probability of a volume of any size.

Each block is predicted on its core plus a halo of half a window
(:func:`cellcut.infer.sliding_window` inside it), so that seams between blocks see the same
context as the inside; only the core is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from cellcut.blocks import blocks
from cellcut.errors import CheckpointError
from cellcut.infer import sliding_window
from cellcut.model import LoadedModel, load_model, resolve_model_path
from cellcut.model.classes import foreground_probability

Progress = Callable[[str, int, int], None]


def resolve_model(
    model: str | os.PathLike | LoadedModel | None, device: str | torch.device
) -> LoadedModel:
    """The shipped default (None or 'default'), a named model, a path, or an already loaded
    one, on ``device`` and usable for segmentation (one input channel)."""
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        loaded = load_model(resolve_model_path(model or "default"), map_location="cpu")
        loaded.model.to(device)
    if loaded.model.arch.in_channels != 1:
        raise CheckpointError(
            "cannot use model", "it expects several input channels", "use a single-channel model"
        )
    return loaded


def predict_probability(
    volume: Any,
    model: LoadedModel,
    out: Any,
    *,
    window: Sequence[int] = (64, 64, 64),
    overlap: float = 0.25,
    block: Sequence[int] = (256, 256, 256),
    batch_size: int = 2,
    device: str | torch.device = "cpu",
    normalization: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: Progress | None = None,
) -> None:
    """Foreground probability of ``volume`` written into ``out`` (same shape, float32)."""
    shape = tuple(int(s) for s in volume.shape)
    window = tuple(min(int(w), s) for w, s in zip(window, shape, strict=True))
    grid = blocks(shape, block, [w // 2 for w in window])
    scale = model.input_scale
    fg = list(model.foreground_classes)
    net = model.model.eval()

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        return foreground_probability(net.encode(batch / scale), fg)

    for i, blk in enumerate(grid):
        data = np.asarray(volume[blk.outer], dtype=np.float32)
        if normalization is not None:
            data = normalization(data)
        prob = sliding_window(
            data, predictor, 1, window=window, overlap=overlap, batch_size=batch_size, device=device
        )
        out[blk.core] = prob[(0, *blk.inner)]
        if progress is not None:
            progress("probability", i + 1, len(grid))
