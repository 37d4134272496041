"""Block-wise prediction: the foreground probability of a volume of any size.

Each block is predicted on its core plus a halo of half a window
(:func:`cellcut.infer.sliding_window` inside it), so that seams between blocks see the same
context as the inside; only the core is written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

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


def decide_foreground(
    volume: Any,
    loaded: LoadedModel,
    normalization: Callable[[np.ndarray], np.ndarray] | None,
    denoise: Sequence[float] | None,
    device: str | torch.device,
    windows: int = 4,
) -> LoadedModel:
    """For a model that does not say which class holds the cells (one made elsewhere): decide
    on this image, by brightness (:func:`~cellcut.model.classes.choose_foreground_classes`),
    from ``windows`` windows of 64³ spread along the volume's longest axis."""
    import dataclasses

    from cellcut.model.classes import choose_foreground_classes

    if loaded.foreground_classes:
        return loaded
    shape = tuple(int(s) for s in volume.shape)
    size = [min(64, s) for s in shape]
    axis = int(np.argmax([s - c for s, c in zip(shape, size, strict=True)]))
    starts = np.linspace(0, shape[axis] - size[axis], windows).round().astype(int)
    blur = tuple(float(v) for v in denoise) if denoise and any(v > 0 for v in denoise) else None
    patches, probs = [], []
    for start in sorted(set(starts.tolist())):
        corner = [(s - c) // 2 for s, c in zip(shape, size, strict=True)]
        corner[axis] = start
        region = tuple(slice(a, a + c) for a, c in zip(corner, size, strict=True))
        data = _read(volume, region, shape, blur)
        if normalization is not None:
            data = normalization(data)
        x = torch.from_numpy(np.ascontiguousarray(data))[None, None]
        with torch.inference_mode():
            probs.append(loaded.model.encode(x.to(device) / loaded.input_scale).float().cpu())
        patches.append(x)
    fg = choose_foreground_classes(torch.cat(probs), torch.cat(patches))
    return dataclasses.replace(loaded, foreground_classes=fg)


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
    denoise: Sequence[float] | None = None,
    progress: Progress | None = None,
    interior_out: Any | None = None,
    precision: str = "float32",
) -> None:
    """Foreground probability of ``volume`` written into ``out`` (same shape, float32).

    A refined model (``model.kind == "refined"``) also gives its interior probability, written
    into ``interior_out`` (the seeds of :func:`cellcut.postprocess.seeded_watershed`).

    ``denoise``: (z, y, x) Gaussian σ in voxels applied to the image before normalization;
    each block is blurred with a margin of 4 σ around it, so that it sees the same blurred
    image as one-piece work.
    """
    shape = tuple(int(s) for s in volume.shape)
    grid = blocks(shape, block, prediction_halo(window, shape))
    if model.kind == "refined" and interior_out is None:
        raise ValueError("a refined model's interior needs interior_out")
    predictor = BlockPredictor(model, precision)
    for i, blk in enumerate(grid):
        prob = predict_block(
            volume, blk, predictor, window=window, overlap=overlap, batch_size=batch_size,
            device=device, normalization=normalization, denoise=denoise,
        )  # fmt: skip
        out[blk.core] = prob[0]
        if interior_out is not None and len(prob) > 1:
            interior_out[blk.core] = prob[1]
        if progress is not None:
            progress("probability", i + 1, len(grid))


def prediction_halo(window: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int]:
    """The halo a prediction block is read with: half a window, so seams see full context."""
    return tuple(min(int(w), s) // 2 for w, s in zip(window, shape, strict=True))  # type: ignore[return-value]


class BlockPredictor:
    """A model as a function of a batch of windows: foreground probability (and a refined
    model's interior), one channel each."""

    def __init__(self, model: LoadedModel, precision: str = "float32") -> None:
        self.bfloat16 = precision == "bfloat16"
        self.net = model.model.eval()
        self.scale = model.input_scale
        self.foreground = list(model.foreground_classes)
        self.refined = model.kind == "refined"
        self.channels = 2 if self.refined else 1

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=self.bfloat16):
            probs = self.net.encode(batch / self.scale).float()
        if self.refined:  # foreground (boundary + interior), interior
            return torch.stack([probs[:, 1] + probs[:, 2], probs[:, 2]], dim=1)
        return foreground_probability(probs, self.foreground)


def predict_block(
    volume: Any,
    blk: Any,
    predictor: BlockPredictor,
    *,
    window: Sequence[int],
    overlap: float,
    batch_size: int,
    device: str | torch.device,
    normalization: Callable[[np.ndarray], np.ndarray] | None,
    denoise: Sequence[float] | None,
) -> np.ndarray:
    """One block's probability channels over its core, shape (channels, *core): the block's
    outer region read (blurred by ``denoise`` as the whole volume would be), normalized and
    predicted by sliding windows."""
    shape = tuple(int(s) for s in volume.shape)
    window = tuple(min(int(w), s) for w, s in zip(window, shape, strict=True))
    blur = tuple(float(v) for v in denoise) if denoise and any(v > 0 for v in denoise) else None
    data = _read(volume, blk.outer, shape, blur)
    if normalization is not None:
        data = normalization(data)
    prob = sliding_window(
        data,
        predictor,
        predictor.channels,
        window=window,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
    )
    return prob[(slice(None), *blk.inner)]


def _read(
    volume: Any, region: tuple[slice, ...], shape: Sequence[int], blur: Sequence[float] | None
) -> np.ndarray:
    """``volume[region]`` as float32, blurred by ``blur`` (σ, voxels) as in the whole volume:
    read with a margin of 4 σ (the filter's reach), blurred, cropped."""
    if blur is None:
        return np.asarray(volume[region], dtype=np.float32)
    margin = [math.ceil(4 * s) + 1 for s in blur]
    wide = tuple(
        slice(max(0, r.start - m), min(n, r.stop + m))
        for r, m, n in zip(region, margin, shape, strict=True)
    )
    data = np.asarray(volume[wide], dtype=np.float32)
    if not data.flags.owndata:  # a view of the caller's array: never blur that in place
        data = data.copy()
    ndi.gaussian_filter(data, blur, output=data, mode="reflect")
    crop = tuple(
        slice(r.start - w.start, r.stop - w.start) for r, w in zip(region, wide, strict=True)
    )
    return np.ascontiguousarray(data[crop])  # a copy: the margin is freed before prediction


def crf_probability(
    volume: Any,
    probability: Any,
    out: Any,
    *,
    voxel_size: Sequence[float] | None,
    block: Sequence[int] = (256, 256, 256),
    normalization: Callable[[np.ndarray], np.ndarray] | None = None,
    denoise: Sequence[float] | None = None,
    progress: Progress | None = None,
) -> None:
    """``probability`` after the dense CRF (:func:`cellcut.crf.dense_crf`) into ``out``, block
    by block: each block with a halo as wide as the CRF's messages travel, so the result does
    not depend on the block size. The CRF sees the image as the model saw it (denoised,
    normalized)."""
    shape = tuple(int(s) for s in volume.shape)
    grid = blocks(shape, block, crf_halo(voxel_size))
    for i, blk in enumerate(grid):
        out[blk.core] = crf_block(
            volume, probability, blk, voxel_size=voxel_size, normalization=normalization,
            denoise=denoise,
        )  # fmt: skip
        if progress is not None:
            progress("crf", i + 1, len(grid))


def crf_halo(voxel_size: Sequence[float] | None) -> list[int]:
    """The halo of a CRF block: as far as the CRF's messages travel."""
    from cellcut.crf import CRF_ITERATIONS, window_radius

    return [r * CRF_ITERATIONS for r in window_radius(voxel_size)]


def crf_block(
    volume: Any,
    probability: Any,
    blk: Any,
    *,
    voxel_size: Sequence[float] | None,
    normalization: Callable[[np.ndarray], np.ndarray] | None,
    denoise: Sequence[float] | None,
) -> np.ndarray:
    """One block's probability after the dense CRF, over its core; the CRF sees the image as
    the model saw it (denoised, normalized)."""
    from cellcut.crf import dense_crf

    shape = tuple(int(s) for s in volume.shape)
    blur = tuple(float(v) for v in denoise) if denoise and any(v > 0 for v in denoise) else None
    data = _read(volume, blk.outer, shape, blur)
    if normalization is not None:
        data = normalization(data)
    prob = np.asarray(probability[blk.outer], dtype=np.float32)
    return dense_crf(prob, data, voxel_size)[blk.inner]
