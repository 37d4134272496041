"""Block geometry and the ownership rule, with hand-made cases."""

from __future__ import annotations

import numpy as np

from cellcut.blocks import Block, blocks, grow, inner_faces, owned_objects, tiles


def test_tiles_partition_the_volume():
    shape = (5, 7, 3)
    count = np.zeros(shape, int)
    for region in tiles(shape, (2, 3, 3)):
        count[region] += 1
    assert (count == 1).all()


def test_blocks_grow_and_clip_and_know_their_core():
    grid = blocks((10, 10, 10), (4, 4, 4), (2, 2, 2))
    assert len(grid) == 27
    first, middle = grid[0], grid[13]
    assert first.outer == (slice(0, 6),) * 3 and first.inner == (slice(0, 4),) * 3
    assert middle.core == (slice(4, 8),) * 3 and middle.outer == (slice(2, 10),) * 3
    assert middle.inner == (slice(2, 6),) * 3 and middle.origin == (2, 2, 2)
    assert grow((slice(0, 2), slice(8, 10), slice(3, 4)), (1, 1, 1), (10, 10, 10)) == (
        slice(0, 3),
        slice(7, 10),
        slice(2, 5),
    )
    assert inner_faces(middle.outer, (10, 10, 10)) == [(0, 0), (1, 0), (2, 0)]


def test_ownership_by_centroid_and_uncut():
    shape = (1, 1, 12)
    whole = (slice(0, 1), slice(0, 1))
    blk = Block(core=(*whole, slice(4, 8)), outer=(*whole, slice(2, 10)))
    labels = np.array([[[1, 0, 0, 2, 2, 0, 3, 0]]])  # outer x 2..9
    centroid_x = np.array([0.0, 0.0, 3.5, 6.0])  # label 1 at x=2, 2 at 5.5, 3 at 8 (outer coords)
    zeros = np.zeros(4)
    own = owned_objects(labels, [zeros, zeros, centroid_x], blk, shape)
    # 0: background; 1 touches the outer face inside the volume (cut); 2: centroid in the core;
    # 3: centroid beyond the core
    assert own.tolist() == [False, False, True, False]
