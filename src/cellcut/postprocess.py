"""From a foreground probability (or any image) to instance labels, one id per nucleus.

Methods (all CPU, scipy/scikit-image), anisotropic voxel sizes respected throughout (sigmas and
sizes are in physical units, µm, when a voxel size is given, in voxels otherwise):

``voronoi-otsu``
    The classic of the field (as in clEsperanto's ``voronoi_otsu_labeling``): blur with
    ``spot_sigma`` and take local maxima as seeds; blur with ``outline_sigma`` and threshold
    (Otsu, or 0.5 for a probability) for the mask; split the mask between the seeds (Voronoi
    cells, computed as a watershed of the blurred image from the seeds).
``watershed``
    Distance transform of the mask (in physical units), its maxima at least ``min_distance``
    apart as seeds, watershed of the negated distance.
``connected``
    Connected components of the mask (26-connectivity).
``auto``
    Both ``voronoi-otsu`` and ``watershed``, keeping the labelling whose object volumes agree
    best (the smaller median absolute deviation of log-volume, after the size filter): nuclei
    of one image have similar sizes, and both failures widen the spread, Voronoi-Otsu's by
    merging touching nuclei into clusters, the distance watershed's by cutting elongated or
    irregular nuclei into fragments. With 20 objects or more the watershed is kept unless
    Voronoi-Otsu's spread is smaller by over a fifth; with fewer, the smaller spread decides and
    ties keep Voronoi-Otsu. (:func:`choose_instances` says which; the README has the figures.)
``seeded``
    For a refined model (``cellcut refine``), which predicts each nucleus' interior apart
    from its one-voxel boundary: the interiors, split at their necks like ``watershed``
    splits a mask, each grown back by that voxel within the foreground and on through the
    voxels the model is sure are foreground (:data:`SURE_FOREGROUND`; :func:`seeded_watershed`).
    With a refined model, ``auto`` means ``seeded``.

``spot_sigma="auto"`` (the default) sets Voronoi-Otsu's seed blur to half the typical nucleus
radius: the median, over the mask's connected components of at least 8 voxels, of the largest
inscribed sphere's radius (the maximum of the physical distance transform; touching nuclei
merged in the mask still give one nucleus' radius). A fixed blur suits only one
size: too small splits large nuclei into fragments, too large merges small neighbours (the
README has the measured figures).

The model's outline can be wider than the nucleus along a coarse axis: a point-spread function
long in z blurs a nucleus two z-steps tall over four, and the model takes the blur for
nucleus. Where the typical nucleus radius spans fewer than :data:`HALO_TRIM_STEPS` voxels of
the coarsest axis (``trim_halo="auto"``), :func:`trim_halo` keeps of each object the voxels at
or above half its height over its surroundings in the image (the edge of a blurred object),
and :func:`split_necks` then splits each trimmed object at the necks the trim opened (every
method but ``connected``).

Small objects (``min_volume``) and oversized ones (``max_volume``, e.g. bright artifacts) are
removed and the labels renumbered 1..n.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
from scipy import ndimage as ndi

Method = Literal["auto", "voronoi-otsu", "watershed", "connected", "seeded"]
METHODS: tuple[str, ...] = get_args(Method)


def sigma_voxels(sigma: float, voxel_size: Sequence[float] | None) -> tuple[float, ...]:
    """A blur given in µm (voxels when there is no voxel size) as per-axis voxels."""
    vs = voxel_size or (1.0, 1.0, 1.0)
    return tuple(sigma / v for v in vs)


def threshold(image: np.ndarray, probability: bool) -> float:
    """0.5 for a probability map, Otsu's threshold otherwise."""
    if probability:
        return 0.5
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(image))


def _local_maxima(
    image: np.ndarray, mask: np.ndarray, min_distance_vox: Sequence[int]
) -> np.ndarray:
    footprint = np.ones([2 * d + 1 for d in min_distance_vox], dtype=bool)
    peaks = (ndi.maximum_filter(image, footprint=footprint, mode="nearest") == image) & mask
    markers, _ = ndi.label(peaks, structure=np.ones((3, 3, 3)))  # plateaus -> one seed
    return markers


def distance_transform(mask: np.ndarray, sampling: Sequence[float] | None = None) -> np.ndarray:
    """Euclidean distance of each voxel of ``mask`` to the nearest background voxel, float32,
    in physical units with ``sampling``: scipy's transform, computed from its feature indices
    one axis at a time (~20 bytes per voxel at the peak instead of scipy's ~60)."""
    m = np.asarray(mask, dtype=bool)
    spacing = tuple(sampling) if sampling is not None else (1.0,) * m.ndim
    nearest = ndi.distance_transform_edt(
        m, sampling=spacing, return_distances=False, return_indices=True
    )
    dist = np.zeros(m.shape, dtype=np.float32)
    step = np.empty(m.shape, dtype=np.float32)
    for axis, v in enumerate(spacing):
        position = np.arange(m.shape[axis], dtype=np.float32).reshape(
            [-1 if a == axis else 1 for a in range(m.ndim)]
        )
        np.subtract(nearest[axis], position, out=step, casting="unsafe")
        step *= np.float32(v)
        dist += step * step
    del nearest, step
    return np.sqrt(dist, out=dist)


SPOT_RADIUS_FRACTION = 0.5  # spot sigma = this × the median inscribed radius
DEFAULT_SPOT_SIGMA = 2.0  # µm, when there is nothing to measure
OUTLINE_SIGMA = 1.0  # µm, Voronoi-Otsu's mask blur (the most outline_sigma="auto" uses)


def object_radii(
    mask: np.ndarray,
    voxel_size: Sequence[float] | None = None,
    *,
    min_voxels: int = 8,
    open_faces: Sequence[tuple[int, int]] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Largest inscribed radius (µm, else voxels) and size (voxels) of each connected component
    of ``mask``.

    Components under ``min_voxels`` are skipped, as are those touching any of ``open_faces``
    ((axis, 0 or -1) pairs: faces where the mask is a crop of a larger volume, so the object
    and its distance transform are cut).
    """
    m = np.asarray(mask, dtype=bool)
    labels, n = ndi.label(m, structure=np.ones((3, 3, 3)))
    if n == 0:
        return np.zeros(0), np.zeros(0)
    sizes = label_sizes(labels, n + 1)[1:].astype(np.float64)
    keep = sizes >= min_voxels
    for axis, end in open_faces:
        touching = np.unique(np.take(labels, end, axis=axis))
        keep[touching[touching > 0] - 1] = False
    # the distance transform of each object in its bounding box, padded with background except
    # at the array's faces: the same maxima as one transform of the whole mask (any voxel next
    # to an object but outside it is background), at a fraction of the memory (scipy's
    # transform holds ~50 bytes per voxel of its input)
    radii = np.zeros(n)
    for i, box in enumerate(ndi.find_objects(labels)):
        if keep[i] and box is not None:
            pad = [(int(b.start > 0), int(b.stop < s)) for b, s in zip(box, m.shape, strict=True)]
            own = np.pad(labels[box] == i + 1, pad)
            radii[i] = float(distance_transform(own, voxel_size).max())
    return radii[keep], sizes[keep]


SPECK_SIZE_FRACTION = 0.1
"""Components smaller than this share of the typical component size are specks."""


def typical_radius(radii: np.ndarray, sizes: np.ndarray) -> float | None:
    """The median radius of the components that are not specks.

    The typical component size is the volume-weighted median size (the size of the component
    holding the median voxel), which the many small specks of a noisy mask barely move;
    components under :data:`SPECK_SIZE_FRACTION` of it are left out, and each remaining one
    counts once (weighting radii by volume instead would favour clusters of merged nuclei).
    """
    if len(radii) == 0:
        return None
    sizes = np.asarray(sizes, dtype=np.float64)
    order = np.argsort(sizes)
    cumulative = np.cumsum(sizes[order])
    typical = sizes[order][np.searchsorted(cumulative, cumulative[-1] / 2)]
    return float(np.median(np.asarray(radii)[sizes >= SPECK_SIZE_FRACTION * typical]))


def auto_spot_sigma(
    radii: np.ndarray, voxel_size: Sequence[float] | None = None
) -> tuple[float, float | None]:
    """(spot sigma, median radius) from :func:`object_radii`'s radii; the default when none.

    The plain median over components (of at least 8 voxels): on the regime suite, leaving out
    specks relative to the typical component (:func:`typical_radius`) favoured merged clusters
    and cost classical Voronoi-Otsu 0.64 -> 0.15 F1 on packed nuclei.
    """
    if len(radii) == 0:
        return DEFAULT_SPOT_SIGMA, None
    radius = float(np.median(radii))
    floor = 0.5 * min(voxel_size) if voxel_size else 0.5
    return max(SPOT_RADIUS_FRACTION * radius, floor), radius


def voronoi_otsu(
    image: np.ndarray,
    spot_sigma: float | Literal["auto"] = "auto",
    outline_sigma: float = OUTLINE_SIGMA,
    voxel_size: Sequence[float] | None = None,
    probability: bool = False,
) -> np.ndarray:
    """Voronoi-Otsu labelling of ``image`` (raw intensities, or a foreground probability)."""
    from skimage.segmentation import watershed

    img = np.asarray(image, dtype=np.float32)
    outline = ndi.gaussian_filter(img, sigma_voxels(outline_sigma, voxel_size))
    mask = outline > threshold(outline, probability)
    if spot_sigma == "auto":
        spot_sigma, _ = auto_spot_sigma(object_radii(mask, voxel_size)[0], voxel_size)
    spots = ndi.gaussian_filter(img, sigma_voxels(spot_sigma, voxel_size))
    markers = _local_maxima(spots, mask, [1, 1, 1])
    return watershed(-spots, markers, mask=mask).astype(np.int32)


DISTANCE_SMOOTHING = 0.3
""":func:`distance_watershed` blurs the distance transform by this fraction of ``min_distance``
(µm, or voxels): with the automatic seed distance (half the typical radius) 0.15 of the
radius, enough to merge the ridges a rough outline leaves and too little to fill the neck
between two touching nuclei. It scales with the nuclei, not with the voxel: the earlier blur
(half the finest voxel plus 0.5 µm) was 37% of the radius at the plant-nuclei regime's
0.127 µm voxels and merged touching nuclei there. Chosen on the regime suite's seeds 0-3
among 0.1, 0.2 and 0.3 (README, *The instance step*)."""


def distance_watershed(
    mask: np.ndarray,
    min_distance: float = 2.0,
    voxel_size: Sequence[float] | None = None,
) -> np.ndarray:
    """Split touching objects of a mask at the necks of its distance transform (blurred by
    :data:`DISTANCE_SMOOTHING` of ``min_distance``), seeds ``min_distance`` apart."""
    from skimage.segmentation import watershed

    m = np.asarray(mask).astype(bool)
    vs = voxel_size or (1.0, 1.0, 1.0)
    dist = distance_transform(m, vs)
    blur = DISTANCE_SMOOTHING * min_distance
    if blur > 0:
        dist = ndi.gaussian_filter(dist, sigma_voxels(blur, voxel_size))
    radius = [max(1, round(min_distance / v)) for v in vs]
    markers = _local_maxima(dist, m, radius)
    return watershed(-dist, markers, mask=m).astype(np.int32)


MIN_BOUNDARY_VOXELS = 4.0
"""A refined model's one-voxel boundary is drawn along an axis only where the typical nucleus
radius spans this many voxels of it (and always along the finest axes): a boundary one coarse
z-step thick would take most of a thin nucleus (on the small-nuclei regime, 3 µm z-steps and
radius 2.5-3 µm, 98% of the nuclei's voxels instead of 62%)."""


def boundary_axes(
    voxel_size: Sequence[float] | None, radius: float | None = None
) -> tuple[bool, bool, bool]:
    """The axes along which a refined model's boundary is drawn (:data:`MIN_BOUNDARY_VOXELS`),
    given the typical nucleus radius (µm); all three without a voxel size or a radius."""
    if not voxel_size or not radius:
        return (True, True, True)
    finest = min(voxel_size)
    axes = tuple(v == finest or radius / v >= MIN_BOUNDARY_VOXELS for v in voxel_size)
    return axes  # type: ignore[return-value]


def cross(axes: Sequence[bool]) -> np.ndarray:
    """The 3×3×3 structuring element of the centre and its neighbours along ``axes``."""
    se = np.zeros((3, 3, 3), dtype=bool)
    se[1, 1, 1] = True
    for axis, used in enumerate(axes):
        if used:
            index = [1, 1, 1]
            for i in (0, 2):
                index[axis] = i
                se[tuple(index)] = True
    return se


SURE_FOREGROUND = 0.7
""":func:`seeded_watershed` grows interiors past their one-voxel boundary through voxels of at
least this foreground probability: the upper edge of the band that refine's targets ignore
(:mod:`cellcut.refinement.targets`), where the W-Net was sure."""


def seeded_watershed(
    foreground: np.ndarray,
    interior: np.ndarray,
    min_distance: float = 2.0,
    voxel_size: Sequence[float] | None = None,
    min_seed: float = 0.0,
    radius: float | None = None,
    sure: float | None = SURE_FOREGROUND,
) -> np.ndarray:
    """Instances of a refined model's output, the inverse of its targets
    (:mod:`cellcut.refinement.targets`: a nucleus is its interior plus a one-voxel boundary).

    The interior mask (``interior > 0.5``) is split at its necks by :func:`distance_watershed`
    (seeds ``min_distance`` apart; seeds under ``min_seed`` µm³, or voxels, dropped); each
    interior then grows by one voxel (along :func:`boundary_axes` of the typical ``radius``,
    µm, as the targets were drawn) into ``foreground > 0.5``, and on through the voxels of
    ``foreground >= sure`` it reaches (where the model draws the boundary thicker than one
    voxel, as between packed nuclei; ``sure=None``: one voxel only), neighbours meeting where
    the interior probability is lowest; foreground components that hold no interior become
    instances of their own (nuclei too small to have one).
    """
    from skimage.segmentation import watershed

    fg = np.asarray(foreground)
    mask = fg > 0.5
    inner = np.asarray(interior, dtype=np.float32)
    seeds = distance_watershed((inner > 0.5) & mask, min_distance, voxel_size)
    seeds = filter_sizes(seeds, min_seed, None, voxel_size, in_place=True)
    step = cross(boundary_axes(voxel_size, radius))
    zone = (ndi.binary_dilation(seeds > 0, step) & mask) | (seeds > 0)
    if sure is not None:
        zone |= fg >= sure
    labels = watershed(-inner, seeds, mask=zone).astype(np.int32)
    parts = connected_components(mask)
    seeded = np.zeros(int(parts.max()) + 1, dtype=bool)
    seeded[np.unique(parts[seeds > 0])] = True
    seeded[0] = True
    lut = np.cumsum(~seeded).astype(np.int32) * (~seeded) + (~seeded) * int(labels.max())
    extra = lut[parts]
    labels[extra > 0] = extra[extra > 0]
    return labels


HALO_TRIM_STEPS = 2.5
"""``trim_halo="auto"`` trims where the typical nucleus radius spans fewer voxels than this
along the coarsest axis: there a blur halo one voxel deep is a large share of the nucleus (on
the small-nuclei regime, 3 µm z-steps and radius 2.5-3 µm, the model's objects span 3-4
z-steps for the nuclei's 1-2). Larger nuclei keep the model's outline: a halo is a thin shell
of them, and their dim parts (chromatin texture, a dim pole) are nucleus, not blur."""
TRIM_HEIGHT = 0.5
""":func:`trim_halo` keeps voxels at or above this fraction of an object's height over its
surroundings: a blurred edge lies at half the step."""
TRIM_PEAK_PERCENTILE = 90.0
"""An object's height is this percentile of the smoothed image over its voxels (the maximum
would follow noise and a few bright voxels)."""
TRIM_SMOOTHING = 0.25
""":func:`trim_halo` smooths the image by this fraction of the typical nucleus radius (shot
noise would otherwise decide single voxels)."""


def trims_halo(object_radius: float | None, voxel_size: Sequence[float] | None) -> bool:
    """Whether ``trim_halo="auto"`` trims: the typical radius (µm, voxels without a voxel size)
    spans fewer than :data:`HALO_TRIM_STEPS` voxels of the coarsest axis."""
    if not object_radius:
        return False
    return object_radius / max(voxel_size or (1.0,)) < HALO_TRIM_STEPS


def trim_halo(
    labels: np.ndarray,
    image: np.ndarray,
    radius: float,
    voxel_size: Sequence[float] | None = None,
    overwrite: bool = False,
) -> np.ndarray:
    """Trim each object of ``labels`` to the voxels where ``image`` stands at or above half
    its height over its surroundings (:data:`TRIM_HEIGHT`), holes filled (in 3D and in each
    z-plane); ids are kept.

    ``image`` is smoothed by :data:`TRIM_SMOOTHING` of the typical nucleus ``radius`` (µm, or
    voxels without a voxel size). An object's height is the :data:`TRIM_PEAK_PERCENTILE`
    percentile of the smoothed image over it; its surroundings, the median over the voxels
    that no object holds in its bounding box grown by one radius (the median outside every
    object where there are none). An object no brighter than its surroundings is kept whole,
    so no object vanishes. ``overwrite``: the result is written into ``labels`` (int32) and
    the blur into ``image`` (float32), which then hold no extra copy of the block.
    """
    labels = np.asarray(labels)
    in_place = overwrite and labels.dtype == np.int32 and labels.flags.writeable
    out = labels if in_place else np.array(labels, dtype=np.int32)
    boxes = ndi.find_objects(out)
    if not any(box is not None for box in boxes):
        return out
    vs = tuple(voxel_size) if voxel_size else (1.0, 1.0, 1.0)
    sigma = sigma_voxels(TRIM_SMOOTHING * radius, vs)
    pixels = np.asarray(image)
    if overwrite and pixels.dtype == np.float32 and pixels.flags.writeable:
        smooth = ndi.gaussian_filter(pixels, sigma, output=pixels)  # exact in place
    else:
        smooth = ndi.gaussian_filter(pixels.astype(np.float32, copy=False), sigma)
    reach = [max(1, round(radius / v)) for v in vs]
    levels = {}  # first every object's level, on the untrimmed labels; then the trim
    outside: float | None = None  # the median outside every object, when first needed
    for i, box in enumerate(boxes, start=1):
        if box is None:
            continue
        grown = tuple(
            slice(max(0, b.start - r), min(n, b.stop + r))
            for b, r, n in zip(box, reach, out.shape, strict=True)
        )
        lab, sm = out[grown], smooth[grown]
        height = np.percentile(sm[lab == i], TRIM_PEAK_PERCENTILE, method="nearest")
        free = sm[lab == 0]
        if free.size:
            around = float(np.median(free))
        else:
            if outside is None:
                rest = smooth[out == 0]
                outside = float(np.median(rest)) if rest.size else 0.0
            around = outside
        if height > around:  # else no brighter than around it: kept whole
            levels[i] = around + TRIM_HEIGHT * (height - around)
    plane = np.zeros((1, 3, 3), dtype=bool)
    plane[0, 1, :] = plane[0, :, 1] = True
    for i, level in levels.items():
        box = boxes[i - 1]
        inside = out[box] == i
        kept = inside & (smooth[box] >= level)
        kept = (ndi.binary_fill_holes(kept) | ndi.binary_fill_holes(kept, plane)) & inside
        out[box][inside & ~kept] = 0
    return out


def split_necks(
    labels: np.ndarray,
    min_distance: float = 2.0,
    voxel_size: Sequence[float] | None = None,
    overwrite: bool = False,
) -> np.ndarray:
    """Split each object of ``labels`` at its own necks (:func:`distance_watershed` of the
    object alone, seeds ``min_distance`` apart); the pieces get new ids, consecutive in the
    order of the objects. After :func:`trim_halo`: a blur halo fills the neck between
    touching nuclei in the model's mask, so they were one object when split, and the trim
    opens the neck again. ``overwrite``: written into ``labels`` (int32) itself."""
    labels = np.asarray(labels)
    in_place = overwrite and labels.dtype == np.int32 and labels.flags.writeable
    out = labels if in_place else np.array(labels, dtype=np.int32)
    boxes = ndi.find_objects(out)
    base = len(boxes)  # pieces are numbered above every old id, then moved down
    next_id = base
    for i, box in enumerate(boxes, start=1):
        if box is None:
            continue
        box = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)  # background around
        inside = out[box] == i
        pieces = distance_watershed(inside, min_distance, voxel_size)
        n = int(pieces.max())
        # a part no seed reached (its peak lies within min_distance of a bigger part's): its
        # own piece, never dropped here
        rest = inside & (pieces == 0)
        if rest.any():
            extra = connected_components(rest)
            pieces[rest] = extra[rest] + n
            n = int(pieces.max())
        out[box][inside] = pieces[inside] + next_id
        next_id += n
    np.subtract(out, base, out=out, where=out > 0)
    return out


def connected_components(mask: np.ndarray) -> np.ndarray:
    """Label the 26-connected components of a mask."""
    labels, _ = ndi.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3, 3)))
    return labels.astype(np.int32, copy=False)


def label_sizes(labels: np.ndarray, minlength: int = 0) -> np.ndarray:
    """Voxel count of every label value (index 0: background), counted plane by plane:
    ``np.bincount`` of a whole int32 block would first copy it to int64."""
    labels = np.asarray(labels)
    if labels.ndim < 2:
        return np.bincount(labels.ravel(), minlength=minlength)
    counts = np.zeros(max(int(labels.max(initial=0)) + 1, minlength), dtype=np.int64)
    for plane in labels:
        c = np.bincount(plane.ravel())
        counts[: len(c)] += c
    return counts


def filter_sizes(
    labels: np.ndarray,
    min_volume: float = 0.0,
    max_volume: float | None = None,
    voxel_size: Sequence[float] | None = None,
    in_place: bool = False,
) -> np.ndarray:
    """Remove objects smaller than ``min_volume`` or larger than ``max_volume`` (µm³ when a
    voxel size is given, voxels otherwise) and renumber the rest 1..n in order.

    ``in_place=True`` renumbers an int32 ``labels`` in its own memory (no second copy)."""
    labels = np.asarray(labels)
    voxel_volume = float(np.prod(voxel_size)) if voxel_size else 1.0
    counts = label_sizes(labels)
    volumes = counts * voxel_volume
    keep = volumes >= min_volume
    if max_volume is not None:
        keep &= volumes <= max_volume
    keep[0] = False
    lut = np.zeros(len(counts), dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return relabel(lut, labels, in_place=in_place)


def relabel(lut: np.ndarray, labels: np.ndarray, in_place: bool = False) -> np.ndarray:
    """``lut[labels]``; with ``in_place`` (and int32 labels, writable) in ``labels``' memory."""
    if in_place and labels.dtype == lut.dtype == np.int32 and labels.flags.writeable:
        # plane by plane: numpy copies an index array that overlaps ``out`` first, so one call
        # on the whole block would hold a second block; per plane that copy is one plane
        if not labels.flags.c_contiguous:  # a reshape would copy: one whole-block call
            return np.take(lut, labels, out=labels, mode="clip")
        planes = labels.reshape(labels.shape[0], -1) if labels.ndim > 1 else labels[None]
        for plane in planes:
            np.take(lut, plane, out=plane, mode="clip")
        return labels
    return lut[labels]


def instances(
    image: np.ndarray,
    method: str = "voronoi-otsu",
    *,
    voxel_size: Sequence[float] | None = None,
    probability: bool = True,
    spot_sigma: float | Literal["auto"] = "auto",
    outline_sigma: float = OUTLINE_SIGMA,
    min_distance: float = 2.0,
    min_volume: float = 0.0,
    max_volume: float | None = None,
    interior: np.ndarray | None = None,
    object_radius: float | None = None,
    sure_foreground: float | None = SURE_FOREGROUND,
) -> np.ndarray:
    """Instance labels from a probability map (``probability=True``) or a raw image.

    Parameters
    ----------
    image
        (z, y, x) foreground probability in [0, 1], or intensities.
    method
        ``"auto"``, ``"voronoi-otsu"``, ``"watershed"`` or ``"connected"`` (module docstring).
    voxel_size
        (z, y, x) in µm; sigmas, distances and volumes are then physical.
    probability
        Threshold at 0.5 (True) or by Otsu (False).
    spot_sigma, outline_sigma
        Voronoi-Otsu's blurs for seeds and for the outline; ``spot_sigma="auto"``: half the
        median inscribed radius of the mask's components (see the module docstring).
    min_distance
        Watershed: minimum distance between seeds.
    min_volume, max_volume
        Size filter after labelling.
    interior
        A refined model's interior probability (same shape): ``seeded`` (and ``auto``) split
        and grow its interiors over ``image`` (:func:`seeded_watershed`, seeds
        ``min_distance`` apart and of a quarter of ``min_volume`` or more), its boundary's
        axes set by ``object_radius`` (µm; :func:`boundary_axes`), growing past it through
        ``sure_foreground`` (None: by one voxel only).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    img = np.asarray(image)
    if img.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {img.shape}")
    if method == "seeded" or (method == "auto" and interior is not None):
        if interior is None:
            raise ValueError("method 'seeded' needs a refined model's interior probability")
        seed_floor = 0.25 * min_volume
        labels = seeded_watershed(
            img, interior, min_distance, voxel_size, seed_floor, object_radius, sure_foreground
        )
        return filter_sizes(labels, min_volume, max_volume, voxel_size, in_place=True)
    if method == "auto":
        return choose_instances(
            img,
            voxel_size=voxel_size,
            probability=probability,
            spot_sigma=spot_sigma,
            outline_sigma=outline_sigma,
            min_distance=min_distance,
            min_volume=min_volume,
            max_volume=max_volume,
        )[0]
    if method == "voronoi-otsu":
        labels = voronoi_otsu(img, spot_sigma, outline_sigma, voxel_size, probability)
    else:
        mask = img > threshold(img.astype(np.float32, copy=False), probability)
        if method == "watershed":
            labels = distance_watershed(mask, min_distance, voxel_size)
        else:
            labels = connected_components(mask)
    return filter_sizes(labels, min_volume, max_volume, voxel_size, in_place=True)


AUTO_CANDIDATES = ("voronoi-otsu", "watershed")
"""The methods ``auto`` chooses between."""
AUTO_MARGIN = 0.8
"""``auto`` with :data:`AUTO_MIN_OBJECTS` or more objects takes Voronoi-Otsu only where its
:func:`size_spread` is under this fraction of the watershed's: on the regime suite (seeds 0-5)
the watershed scored at least Voronoi-Otsu on 59 of its 60 volumes, and where the smaller spread
alone chose Voronoi-Otsu there, the spreads differed by 3-18% and Voronoi-Otsu had merged
nuclei (README, *The instance step*)."""
AUTO_MIN_OBJECTS = 20
"""Under this many objects (either labelling) ``auto`` keeps the smaller spread, Voronoi-Otsu
winning ties: few large nuclei, as in the embryo volumes, are where the watershed cuts
irregular nuclei in pieces (embryo 16-cell, 17-19 objects: 0.97 against 0.80)."""


def size_spread(labels: np.ndarray) -> float:
    """Median absolute deviation of the objects' log-volumes (inf with fewer than 2 objects)."""
    return spread_of_sizes(label_sizes(labels)[1:])


def spread_of_sizes(sizes: np.ndarray) -> float:
    """Median absolute deviation of the log of the positive ``sizes`` (inf with fewer than 2)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    sizes = sizes[sizes > 0]
    if len(sizes) < 2:
        return float("inf")
    logs = np.log(sizes)
    return float(np.median(np.abs(logs - np.median(logs))))


def auto_method(spreads: dict[str, float], counts: dict[str, int]) -> str:
    """The method ``auto`` keeps, from each candidate's :func:`size_spread` and object count:
    with :data:`AUTO_MIN_OBJECTS` objects or more in both, Voronoi-Otsu only where its spread
    is under :data:`AUTO_MARGIN` of the watershed's; with fewer, the smaller spread,
    Voronoi-Otsu winning ties."""
    vo, ws = spreads["voronoi-otsu"], spreads["watershed"]
    if min(counts["voronoi-otsu"], counts["watershed"]) >= AUTO_MIN_OBJECTS:
        return "voronoi-otsu" if vo < AUTO_MARGIN * ws else "watershed"
    return "voronoi-otsu" if vo <= ws else "watershed"


def choose_instances(image: np.ndarray, **options: Any) -> tuple[np.ndarray, str]:
    """``method="auto"``: (labels, the method chosen) among :data:`AUTO_CANDIDATES`
    (:func:`auto_method`); ``options`` are those of :func:`instances`."""
    found = {name: instances(image, name, **options) for name in AUTO_CANDIDATES}
    chosen = auto_method(
        {name: size_spread(labels) for name, labels in found.items()},
        {name: int(labels.max()) for name, labels in found.items()},
    )
    return found[chosen], chosen
