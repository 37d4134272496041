"""Block geometry of out-of-core work: tiles of a volume, their halos, and who owns an object.

A large volume is processed as a grid of :class:`Block` s. Each block has a *core* (the tiles
partition the volume: every voxel is in exactly one core) and an *outer* region, the core grown
by a halo and clipped to the volume, which is what is read and computed on so that the core
sees the same context as it would in one piece.

The ownership rule (:func:`owned_objects`): an object labelled in a block's outer region
belongs to that block when its centroid lies in the core and it does not touch a face of the
outer region that lies inside the volume (such an object may continue beyond the halo, so it
is cut). Every object whose neighbourhood fits in the halo is owned by exactly one block, and
is written whole from there.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

Region = tuple[slice, slice, slice]


class Block(NamedTuple):
    """One tile of a volume: its ``core`` and the ``outer`` region read around it."""

    core: Region
    outer: Region

    @property
    def inner(self) -> Region:
        """The core in the coordinates of the outer region (where it sits in what was read)."""
        return tuple(
            slice(c.start - o.start, c.stop - o.start)
            for c, o in zip(self.core, self.outer, strict=True)
        )  # type: ignore[return-value]

    @property
    def origin(self) -> tuple[int, int, int]:
        """Volume coordinates of the outer region's first voxel."""
        return tuple(s.start for s in self.outer)  # type: ignore[return-value]


def tiles(shape: Sequence[int], size: Sequence[int]) -> Iterator[Region]:
    """Regions of at most ``size`` voxels per axis that partition a volume of ``shape``."""
    ranges = [range(0, s, b) for s, b in zip(shape, size, strict=True)]
    for start in itertools.product(*ranges):
        yield tuple(slice(a, min(a + b, s)) for a, b, s in zip(start, size, shape, strict=True))  # type: ignore[misc]


def grow(region: Region, halo: Sequence[int], shape: Sequence[int]) -> Region:
    """``region`` grown by ``halo`` voxels on every side, clipped to the volume."""
    return tuple(
        slice(max(0, s.start - h), min(n, s.stop + h))
        for s, h, n in zip(region, halo, shape, strict=True)
    )  # type: ignore[return-value]


def blocks(shape: Sequence[int], size: Sequence[int], halo: Sequence[int]) -> list[Block]:
    """The grid of blocks of ``size`` voxels over ``shape``, each with ``halo`` around it."""
    shape = tuple(int(s) for s in shape)
    return [Block(core, grow(core, halo, shape)) for core in tiles(shape, size)]


def inner_faces(region: Region, shape: Sequence[int]) -> list[tuple[int, int]]:
    """Faces of ``region`` that lie inside the volume, as (axis, 0 for start | -1 for stop)."""
    return [
        (axis, end)
        for axis, part in enumerate(region)
        for end, inside in ((0, part.start > 0), (-1, part.stop < shape[axis]))
        if inside
    ]


def owned_objects(
    labels: np.ndarray, centroids: Sequence[np.ndarray], block: Block, shape: Sequence[int]
) -> np.ndarray:
    """Which labels of ``labels`` (the block's outer region) the block owns; see the module.

    ``centroids`` are per-label arrays (z, y, x) in the outer region's coordinates, indexed
    by label. Returns a boolean array indexed by label (label 0, the background, is never
    owned).
    """
    own = np.ones(len(centroids[0]), dtype=bool)
    own[0] = False
    for axis, part in enumerate(block.inner):
        c = centroids[axis]
        own &= (c >= part.start - 0.5) & (c < part.stop - 0.5)
    for axis, end in inner_faces(block.outer, shape):
        own[np.unique(np.take(labels, end, axis=axis))] = False
    return own
