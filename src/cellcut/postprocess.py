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

Small objects (``min_volume``) and oversized ones (``max_volume``, e.g. bright artifacts) are
removed and the labels renumbered 1..n.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

Method = Literal["voronoi-otsu", "watershed", "connected"]
METHODS = ("voronoi-otsu", "watershed", "connected")


def _sigma_voxels(sigma: float, voxel_size: Sequence[float] | None) -> tuple[float, ...]:
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


def voronoi_otsu(
    image: np.ndarray,
    spot_sigma: float = 2.0,
    outline_sigma: float = 1.0,
    voxel_size: Sequence[float] | None = None,
    probability: bool = False,
) -> np.ndarray:
    """Voronoi-Otsu labelling of ``image`` (raw intensities, or a foreground probability)."""
    from skimage.segmentation import watershed

    img = np.asarray(image, dtype=np.float32)
    outline = ndi.gaussian_filter(img, _sigma_voxels(outline_sigma, voxel_size))
    mask = outline > threshold(outline, probability)
    spots = ndi.gaussian_filter(img, _sigma_voxels(spot_sigma, voxel_size))
    markers = _local_maxima(spots, mask, [1, 1, 1])
    return watershed(-spots, markers, mask=mask).astype(np.int32)


def distance_watershed(
    mask: np.ndarray,
    min_distance: float = 2.0,
    voxel_size: Sequence[float] | None = None,
) -> np.ndarray:
    """Split touching objects of a mask at the necks of its distance transform."""
    from skimage.segmentation import watershed

    m = np.asarray(mask).astype(bool)
    vs = voxel_size or (1.0, 1.0, 1.0)
    dist = ndi.distance_transform_edt(m, sampling=vs).astype(np.float32)
    dist = ndi.gaussian_filter(dist, _sigma_voxels(0.5 * min(vs) + 0.5, voxel_size))
    radius = [max(1, round(min_distance / v)) for v in vs]
    markers = _local_maxima(dist, m, radius)
    return watershed(-dist, markers, mask=m).astype(np.int32)


def connected_components(mask: np.ndarray) -> np.ndarray:
    """Label the 26-connected components of a mask."""
    labels, _ = ndi.label(np.asarray(mask).astype(bool), structure=np.ones((3, 3, 3)))
    return labels.astype(np.int32)


def filter_sizes(
    labels: np.ndarray,
    min_volume: float = 0.0,
    max_volume: float | None = None,
    voxel_size: Sequence[float] | None = None,
) -> np.ndarray:
    """Remove objects smaller than ``min_volume`` or larger than ``max_volume`` (µm³ when a
    voxel size is given, voxels otherwise) and renumber the rest 1..n in order."""
    labels = np.asarray(labels)
    voxel_volume = float(np.prod(voxel_size)) if voxel_size else 1.0
    counts = np.bincount(labels.ravel())
    volumes = counts * voxel_volume
    keep = volumes >= min_volume
    if max_volume is not None:
        keep &= volumes <= max_volume
    keep[0] = False
    lut = np.zeros(len(counts), dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


def instances(
    image: np.ndarray,
    method: str = "voronoi-otsu",
    *,
    voxel_size: Sequence[float] | None = None,
    probability: bool = True,
    spot_sigma: float = 2.0,
    outline_sigma: float = 1.0,
    min_distance: float = 2.0,
    min_volume: float = 0.0,
    max_volume: float | None = None,
) -> np.ndarray:
    """Instance labels from a probability map (``probability=True``) or a raw image.

    Parameters
    ----------
    image
        (z, y, x) foreground probability in [0, 1], or intensities.
    method
        ``"voronoi-otsu"``, ``"watershed"`` or ``"connected"``.
    voxel_size
        (z, y, x) in µm; sigmas, distances and volumes are then physical.
    probability
        Threshold at 0.5 (True) or by Otsu (False).
    spot_sigma, outline_sigma
        Voronoi-Otsu's blurs for seeds and for the outline.
    min_distance
        Watershed: minimum distance between seeds.
    min_volume, max_volume
        Size filter after labelling.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    img = np.asarray(image)
    if img.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {img.shape}")
    if method == "voronoi-otsu":
        labels = voronoi_otsu(img, spot_sigma, outline_sigma, voxel_size, probability)
    else:
        mask = img > threshold(img.astype(np.float32), probability)
        if method == "watershed":
            labels = distance_watershed(mask, min_distance, voxel_size)
        else:
            labels = connected_components(mask)
    return filter_sizes(labels, min_volume, max_volume, voxel_size)
