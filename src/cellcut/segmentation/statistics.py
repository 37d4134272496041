"""Per-cell statistics of a label volume, accumulated block by block, and their CSV.

Memory stays at one block (and a few planes inside it) whatever the volume; the per-cell
table is held as columns (:class:`CellTable`), about 150 bytes per cell, so a whole brain's
millions of cells fit in memory.

Columns are named as ``skimage.measure.regionprops_table`` names them where they mean the same
(``label``, ``centroid-0..2``, ``area`` in voxels, ``intensity_mean``, ``intensity_max``,
``bbox-0..5`` with exclusive maxima), plus physical ones (``centroid_z_um``…, ``volume_um3``).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cellcut.blocks import tiles
from cellcut.outputs import atomic_output, check_output

_AXES = "zyx"


def label_moments(labels: np.ndarray, offset: Sequence[int] = (0, 0, 0)) -> dict[str, np.ndarray]:
    """Voxel count, coordinate sums and bounding box of every label, plane by plane.

    Works one z-plane at a time, so memory stays at a few planes whatever the block size.
    Arrays are indexed by label (0 = background); ``offset`` shifts the coordinates.
    """
    n = int(labels.max()) + 1
    out = {"count": np.zeros(n)}
    for a in _AXES:
        out[f"sum_{a}"] = np.zeros(n)
    for a in _AXES:
        out[f"min_{a}"] = np.full(n, np.inf)
        out[f"max_{a}"] = np.full(n, -np.inf)
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
        for a, coords in (("y", yy), ("x", xx)):
            np.minimum.at(out[f"min_{a}"], plane[fg], coords[fg])
            np.maximum.at(out[f"max_{a}"], plane[fg], coords[fg])
    return out


def centroids(moments: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Per-label centroid coordinates (z, y, x) from :func:`label_moments`."""
    counts = np.maximum(moments["count"], 1)
    return [moments[f"sum_{a}"] / counts for a in _AXES]


class CellTable(Sequence):
    """Per-cell statistics held as columns, read as rows.

    ``table[i]`` is the i-th cell as a dict (Python numbers), ``len(table)`` the number of
    cells, ``table.columns`` the numpy arrays.
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


class _Accumulator:
    """Moments and intensities per label, summed over blocks; grows as labels appear."""

    FILLS: ClassVar[dict[str, float]] = {
        "count": 0.0,
        "sum_i": 0.0,
        "max_i": -np.inf,
        **{f"sum_{a}": 0.0 for a in _AXES},
        **{f"min_{a}": np.inf for a in _AXES},
        **{f"max_{a}": -np.inf for a in _AXES},
    }

    def __init__(self) -> None:
        self.acc = {key: np.zeros(0) for key in self.FILLS}

    def grow(self, size: int) -> None:
        for key, fill in self.FILLS.items():
            old = self.acc[key]
            if len(old) < size:
                new = np.full(size, fill)
                new[: len(old)] = old
                self.acc[key] = new

    def add(self, lab: np.ndarray, img: np.ndarray, origin: Sequence[int]) -> None:
        mom = label_moments(lab, origin)
        k = len(mom["count"])
        self.grow(k)
        acc = self.acc
        for key in ("count", *(f"sum_{a}" for a in _AXES)):
            acc[key][:k] += mom[key]
        for a in _AXES:
            acc[f"min_{a}"][:k] = np.minimum(acc[f"min_{a}"][:k], mom[f"min_{a}"])
            acc[f"max_{a}"][:k] = np.maximum(acc[f"max_{a}"][:k], mom[f"max_{a}"])
        for z in range(lab.shape[0]):
            plane = lab[z].ravel()
            if not plane.any():
                continue
            values = img[z].ravel()
            acc["sum_i"][:k] += np.bincount(plane, weights=values, minlength=k)
            fg = plane > 0
            np.maximum.at(acc["max_i"], plane[fg], values[fg])

    def columns(self, voxel_size: np.ndarray) -> dict[str, np.ndarray]:
        acc = self.acc
        ids = np.flatnonzero(acc["count"][1:] > 0) + 1
        count = acc["count"][ids]
        columns: dict[str, np.ndarray] = {"label": ids.astype(np.int64)}
        for axis, a in enumerate(_AXES):
            columns[f"centroid-{axis}"] = acc[f"sum_{a}"][ids] / count
        for axis, a in enumerate(_AXES):
            columns[f"centroid_{a}_um"] = columns[f"centroid-{axis}"] * voxel_size[axis]
        columns["area"] = count.astype(np.int64)
        columns["volume_um3"] = count * float(np.prod(voxel_size))
        columns["intensity_mean"] = acc["sum_i"][ids] / count
        columns["intensity_max"] = acc["max_i"][ids]
        for k, (key, end) in enumerate((("min", 0), ("max", 1))):
            for axis, a in enumerate(_AXES):  # regionprops' bbox: the max is exclusive
                columns[f"bbox-{3 * k + axis}"] = acc[f"{key}_{a}"][ids].astype(np.int64) + end
        return columns


def _summary(
    table: CellTable, shape: Sequence[int], voxel_size: Sequence[float] | None
) -> dict[str, Any]:
    vs = np.asarray(voxel_size if voxel_size else (1.0, 1.0, 1.0), dtype=np.float64)
    volumes = table.columns["volume_um3"]
    total_um3 = float(np.prod(shape) * np.prod(vs))

    def stat(fn) -> float:
        return float(fn(volumes)) if len(volumes) else 0.0

    return {
        "cells": len(table),
        "volume_um3": total_um3,
        "density_per_mm3": len(table) / (total_um3 * 1e-9) if total_um3 else 0.0,
        "voxel_size_um": list(vs) if voxel_size else None,
        "cell_volume_um3": {
            "mean": stat(np.mean),
            "median": stat(np.median),
            "q25": stat(lambda v: np.percentile(v, 25)),
            "q75": stat(lambda v: np.percentile(v, 75)),
            "min": stat(np.min),
            "max": stat(np.max),
        },
        "units": "µm" if voxel_size else "voxels",
    }


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
    acc = _Accumulator()
    for core in tiles(shape, block):
        lab = np.asarray(labels[core])
        if lab.max() == 0:
            continue
        acc.add(lab, np.asarray(image[core], dtype=np.float64), [c.start for c in core])
    table = CellTable(acc.columns(vs))
    return table, _summary(table, shape, voxel_size)


def write_stats_csv(
    path: str | os.PathLike, rows: Sequence[dict[str, Any]], overwrite: bool
) -> Path:
    """Write per-cell rows as CSV atomically (one row at a time: a CellTable never becomes a
    list of dicts)."""
    target = check_output(path, overwrite)
    if isinstance(rows, CellTable) and rows.columns:
        fields = list(rows.columns)  # the header even for no cell
    else:
        fields = list(rows[0].keys()) if len(rows) else ["label"]
    with atomic_output(target) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return target
