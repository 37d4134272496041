"""Sliding-window inference with gaussian blending.

Windows of a fixed size overlap by a fraction; each window's output is weighted by a gaussian
importance map (centre counts more than borders, where a U-Net sees less context) and the
weighted sum is divided by the summed weights. Windows are batched, computed under
``torch.inference_mode`` on the model's device, and the result accumulated on the CPU.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

Predictor = Callable[[torch.Tensor], torch.Tensor]


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets covering ``size`` with windows of ``window`` overlapping by ``overlap``."""
    if size <= window:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    starts = list(range(0, size - window + 1, step))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def gaussian_importance(window: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """Separable gaussian weights over a window, max 1, never below 1e-3 (edges still count)."""
    axes = []
    for w in window:
        x = torch.arange(w, dtype=torch.float32) - (w - 1) / 2.0
        sigma = max(w * sigma_scale, 1e-3)
        axes.append(torch.exp(-0.5 * (x / sigma) ** 2))
    imp = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (imp / imp.max()).clamp_min(1e-3)


def sliding_window(
    volume: Any,
    predictor: Predictor,
    out_channels: int,
    window: Sequence[int] = (64, 64, 64),
    overlap: float = 0.25,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Run ``predictor`` over a (z, y, x) volume window by window.

    Parameters
    ----------
    volume
        (z, y, x) array or lazy array (only the windows are read).
    predictor
        Maps a batch (B, 1, *window) to (B, out_channels, *window).
    window, overlap, batch_size
        Window size, fractional overlap in [0, 1), windows per forward pass.

    Returns
    -------
    numpy.ndarray
        (out_channels, z, y, x) float32.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    shape = tuple(int(s) for s in volume.shape)
    win = tuple(min(int(w), s) if s >= 8 else int(w) for w, s in zip(window, shape, strict=True))
    pad = [max(0, w - s) for w, s in zip(win, shape, strict=True)]
    importance = gaussian_importance(win)
    acc = torch.zeros((out_channels, *[s + p for s, p in zip(shape, pad, strict=True)]))
    norm = torch.zeros(acc.shape[1:])
    starts = list(
        itertools.product(
            *[window_starts(s + p, w, overlap) for s, p, w in zip(shape, pad, win, strict=True)]
        )
    )
    with torch.inference_mode():
        for b in range(0, len(starts), batch_size):
            chunk = starts[b : b + batch_size]
            tiles = []
            for st in chunk:
                tiles.append(_read_window(volume, st, win, shape))
            batch = torch.from_numpy(np.stack(tiles)[:, None]).to(device)
            out = predictor(batch).float().cpu()
            for st, o in zip(chunk, out, strict=True):
                sl = tuple(slice(a, a + w) for a, w in zip(st, win, strict=True))
                acc[(slice(None), *sl)] += o * importance
                norm[sl] += importance
    result = acc / norm
    crop = tuple(slice(0, s) for s in shape)
    return result[(slice(None), *crop)].numpy()


def _read_window(volume, start, win, shape) -> np.ndarray:
    """Read one window; where the volume is smaller than the window, reflect it."""
    sl = tuple(slice(a, min(a + w, s)) for a, w, s in zip(start, win, shape, strict=True))
    tile = np.asarray(volume[sl], dtype=np.float32)
    missing = [(0, w - t) for w, t in zip(win, tile.shape, strict=True)]
    if any(m[1] for m in missing):
        tile = np.pad(tile, missing, mode="reflect" if min(tile.shape) > 1 else "edge")
    return tile
