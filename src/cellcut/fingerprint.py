"""A volume's fingerprint: what it looks like, measured once, before and without any model.

Like nnU-Net's data fingerprint, a few robust numbers let settings and checks follow the data:

- ``foreground_fraction``: the share of voxels in the bright class of Otsu's split of the
  lightly denoised image (a 3x3 median per plane, then a small Gaussian);
- ``object_radius``: the typical nucleus radius (µm, voxels without a voxel size): the median
  inscribed radius of the bright class's components, specks left out
  (:func:`cellcut.postprocess.typical_radius`). Measured on the denoised image, not on a
  model's probability, and without its specks, grain cannot shrink it the way speckle shrinks
  the components of a noisy probability mask (a scale-normalized LoG was tried first: on
  textured nuclei its strongest response sat at the smallest scale in 7 of 9 regimes);
- ``contrast_to_noise``: (bright median - dark median) / the voxel noise;
- ``saturated_fraction``: the share of voxels at the image's maximum when that looks like a
  detector limit.

Measured on up to :data:`MAX_WINDOWS` windows of :data:`WINDOW` voxels spread over the volume,
so the cost does not grow with the volume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from cellcut.postprocess import OUTLINE_SIGMA, object_radii, typical_radius

WINDOW = 96
MAX_WINDOWS = 4
SPECK_RADIUS_FRACTION = 1 / 2
"""An object smaller than a sphere of this share of the typical radius (an eighth of its volume)
is a speck. A third had kept debris and fragments (on the regime suite's large nuclei with
artifacts, pieces of 3-7% of a nucleus' volume); a half cost no volume of the suite more than
0.005 F1 (the README has the figures)."""
SEED_DISTANCE_FRACTION = 0.5
"""Watershed seeds at least this share of the typical radius apart (``min_distance="auto"``)."""
GRAINY_CONTRAST = 3.0
DENOISE_RADIUS_FRACTION = 1 / 6
"""``denoise="auto"``: below this contrast-to-noise ratio, the image is blurred by a Gaussian of
this share of the typical radius before the model sees it."""
DEFAULT_SEED_DISTANCE = 2.0
"""µm (voxels without a voxel size), when no typical radius could be measured."""
OUTLINE_RADIUS_FRACTION = 1 / 4
"""``outline_sigma="auto"``: Voronoi-Otsu's mask blur is
:data:`cellcut.postprocess.OUTLINE_SIGMA` (µm, voxels without a voxel size), or this share of
the typical radius where that is less: a 1 µm blur over nuclei of radius 1.3 µm rounds them
into each other."""


@dataclass(frozen=True)
class Fingerprint:
    foreground_fraction: float
    object_radius: float | None  # µm (voxels without a voxel size); None: no blobs found
    contrast_to_noise: float
    saturated_fraction: float
    units: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def speck_volume(self) -> float:
        """Volume (µm³, voxels³ without a voxel size) under which an object is a speck: a
        sphere of :data:`SPECK_RADIUS_FRACTION` of the typical radius (0 when unknown)."""
        if self.object_radius is None:
            return 0.0
        return 4 / 3 * math.pi * (SPECK_RADIUS_FRACTION * self.object_radius) ** 3

    def seed_distance(self) -> float:
        """Watershed's ``min_distance="auto"``: :data:`SEED_DISTANCE_FRACTION` of the typical
        radius (:data:`DEFAULT_SEED_DISTANCE` when unknown)."""
        if self.object_radius is None:
            return DEFAULT_SEED_DISTANCE
        return SEED_DISTANCE_FRACTION * self.object_radius

    def outline_sigma(self) -> float:
        """``outline_sigma="auto"``: :data:`~cellcut.postprocess.OUTLINE_SIGMA`, or
        :data:`OUTLINE_RADIUS_FRACTION` of the typical radius where that is less."""
        if self.object_radius is None:
            return OUTLINE_SIGMA
        return min(OUTLINE_SIGMA, OUTLINE_RADIUS_FRACTION * self.object_radius)

    def denoise_sigma(self) -> float:
        """``denoise="auto"``: a Gaussian σ (µm, voxels without a voxel size) for grainy images
        (contrast-to-noise under :data:`GRAINY_CONTRAST`), else 0."""
        if self.object_radius is None or self.contrast_to_noise >= GRAINY_CONTRAST:
            return 0.0
        return DENOISE_RADIUS_FRACTION * self.object_radius


def _windows(shape: Sequence[int], size: int, n: int) -> list[tuple[slice, ...]]:
    """Up to ``n`` windows spread along the volume's diagonal."""
    sizes = [min(size, s) for s in shape]
    count = max(1, min(n, *(s // w for s, w in zip(shape, sizes, strict=True))))
    out = []
    for i in range(count):
        f = (i + 0.5) / count
        starts = [round(f * (s - w)) for s, w in zip(shape, sizes, strict=True)]
        out.append(tuple(slice(a, a + w) for a, w in zip(starts, sizes, strict=True)))
    return out


def denoise(block: np.ndarray, sigma: float = 0.7) -> np.ndarray:
    """A 3x3 median in each plane (isolated hot voxels vanish), then a Gaussian (voxels)."""
    out = ndi.median_filter(np.asarray(block, dtype=np.float32), size=(1, 3, 3), mode="reflect")
    return ndi.gaussian_filter(out, sigma, output=out)


def measure(data: Any, voxel_size: Sequence[float] | None = None) -> Fingerprint:
    """The fingerprint of a (z, y, x) volume (array or lazy array); see the module docstring.

    Two passes over the windows, one window in memory at a time: the first finds the global
    threshold (on every 8th denoised voxel) and the noise, the second the classes' shares,
    levels and components.
    """
    from skimage.filters import threshold_otsu

    from cellcut.normalize import estimate_noise

    shape = tuple(int(s) for s in data.shape)
    windows = _windows(shape, WINDOW, MAX_WINDOWS)
    units = "µm" if voxel_size else "voxels"
    samples, noise, tops = [], [], []
    for w in windows:
        raw = np.asarray(data[w], dtype=np.float32)
        noise.append(estimate_noise(raw))
        tops.append(float(raw.max()))
        samples.append(denoise(raw)[::2, ::2, ::2].ravel())
    values = np.concatenate(samples)
    lo, hi = np.percentile(values, [0.1, 99.9])
    if hi <= lo:
        return Fingerprint(0.0, None, 0.0, 0.0, units)
    t = float(threshold_otsu(np.clip(values, lo, hi)))
    top = max(tops)
    limit = top in (255.0, 4095.0, 65535.0) or top >= 1e4
    bright = voxels = saturated = 0.0
    levels: list[np.ndarray] = [values[values <= t], values[values > t]]
    radii, sizes = [], []
    for w in windows:
        raw = np.asarray(data[w], dtype=np.float32)
        if limit:
            saturated += float((raw >= top).sum())
        mask = denoise(raw) > t
        del raw
        bright += float(mask.sum())
        voxels += mask.size
        r, n = object_radii(mask, voxel_size, min_voxels=1)
        radii.append(r)
        sizes.append(n)
    dark_level, bright_level = (float(np.median(v)) if len(v) else 0.0 for v in levels)
    return Fingerprint(
        foreground_fraction=bright / voxels,
        object_radius=typical_radius(np.concatenate(radii), np.concatenate(sizes)),
        contrast_to_noise=(bright_level - dark_level) / max(float(np.median(noise)), 1e-12),
        saturated_fraction=saturated / voxels,
        units=units,
    )
