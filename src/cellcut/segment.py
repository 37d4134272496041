"""Segmentation of volumes of any size: probabilities, instances, statistics, a picture.

The volume is read lazily and processed in blocks (``block`` voxels per axis) with a halo around
each. In a block the model runs window by window (:func:`cellcut.infer.sliding_window`) on the
block plus a halo of half a window, so that seams between blocks see the same context as the
inside. Normalization statistics are computed once over the whole volume (sampled).

Instances are made block by block too, on the block plus a larger halo (``halo``, at least the
diameter of the largest cell): each object belongs to the block that holds its centroid and is
written whole from there. As long as a cell and its neighbourhood fit in the halo, the result is
the same as labelling the volume in one piece (tested), and no cell is cut at a seam.

Peak memory is set by the block, halo and window sizes, not by the volume: probabilities and
labels go to disk (zarr) as they are made, statistics accumulate per label.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellcut.checkpoint import LoadedModel, load_model
from cellcut.errors import CheckpointError, VolumeError
from cellcut.infer import sliding_window
from cellcut.io import (
    Volume,
    check_output,
    check_voxel_size,
    import_zarr,
    read_volume,
    split_location,
    zarr_block_io,
)
from cellcut.normalize import fit_normalization
from cellcut.postprocess import METHODS as INSTANCE_METHODS
from cellcut.postprocess import instances as label_instances
from cellcut.postprocess import relabel

Progress = Callable[[str, int, int], None]


@dataclass
class SegmentResult:
    """Where everything went, and the numbers."""

    labels_path: Path | None
    probability_path: Path | None
    stats_path: Path | None
    overview_path: Path | None
    n_cells: int
    stats: Sequence[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    labels: np.ndarray | None = None  # kept in memory when small (< 64 MB) or asked for
    probability: np.ndarray | None = None


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


def release_free_memory() -> None:
    """Give memory that glibc keeps after large frees back to the system (a no-op elsewhere).

    Between the stages of a block-wise run, freed block buffers otherwise stay resident in
    the allocator and add to the next stage's peak.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _blocks(shape: Sequence[int], block: Sequence[int]):
    ranges = [range(0, s, b) for s, b in zip(shape, block, strict=True)]
    for start in itertools.product(*ranges):
        yield tuple(slice(a, min(a + b, s)) for a, b, s in zip(start, block, shape, strict=True))


def _grow(sl: tuple[slice, ...], halo: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, s.start - h), min(n, s.stop + h))
        for s, h, n in zip(sl, halo, shape, strict=True)
    )


def _relative(inner: tuple[slice, ...], outer: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer, strict=True)
    )


def label_moments(labels: np.ndarray, offset: Sequence[int] = (0, 0, 0)) -> dict[str, np.ndarray]:
    """Voxel count, coordinate sums and bounding box of every label, plane by plane.

    Works one z-plane at a time, so memory stays at a few planes whatever the block size.
    Arrays are indexed by label (0 = background); ``offset`` shifts the coordinates.
    """
    n = int(labels.max()) + 1
    out = {
        "count": np.zeros(n),
        "sum_z": np.zeros(n),
        "sum_y": np.zeros(n),
        "sum_x": np.zeros(n),
        "min_z": np.full(n, np.inf),
        "min_y": np.full(n, np.inf),
        "min_x": np.full(n, np.inf),
        "max_z": np.full(n, -np.inf),
        "max_y": np.full(n, -np.inf),
        "max_x": np.full(n, -np.inf),
    }
    ny, nx = labels.shape[1:]
    yy = np.broadcast_to(np.arange(ny)[:, None] + offset[1], (ny, nx)).ravel()
    xx = np.broadcast_to(np.arange(nx)[None, :] + offset[2], (ny, nx)).ravel()
    for z in range(labels.shape[0]):
        plane = np.asarray(labels[z]).ravel()
        if not plane.any():
            continue
        counts = np.bincount(plane, minlength=n)
        out["count"] += counts
        out["sum_z"] += counts * (z + offset[0])
        out["sum_y"] += np.bincount(plane, weights=yy, minlength=n)
        out["sum_x"] += np.bincount(plane, weights=xx, minlength=n)
        present = counts > 0
        out["min_z"][present] = np.minimum(out["min_z"][present], z + offset[0])
        out["max_z"][present] = np.maximum(out["max_z"][present], z + offset[0])
        fg = plane > 0
        np.minimum.at(out["min_y"], plane[fg], yy[fg])
        np.maximum.at(out["max_y"], plane[fg], yy[fg])
        np.minimum.at(out["min_x"], plane[fg], xx[fg])
        np.maximum.at(out["max_x"], plane[fg], xx[fg])
    return out


def resolve_model(model: str | os.PathLike | LoadedModel | None, device: str) -> LoadedModel:
    """The shipped default (None or 'default'), a named model, a path, or an already loaded one."""
    if isinstance(model, LoadedModel):
        return model
    from cellcut.models import resolve_model_path

    path = resolve_model_path(model or "default")
    loaded = load_model(path, map_location="cpu")
    loaded.model.to(device)
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
    normalization: Any = None,
    progress: Progress | None = None,
) -> None:
    """Foreground probability of ``volume`` written into ``out`` (same shape, float32)."""
    shape = tuple(int(s) for s in volume.shape)
    window = tuple(min(int(w), s) for w, s in zip(window, shape, strict=True))
    halo = [w // 2 for w in window]
    blocks = list(_blocks(shape, block))
    scale = model.input_scale
    fg = list(model.foreground_classes)
    net = model.model.eval()

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        probs = net.encode(batch / scale)
        return probs[:, fg].sum(1, keepdim=True)

    for i, core in enumerate(blocks):
        outer = _grow(core, halo, shape)
        data = np.asarray(volume[outer], dtype=np.float32)
        if normalization is not None:
            data = normalization(data)
        prob = sliding_window(
            data, predictor, 1, window=window, overlap=overlap, batch_size=batch_size, device=device
        )
        out[core] = prob[(0, *_relative(core, outer))]
        if progress is not None:
            progress("probability", i + 1, len(blocks))


def label_blocks(
    probability: Any,
    out: Any,
    *,
    method: str,
    voxel_size: Sequence[float] | None,
    block: Sequence[int],
    halo: Sequence[int],
    progress: Progress | None = None,
    **kwargs: Any,
) -> int:
    """Instance labels of a probability map, block by block (see the module docstring).

    Returns the number of objects. ``out`` must be zero-initialised.
    """
    shape = tuple(int(s) for s in probability.shape)
    blocks = list(_blocks(shape, block))
    if method == "voronoi-otsu" and kwargs.get("spot_sigma", "auto") == "auto":
        # one blur for every block, or block and one-piece labelling would differ
        kwargs["spot_sigma"], _ = estimate_spot_sigma(
            probability, voxel_size, kwargs.get("outline_sigma", 1.0)
        )
    next_id = 1
    for i, core in enumerate(blocks):
        outer = _grow(core, halo, shape)
        prob = np.asarray(probability[outer], dtype=np.float32)
        local = label_instances(prob, method, voxel_size=voxel_size, probability=True, **kwargs)
        del prob
        n = int(local.max())
        if n:
            rel = _relative(core, outer)
            # owner: the block whose core holds the object's centroid
            moments = label_moments(local)
            counts = np.maximum(moments["count"], 1)
            centroid = [moments[f"sum_{a}"] / counts for a in "zyx"]
            own = np.ones(n + 1, dtype=bool)
            own[0] = False
            for ax, r in enumerate(rel):
                c = centroid[ax]
                own &= (c >= r.start - 0.5) & (c < r.stop - 0.5)
            # an object touching the outer edge of the grown block (not the volume's) is cut
            for ax in range(3):
                for side, index in ((outer[ax].start > 0, 0), (outer[ax].stop < shape[ax], -1)):
                    if side:
                        face = np.take(local, index, axis=ax)
                        own[np.unique(face)] = False
            lut = np.zeros(n + 1, dtype=np.int32)
            kept = np.flatnonzero(own)
            lut[kept] = np.arange(next_id, next_id + len(kept))
            next_id += len(kept)
            local = relabel(lut, local, in_place=True)
            target = np.asarray(out[outer])
            np.copyto(target, local, where=local > 0)
            out[outer] = target
        if progress is not None:
            progress("instances", i + 1, len(blocks))
    return next_id - 1


def estimate_spot_sigma(
    probability: Any,
    voxel_size: Sequence[float] | None,
    outline_sigma: float = 1.0,
    window: int = 160,
    max_windows: int = 8,
) -> tuple[float, float | None]:
    """Voronoi-Otsu's ``spot_sigma="auto"`` for a whole (possibly out-of-core) volume.

    Reads up to ``max_windows`` windows of ``window``³ voxels spread over the volume (the whole
    volume when it is smaller), measures the inscribed radius of every object not cut by a
    window face (:func:`cellcut.postprocess.object_radii`) and returns (spot sigma, median
    radius). The windows depend only on the volume's shape, so every block of a block-wise
    labelling, whatever the block size, uses the same blur.
    """
    from scipy import ndimage as ndi

    from cellcut.postprocess import _sigma_voxels, auto_spot_sigma, object_radii

    shape = tuple(int(s) for s in probability.shape)
    tiles = list(_blocks(shape, [min(window, s) for s in shape]))
    picks = np.linspace(0, len(tiles) - 1, min(max_windows, len(tiles))).round().astype(int)
    radii = []
    for sl in [tiles[i] for i in sorted(set(picks.tolist()))]:
        prob = np.asarray(probability[sl], dtype=np.float32)
        mask = ndi.gaussian_filter(prob, _sigma_voxels(outline_sigma, voxel_size)) > 0.5
        faces = [
            (ax, end)
            for ax, part in enumerate(sl)
            for end, inner in ((0, part.start > 0), (-1, part.stop < shape[ax]))
            if inner
        ]
        radii.append(object_radii(mask, voxel_size, open_faces=faces))
    return auto_spot_sigma(np.concatenate(radii), voxel_size)


def score_class_probabilities(
    probs: np.ndarray,
    image: np.ndarray,
    labels: np.ndarray,
    voxel_size: Sequence[float] | None = None,
    spot_sigma: float | str = "auto",
):
    """Score a W-Net's class probabilities against ground-truth labels, the way they are used.

    The cell classes are picked by brightness on ``image``
    (:func:`cellcut.train.choose_foreground_classes`), their summed probability is split into
    instances by Voronoi-Otsu, and the result is compared with ``labels``
    (:func:`cellcut.metrics.evaluate`, IoU thresholds 0.5 only). ``probs``: (K, z, y, x).
    Returns the :class:`~cellcut.metrics.Evaluation` and the foreground probability.
    """
    from cellcut.metrics import evaluate
    from cellcut.train import choose_foreground_classes, foreground_probability

    t = torch.as_tensor(np.asarray(probs, dtype=np.float32))[None]
    img = torch.as_tensor(np.asarray(image, dtype=np.float32))[None, None]
    classes = choose_foreground_classes(t, img)
    fg = foreground_probability(t, classes)[0, 0].numpy()
    pred = label_instances(
        fg, "voronoi-otsu", voxel_size=voxel_size, probability=True, spot_sigma=spot_sigma
    )
    return evaluate(labels, pred, thresholds=(0.5,)), fg


class CellTable(Sequence):
    """Per-cell statistics held as columns, read as rows.

    ``table[i]`` is the i-th cell as a dict (Python numbers), ``len(table)`` the number of
    cells, ``table.columns`` the numpy arrays. About 150 bytes per cell, where a list of dicts
    took ~1.6 kB: a whole-brain volume's millions of cells fit in memory.
    """

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        self.columns = columns
        self._n = len(next(iter(columns.values()))) if columns else 0

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._n))]
        if index < 0:
            index += self._n
        if not 0 <= index < self._n:
            raise IndexError(f"cell index {index} out of range for {self._n} cells")
        return {name: col[index].item() for name, col in self.columns.items()}

    def __repr__(self) -> str:
        return f"CellTable({self._n} cells, columns {list(self.columns)})"


def cell_statistics(
    labels: Any,
    image: Any,
    voxel_size: Sequence[float] | None,
    block: Sequence[int] = (256, 256, 256),
) -> tuple[CellTable, dict[str, Any]]:
    """Per-cell rows (a :class:`CellTable`) and a summary, accumulated block by block.

    Row: id, centroid (voxels and µm), volume (voxels, µm³), mean and max intensity of the raw
    image, bounding box (min and max voxel index per axis, inclusive).
    """
    shape = tuple(int(s) for s in labels.shape)
    vs = np.asarray(voxel_size if voxel_size else (1.0, 1.0, 1.0), dtype=np.float64)
    n = 0
    acc: dict[str, np.ndarray] = {}

    def grow(size: int) -> None:
        for key, fill in (
            ("count", 0.0),
            ("sum_z", 0.0),
            ("sum_y", 0.0),
            ("sum_x", 0.0),
            ("sum_i", 0.0),
            ("max_i", -np.inf),
            ("min_z", np.inf),
            ("min_y", np.inf),
            ("min_x", np.inf),
            ("max_z", -np.inf),
            ("max_y", -np.inf),
            ("max_x", -np.inf),
        ):
            old = acc.get(key)
            new = np.full(size, fill)
            if old is not None:
                new[: len(old)] = old
            acc[key] = new

    for core in _blocks(shape, block):
        lab = np.asarray(labels[core])
        m = int(lab.max())
        if m == 0:
            continue
        if m + 1 > n:
            n = m + 1
            grow(n)
        img = np.asarray(image[core], dtype=np.float64)
        mom = label_moments(lab, [c.start for c in core])
        k = len(mom["count"])
        for key in ("count", "sum_z", "sum_y", "sum_x"):
            acc[key][:k] += mom[key]
        for key in ("min_z", "min_y", "min_x"):
            acc[key][:k] = np.minimum(acc[key][:k], mom[key])
        for key in ("max_z", "max_y", "max_x"):
            acc[key][:k] = np.maximum(acc[key][:k], mom[key])
        for z in range(lab.shape[0]):
            plane = lab[z].ravel()
            if not plane.any():
                continue
            values = img[z].ravel()
            acc["sum_i"][:k] += np.bincount(plane, weights=values, minlength=k)
            fg = plane > 0
            np.maximum.at(acc["max_i"], plane[fg], values[fg])
    voxel_volume = float(np.prod(vs))
    ids = np.flatnonzero(acc["count"][1:] > 0) + 1 if n else np.zeros(0, dtype=np.int64)

    def column(key: str) -> np.ndarray:
        return acc[key][ids] if n else np.zeros(0)

    count = column("count")
    columns: dict[str, np.ndarray] = {"id": ids.astype(np.int64)}
    for a in "zyx":
        columns[f"centroid_{a}"] = column(f"sum_{a}") / count
    for ax, a in enumerate("zyx"):
        columns[f"centroid_{a}_um"] = columns[f"centroid_{a}"] * vs[ax]
    columns["volume_voxels"] = count.astype(np.int64)
    columns["volume_um3"] = count * voxel_volume
    columns["mean_intensity"] = column("sum_i") / count
    columns["max_intensity"] = column("max_i")
    for k in ("min", "max"):
        for a in "zyx":
            columns[f"bbox_{k}_{a}"] = column(f"{k}_{a}").astype(np.int64)
    rows = CellTable(columns)
    volumes = columns["volume_um3"]
    total_um3 = float(np.prod(shape) * voxel_volume)
    summary = {
        "cells": len(rows),
        "volume_um3": total_um3,
        "density_per_mm3": len(rows) / (total_um3 * 1e-9) if total_um3 else 0.0,
        "voxel_size_um": list(vs) if voxel_size else None,
        "cell_volume_um3": {
            "mean": float(volumes.mean()) if len(volumes) else 0.0,
            "median": float(np.median(volumes)) if len(volumes) else 0.0,
            "q25": float(np.percentile(volumes, 25)) if len(volumes) else 0.0,
            "q75": float(np.percentile(volumes, 75)) if len(volumes) else 0.0,
            "min": float(volumes.min()) if len(volumes) else 0.0,
            "max": float(volumes.max()) if len(volumes) else 0.0,
        },
        "units": "µm" if voxel_size else "voxels",
    }
    return rows, summary


def write_stats_csv(
    path: str | os.PathLike, rows: Sequence[dict[str, Any]], overwrite: bool
) -> Path:
    import csv

    from cellcut.io import _commit, _temp_sibling

    target = check_output(path, overwrite)
    tmp = _temp_sibling(target)
    fields = list(rows[0].keys()) if len(rows) else ["id"]
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for r in rows:  # one row at a time: a CellTable never becomes a list of dicts
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    _commit(tmp, target)
    return target


def segment(
    image: str | os.PathLike | np.ndarray | Volume,
    out: str | os.PathLike | None = None,
    *,
    model: str | os.PathLike | LoadedModel | None = None,
    voxel_size: Sequence[float] | None = None,
    channel: int | None = None,
    instances: str = "voronoi-otsu",
    window: int | Sequence[int] = 64,
    overlap: float = 0.25,
    block: int | Sequence[int] = 256,
    halo: int | Sequence[int] | None = None,
    batch_size: int = 2,
    device: str = "auto",
    stats: str | os.PathLike | None = None,
    probability_out: str | os.PathLike | None = None,
    overview: str | os.PathLike | None = None,
    overwrite: bool = False,
    spot_sigma: float | str = "auto",
    outline_sigma: float = 1.0,
    min_distance: float = 2.0,
    min_volume: float = 0.0,
    max_volume: float | None = None,
    keep_in_memory: bool | None = None,
    progress: Progress | None = None,
) -> SegmentResult:
    """Segment a volume with a trained W-Net: probability, instance labels, statistics, picture.

    Parameters
    ----------
    image
        Path (read lazily), array or :class:`~cellcut.io.Volume`.
    out
        Labels output (.tif, .zarr, .ome.zarr, .h5[:dataset], .npy, .nii); None keeps them in
        memory only (``result.labels``).
    model
        None or ``"default"`` (the shipped model), a model name, a checkpoint/run path, or a
        :class:`~cellcut.checkpoint.LoadedModel`.
    voxel_size
        (z, y, x) µm; default: read from the file, else isotropic 1.
    instances
        ``voronoi-otsu``, ``watershed``, ``connected`` or ``none`` (probability and mask only).
    window, overlap, block, halo, batch_size
        Sliding-window and block sizes (voxels); ``halo`` for instances (default: 32 µm
        worth of voxels, at least a window).
    spot_sigma, outline_sigma, min_distance, min_volume, max_volume
        Instance options (:func:`cellcut.postprocess.instances`); ``spot_sigma="auto"`` is
        measured once for the whole volume (:func:`estimate_spot_sigma`) and written to the
        summary.
    stats, probability_out, overview
        Optional outputs: per-cell CSV (a ``.summary.json`` is written beside it), the
        foreground probability volume, and an overview PNG.
    """
    from cellcut.train import resolve_device

    if instances not in (*INSTANCE_METHODS, "none"):
        raise VolumeError(
            "invalid option",
            f"unknown instance method {instances!r}",
            f"use one of {', '.join((*INSTANCE_METHODS, 'none'))}",
        )
    if spot_sigma != "auto" and not (isinstance(spot_sigma, (int, float)) and spot_sigma > 0):
        raise VolumeError(
            "invalid option",
            f"spot_sigma must be a positive number or 'auto', got {spot_sigma!r}",
            "give it in µm (voxels when there is no voxel size), or 'auto'",
        )
    if isinstance(image, Volume):
        vol = image
    elif isinstance(image, (str, os.PathLike)):
        vol = read_volume(image, channel=channel, lazy=True, validate=False)
    else:
        arr = np.asarray(image)
        from cellcut.io import check_volume_array, check_volume_values

        check_volume_array(arr, "array")
        check_volume_values(arr, "array")
        vol = Volume(arr, None, "array")
    vs = check_voxel_size(voxel_size) if voxel_size is not None else vol.voxel_size
    for target in (out, stats, probability_out, overview):
        if target is not None:
            check_output(target, overwrite)
    dev = resolve_device(device)
    loaded = resolve_model(model, str(dev))
    if loaded.model.arch.in_channels != 1:
        raise CheckpointError(
            "cannot use model", "it expects several input channels", "use a single-channel model"
        )
    shape = vol.shape
    win = _triple(window)
    blk = tuple(max(b, 1) for b in _triple(block))
    with zarr_block_io():
        norm = fit_normalization(vol.data, loaded.normalization, source=vol.source)
    release_free_memory()
    voxels = int(np.prod(shape))
    in_memory = keep_in_memory if keep_in_memory is not None else voxels * 4 < 256 * 2**20
    work = Path(tempfile.mkdtemp(prefix="cellcut-segment-"))
    with zarr_block_io():
        try:
            prob = _array(work / "probability.zarr", shape, np.float32, blk, in_memory)
            predict_probability(
                vol.data,
                loaded,
                prob,
                window=win,
                overlap=overlap,
                block=blk,
                batch_size=batch_size,
                device=dev,
                normalization=norm,
                progress=progress,
            )
            release_free_memory()
            labels = None
            n_cells = 0
            rows: Sequence[dict[str, Any]] = []
            summary: dict[str, Any] = {}
            if instances != "none":
                if halo is None:
                    spacing = vs if vs else (1.0, 1.0, 1.0)
                    halo_t = tuple(
                        max(w // 2, math.ceil(32.0 / v)) for w, v in zip(win, spacing, strict=True)
                    )
                else:
                    halo_t = _triple(halo)
                labels = _array(work / "labels.zarr", shape, np.int32, blk, in_memory)
                radius = None
                if instances == "voronoi-otsu" and spot_sigma == "auto":
                    spot_sigma, radius = estimate_spot_sigma(prob, vs, outline_sigma)
                n_cells = label_blocks(
                    prob,
                    labels,
                    method=instances,
                    voxel_size=vs,
                    block=blk,
                    halo=halo_t,
                    progress=progress,
                    spot_sigma=spot_sigma,
                    outline_sigma=outline_sigma,
                    min_distance=min_distance,
                    min_volume=min_volume,
                    max_volume=max_volume,
                )
                release_free_memory()
            else:
                labels = _array(work / "labels.zarr", shape, np.uint8, blk, in_memory)
                for core in _blocks(shape, blk):
                    labels[core] = (np.asarray(prob[core]) > 0.5).astype(np.uint8)
            if instances != "none":
                rows, summary = cell_statistics(labels, vol.data, vs, blk)
                summary["instances"] = instances
                if instances == "voronoi-otsu":
                    summary["spot_sigma"] = float(spot_sigma)
                    summary["median_object_radius"] = radius
            out_path = _write(out, labels, vs, overwrite) if out is not None else None
            prob_path = (
                _write(probability_out, prob, vs, overwrite)
                if probability_out is not None
                else None
            )
            stats_path = None
            if stats is not None:
                stats_path = write_stats_csv(stats, rows, overwrite)
                from cellcut.io import write_json

                write_json(Path(stats_path).with_suffix(".summary.json"), summary)
            overview_path = None
            if overview is not None:
                from cellcut.figures import plot_overview

                overview_path = plot_overview(vol.data, labels, overview, block=blk)
            small = voxels * 4 < 64 * 2**20 or in_memory
            return SegmentResult(
                labels_path=out_path,
                probability_path=prob_path,
                stats_path=stats_path,
                overview_path=overview_path,
                n_cells=n_cells if instances != "none" else 0,
                stats=rows,
                summary=summary,
                labels=np.asarray(labels[...]) if small else None,
                probability=np.asarray(prob[...]) if small else None,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    t = tuple(int(v) for v in value)
    if len(t) != 3:
        raise VolumeError("invalid option", f"{value} is not 1 or 3 sizes", "give N or Z Y X")
    return t  # type: ignore[return-value]


def _array(path: Path, shape, dtype, chunks, in_memory: bool):
    if in_memory:
        return np.zeros(shape, dtype=dtype)
    zarr = import_zarr()
    return zarr.create_array(
        str(path),
        shape=shape,
        dtype=dtype,
        chunks=tuple(min(c, s) for c, s in zip(chunks, shape, strict=True)),
        fill_value=0,
    )


def _write(location, data, voxel_size, overwrite: bool) -> Path:
    """Write an array (numpy or on-disk zarr) to any supported format.

    From an on-disk zarr, ``.zarr``, ``.tif`` and ``.h5`` outputs are written slab by slab
    (memory bounded); other formats are written from memory.
    """
    from cellcut.io import _commit, _temp_sibling, write_volume

    target, key = split_location(location)
    name = target.name.lower()
    streamable = name.endswith((".tif", ".tiff", ".h5", ".hdf5", ".hdf")) or (
        name.endswith(".zarr") and not name.endswith(".ome.zarr")
    )
    if isinstance(data, np.ndarray) or not streamable:
        return write_volume(
            location, np.asarray(data[...]), voxel_size=voxel_size, overwrite=overwrite
        )
    check_output(location, overwrite)
    tmp = _temp_sibling(target)
    # copied piece by piece along the source's chunks: a slab of whole planes would hold
    # chunk-depth × Y × X voxels at once (64 MB of labels for 512² planes, 1 GB for 2048²)
    pieces = list(_blocks(data.shape, getattr(data, "chunks", None) or (16, 256, 256)))
    try:
        if name.endswith(".zarr"):
            zarr = import_zarr()
            dst = zarr.create_array(
                str(tmp), shape=data.shape, dtype=data.dtype, chunks=data.chunks, fill_value=0
            )
            for piece in pieces:
                dst[piece] = data[piece]
            if voxel_size:
                dst.attrs["voxel_size_um"] = list(voxel_size)
        elif name.endswith((".tif", ".tiff")):
            from cellcut.io import _write_tiff

            pages = (np.asarray(data[z]) for z in range(data.shape[0]))
            _write_tiff(tmp, pages, voxel_size, True, shape=data.shape, dtype=data.dtype)
        else:
            import h5py

            with h5py.File(tmp, "w") as f:
                dset = f.create_dataset(
                    key or "data",
                    shape=data.shape,
                    dtype=data.dtype,
                    chunks=True,
                    compression="gzip",
                )
                for piece in pieces:
                    dset[piece] = data[piece]
                if voxel_size:
                    dset.attrs["element_size_um"] = list(voxel_size)
        _commit(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    return target
