"""Instance labels of a foreground probability, block by block (see :mod:`cellcut.blocks`).

Each block is labelled on its core plus a halo at least the diameter of the largest cell, and
keeps the objects it owns (centroid in the core, not cut by the halo's edge): as long as a cell
and its neighbourhood fit in the halo, the result equals labelling the volume in one piece
(tested), and no cell is cut at a seam.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from cellcut.blocks import Block, blocks, inner_faces, owned_objects, tiles
from cellcut.fingerprint import Fingerprint
from cellcut.postprocess import (
    OUTLINE_SIGMA,
    auto_spot_sigma,
    choose_instances,
    filter_sizes,
    instances,
    object_radii,
    relabel,
    sigma_voxels,
    split_necks,
    trim_halo,
)
from cellcut.runtime import release_free_memory
from cellcut.segmentation.statistics import centroids, label_moments

Progress = Any  # Callable[[str, int, int], None]

INSTANCE_HALO_UM = 32.0
"""Default instance halo, µm: the diameter of the largest nuclei expected (brain and embryo
nuclei are 5-25 µm across), so that any of them lies whole in the block that owns it."""

SPOT_SIGMA_WINDOW = 160
SPOT_SIGMA_MAX_WINDOWS = 8
"""Windows (voxels per axis, how many) on which ``spot_sigma="auto"`` measures the nuclei."""
IMAGE_RADIUS_CAP = 2.0
""":func:`object_scale`: the image's radius counts for at most this many times the model's."""


@dataclass
class Labelling:
    """What block-wise labelling made: the object count and the settings it used."""

    n_objects: int
    spot_sigma: float | None = None
    median_radius: float | None = None
    min_volume: float = 0.0
    min_distance: float | None = None
    chosen: dict[str, int] = field(default_factory=dict)  # method "auto": blocks per method
    object_radius: float | None = None  # the scale its size floor and seed distance came from
    outline_sigma: float | None = None
    trimmed: bool = False  # each object trimmed to the image's half height (trim_halo)


def object_scale(image_radius: float | None, probability_radius: float | None) -> float | None:
    """The typical nucleus radius the instance step works at, from two estimates with
    opposite biases: the image's own (:attr:`cellcut.fingerprint.Fingerprint.object_radius`,
    Otsu's bright class of the raw image, which merges touching nuclei and, on an image with a
    dim tissue body around them, measures the body) and the model's (the median inscribed
    radius of its smoothed foreground, :func:`estimate_spot_sigma`, which fragments where the
    map is speckled or nuclei are cut). Their geometric mean, the image's capped at
    :data:`IMAGE_RADIUS_CAP` times the model's; either alone when the other is missing."""
    if image_radius is None or probability_radius is None:
        return probability_radius if image_radius is None else image_radius
    capped = min(image_radius, IMAGE_RADIUS_CAP * probability_radius)
    return math.sqrt(capped * probability_radius)


def instance_scale(
    probability: Any,
    voxel_size: Sequence[float] | None,
    fingerprint: Fingerprint,
    outline_sigma: float,
) -> tuple[Fingerprint, float, float | None]:
    """The scale the instance step works at: ``fingerprint`` with its radius replaced by
    :func:`object_scale` of its own and the model foreground's (measured on ``probability``,
    blurred by ``outline_sigma``), plus that measurement's (spot sigma, median radius)."""
    spot_sigma, radius = estimate_spot_sigma(probability, voxel_size, outline_sigma)
    scale = replace(fingerprint, object_radius=object_scale(fingerprint.object_radius, radius))
    return scale, spot_sigma, radius


def instance_halo(
    window: Sequence[int], voxel_size: Sequence[float] | None
) -> tuple[int, int, int]:
    """The default halo: :data:`INSTANCE_HALO_UM` in voxels, and at least half a window."""
    spacing = voxel_size if voxel_size else (1.0, 1.0, 1.0)
    return tuple(
        max(w // 2, math.ceil(INSTANCE_HALO_UM / v)) for w, v in zip(window, spacing, strict=True)
    )  # type: ignore[return-value]


def estimate_spot_sigma(
    probability: Any,
    voxel_size: Sequence[float] | None,
    outline_sigma: float = OUTLINE_SIGMA,
    window: int = SPOT_SIGMA_WINDOW,
    max_windows: int = SPOT_SIGMA_MAX_WINDOWS,
) -> tuple[float, float | None]:
    """Voronoi-Otsu's ``spot_sigma="auto"`` for a whole (possibly out-of-core) volume.

    Reads up to ``max_windows`` windows of ``window``³ voxels spread over the volume (the whole
    volume when it is smaller), measures the inscribed radius of every object not cut by a
    window face (:func:`cellcut.postprocess.object_radii`) and returns (spot sigma, median
    radius). The windows depend only on the volume's shape, so every block of a block-wise
    labelling, whatever the block size, uses the same blur.
    """
    shape = tuple(int(s) for s in probability.shape)
    windows = list(tiles(shape, [min(window, s) for s in shape]))
    picks = np.linspace(0, len(windows) - 1, min(max_windows, len(windows))).round().astype(int)
    radii = []
    for region in [windows[i] for i in sorted(set(picks.tolist()))]:
        prob = np.asarray(probability[region], dtype=np.float32)
        mask = ndi.gaussian_filter(prob, sigma_voxels(outline_sigma, voxel_size)) > 0.5
        radii.append(object_radii(mask, voxel_size, open_faces=inner_faces(region, shape))[0])
    return auto_spot_sigma(np.concatenate(radii), voxel_size)


def label_blocks(
    probability: Any,
    out: Any,
    *,
    method: str,
    voxel_size: Sequence[float] | None,
    block: Sequence[int],
    halo: Sequence[int],
    progress: Progress | None = None,
    interior: Any | None = None,
    image: Any | None = None,
    trim_radius: float | None = None,
    **options: Any,
) -> Labelling:
    """Instance labels of a probability map written into ``out`` (zero-initialised), block by
    block; ``options`` go to :func:`cellcut.postprocess.instances`. ``interior``: a refined
    model's interior probability, which ``auto`` and ``seeded`` grow over the foreground.
    ``image`` and ``trim_radius`` (the typical nucleus radius): each block's objects trimmed
    to the image (:func:`cellcut.postprocess.trim_halo`) before the block keeps those it owns.

    Voronoi-Otsu's ``spot_sigma="auto"`` (the default) is measured once for the whole volume
    (:func:`estimate_spot_sigma`): one blur for every block, or block-wise and one-piece
    labelling would differ.
    """
    shape = tuple(int(s) for s in probability.shape)
    result = Labelling(0)
    options = resolve_spot_sigma(probability, method, voxel_size, interior, options, result)
    grid = blocks(shape, block, halo)
    next_id = 1
    for i, blk in enumerate(grid):
        local, n, chosen = label_block(
            probability, blk, shape, method=method, voxel_size=voxel_size, interior=interior,
            image=image, trim_radius=trim_radius, **options,
        )  # fmt: skip
        if method in ("auto", "seeded"):
            result.chosen[chosen] = result.chosen.get(chosen, 0) + 1
        if n:
            local = offset_labels(local, next_id - 1)
            next_id += n
            target = np.asarray(out[blk.outer])
            np.copyto(target, local, where=local > 0)
            out[blk.outer] = target
        del local
        # freed block buffers of varying sizes otherwise fragment the heap, and the peak would
        # grow with the number of blocks (measured: +33 MB from 64 to 192 slices of 512²)
        release_free_memory()
        if progress is not None:
            progress("instances", i + 1, len(grid))
    result.n_objects = next_id - 1
    result.trimmed = image is not None and trim_radius is not None
    return result


def offset_labels(local: np.ndarray, offset: int) -> np.ndarray:
    """``local`` (int32, ids 1..n) with every id raised by ``offset``, in place."""
    lut = np.arange(int(local.max()) + 1, dtype=np.int32) + np.int32(offset)
    lut[0] = 0
    return relabel(lut, local, in_place=True)


def resolve_spot_sigma(
    probability: Any,
    method: str,
    voxel_size: Sequence[float] | None,
    interior: Any | None,
    options: dict[str, Any],
    result: Labelling,
) -> dict[str, Any]:
    """``options`` with Voronoi-Otsu's ``spot_sigma="auto"`` measured once for the whole
    volume (:func:`estimate_spot_sigma`), recorded in ``result``: one blur for every block, or
    block-wise and one-piece labelling would differ."""
    options = dict(options)
    seeded = interior is not None and method in ("auto", "seeded")
    if method in ("voronoi-otsu", "auto") and not seeded:
        if options.get("spot_sigma", "auto") == "auto":
            options["spot_sigma"], result.median_radius = estimate_spot_sigma(
                probability, voxel_size, options.get("outline_sigma", OUTLINE_SIGMA)
            )
        result.spot_sigma = float(options["spot_sigma"])
    return options


RESPLIT_METHODS = ("voronoi-otsu", "watershed", "seeded")
"""The methods whose trimmed objects :func:`resplit` splits again (``connected`` asks for no
split). A refined model's (``seeded``) too: its interiors on small nuclei also merge where the
halo fills a neck (small-nuclei regime, W-Net 0.66 / 0.71 against refined 0.60 / 0.61 without
this, 0.65 / 0.66 with it; README, *The second stage*)."""


def resplit(local: np.ndarray, voxel_size: Sequence[float] | None, **options: Any) -> np.ndarray:
    """Trimmed objects split again at the necks the trim opened
    (:func:`cellcut.postprocess.split_necks`, seeds ``min_distance`` apart), then the size
    filter of ``options`` (``min_volume``, ``max_volume``) once more, in ``local`` itself: a
    piece, or a trimmed object, under the speck floor goes (measured against keeping an
    object whole where a piece would be a speck: mean F1 0.847 against 0.846 on the 40
    regime volumes and the embryo, dim nuclei 0.78-0.80 against 0.77-0.79)."""
    local = split_necks(local, options.get("min_distance", 2.0), voxel_size, overwrite=True)
    return filter_sizes(
        local, options.get("min_volume", 0.0), options.get("max_volume"), voxel_size, True
    )


def label_block(
    probability: Any,
    blk: Block,
    shape: Sequence[int],
    *,
    method: str,
    voxel_size: Sequence[float] | None,
    interior: Any | None = None,
    image: Any | None = None,
    trim_radius: float | None = None,
    **options: Any,
) -> tuple[np.ndarray, int, str]:
    """One block's instances over its outer region: the objects it owns
    (:func:`cellcut.blocks.owned_objects`) numbered 1..n in the order of the local labelling,
    the others 0; with ``image`` and ``trim_radius``, trimmed to the image first
    (:func:`cellcut.postprocess.trim_halo`) and, for :data:`RESPLIT_METHODS`, the objects it
    owns split again (:func:`resplit`). Returns (labels, n, the method used)."""
    prob = np.asarray(probability[blk.outer], dtype=np.float32)
    if interior is not None and method in ("auto", "seeded"):
        inner = np.asarray(interior[blk.outer], dtype=np.float32)
        local = instances(
            prob, "seeded", voxel_size=voxel_size, probability=True, interior=inner, **options
        )
        chosen = "seeded"
    elif method == "auto":
        local, chosen = choose_instances(prob, voxel_size=voxel_size, probability=True, **options)
    else:
        local = instances(prob, method, voxel_size=voxel_size, probability=True, **options)
        chosen = method
    del prob
    n = int(local.max())
    if not n:
        return local, 0, chosen
    if image is not None and trim_radius is not None:  # a copy of the block, never the input
        read = np.array if isinstance(image, np.ndarray) else np.asarray
        pixels = read(image[blk.outer], dtype=np.float32)
        local = trim_halo(local, pixels, trim_radius, voxel_size, overwrite=True)
        del pixels
    own = owned_objects(local, centroids(label_moments(local)), blk, shape)
    lut = np.zeros(n + 1, dtype=np.int32)
    kept = np.flatnonzero(own)
    lut[kept] = np.arange(1, len(kept) + 1)
    local = relabel(lut, local, in_place=True)
    if trim_radius is not None and image is not None and chosen in RESPLIT_METHODS:
        # after the block chose its objects: each is whole, so its pieces are the same in
        # whichever block owns it, and every piece stays with the block that owns the object
        local = resplit(local, voxel_size, **options)
        return local, int(local.max()), chosen
    return local, len(kept), chosen
