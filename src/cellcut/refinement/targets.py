"""Training targets for the supervised second stage, from a W-Net's instances.

Every voxel gets one of three classes (:data:`cellcut.model.REFINED_CLASSES`) or "ignore":

- **interior** (2): inside a pseudo-instance, not on its surface;
- **boundary** (1): the instance's own surface voxels (neighbours of another label or of the
  background along the axes of :func:`cellcut.postprocess.boundary_axes`: all three, or not z
  where the nuclei are only a few z-steps thick), so that touching nuclei are separated by a
  boundary on each side;
- **background** (0): the rest;
- **ignore** (:data:`IGNORE`): what the W-Net was unsure of, which the loss skips rather than
  learns: voxels whose foreground probability lies in the uncertain band, the one-voxel shell
  just outside each instance along the same axes (where a pseudo-outline is least precise),
  and the whole of doubtful instances (:func:`doubtful_objects`: far smaller or larger than
  the typical one, likely specks or merged clusters) with their shell.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from cellcut.postprocess import boundary_axes, cross, label_sizes

BACKGROUND, BOUNDARY, INTERIOR = 0, 1, 2
IGNORE = 255
"""The target value the loss skips."""

DOUBTFUL_SIZE_RATIO = 4.0
"""An instance more than this many times smaller or larger (volume) than the typical one
(the median) is doubtful."""


def doubtful_objects(labels: np.ndarray, ratio: float = DOUBTFUL_SIZE_RATIO) -> np.ndarray:
    """Ids of instances whose volume is more than ``ratio`` times off the median volume."""
    sizes = label_sizes(labels)[1:]
    ids = np.flatnonzero(sizes) + 1
    if len(ids) < 3:
        return np.zeros(0, dtype=np.int64)
    volumes = sizes[ids - 1].astype(float)
    typical = float(np.median(volumes))
    off = (volumes > ratio * typical) | (volumes < typical / ratio)
    return ids[off]


def inner_boundary(labels: np.ndarray, axes: Sequence[bool] = (True, True, True)) -> np.ndarray:
    """Voxels of an instance with a neighbour along ``axes`` of another value (label or
    background)."""
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, dtype=bool)
    for axis in [a for a in range(lab.ndim) if axes[a]]:
        lo = [slice(None)] * lab.ndim
        hi = [slice(None)] * lab.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        differ = lab[tuple(lo)] != lab[tuple(hi)]
        edge[tuple(lo)] |= differ
        edge[tuple(hi)] |= differ
    return edge & (lab > 0)


def refine_targets(
    labels: np.ndarray,
    probability: np.ndarray | None = None,
    *,
    uncertain: Sequence[float] | None = (0.3, 0.7),
    shell: bool = True,
    doubtful: Sequence[int] | np.ndarray | None = None,
    voxel_size: Sequence[float] | None = None,
    radius: float | None = None,
) -> np.ndarray:
    """(z, y, x) uint8 targets: 0 background, 1 boundary, 2 interior, :data:`IGNORE`.

    Parameters
    ----------
    labels
        Instance labels (0: background), e.g. a W-Net's segmentation.
    probability
        The foreground probability the labels came from; voxels inside the ``uncertain``
        band (low, high) are ignored. None: no voxel is uncertain.
    shell
        Ignore the one-voxel shell just outside every instance.
    doubtful
        Instance ids to ignore whole, with their shell; None: :func:`doubtful_objects`.
    voxel_size, radius
        (z, y, x) µm and the typical nucleus radius, µm: set the axes of boundaries and shells
        (:func:`cellcut.postprocess.boundary_axes`); None: all three.
    """
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"expected (z, y, x) labels, got shape {lab.shape}")
    fg = lab > 0
    target = np.full(lab.shape, BACKGROUND, dtype=np.uint8)
    target[fg] = INTERIOR
    axes = boundary_axes(voxel_size, radius)
    target[inner_boundary(lab, axes)] = BOUNDARY
    step = cross(axes)
    if shell:
        target[ndi.binary_dilation(fg, step) & ~fg] = IGNORE
    ids = doubtful_objects(lab) if doubtful is None else np.asarray(doubtful, dtype=np.int64)
    if len(ids):
        lut = np.zeros(int(lab.max()) + 1, dtype=bool)
        lut[ids[(ids > 0) & (ids < len(lut))]] = True
        bad = lut[lab]
        target[ndi.binary_dilation(bad, step) if shell else bad] = IGNORE
    if probability is not None and uncertain is not None:
        low, high = uncertain
        p = np.asarray(probability)
        target[(p > low) & (p < high)] = IGNORE
    return target
