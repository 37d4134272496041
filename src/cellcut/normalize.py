"""Intensity normalization, and choosing σ_I for the soft N-cut from the image itself.

Users of the reference plugin expect images remapped to 0..100 with ``intensity_sigma=1``;
that is the ``"remap"`` method here. ``"percentile"`` maps robust percentiles to 0..100 and
clips, so a few hot pixels do not squash the nuclei into a narrow band; but the percentiles
move with the share of the volume the nuclei fill and with saturation. ``"classes"`` maps the
image's own two classes to fixed levels: the median of the dark class to
:data:`CLASS_LEVELS` [0] and of the bright class to [1], the classes split by Otsu's threshold on
a lightly smoothed sample (so grain and a few saturated voxels do not move it). Every image
then shows its cells at the same level, sparse or dense, dim or bright, which is what lets one
network decide on images it was not trained on. ``"none"`` keeps the values, in which case σ_I
must fit the image's own range: :func:`suggest_intensity_sigma` proposes one.

Statistics are computed once per volume (on a sample of voxels for large volumes) and then
applied to any window, so sliding-window inference sees the same mapping everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from cellcut.errors import VolumeError

Method = Literal["remap", "percentile", "classes", "none"]
METHODS: tuple[str, ...] = get_args(Method)
SCALE = 100.0
CLASS_LEVELS = (10.0, 60.0)
"""Where ``"classes"`` puts the medians of the dark and bright classes."""
CLASS_CEILING = 2 * SCALE
"""``"classes"`` clips at 0 and here: saturated voxels cannot dominate a patch."""
SMOOTH_SIGMA = 0.7
"""Gaussian blur (voxels, after a 3x3 median per plane) of the sample on which ``"classes"``
finds the two classes."""


@dataclass(frozen=True)
class Normalization:
    """An affine intensity mapping ``(x - low) / (high - low) * 100``, optionally clipped."""

    method: str
    low: float
    high: float
    clip: bool
    ceiling: float = SCALE

    def __call__(self, data: Any) -> np.ndarray:
        x = np.asarray(data, dtype=np.float32)
        if self.method == "none":
            return x
        out = (x - np.float32(self.low)) * np.float32(SCALE / (self.high - self.low))
        if self.clip:
            np.clip(out, 0.0, self.ceiling, out=out)
        return out

    @property
    def range(self) -> tuple[float, float]:
        """Value range of the output (for 'none': the input's observed range)."""
        return (self.low, self.high) if self.method == "none" else (0.0, SCALE)


def _sample(
    data: Any,
    max_voxels: int,
    seed: int = 0,
    smooth: float = 0.0,
    blur: Sequence[float] | None = None,
) -> np.ndarray:
    """All voxels of a small volume, or a random-block sample of a large one: a new float32
    array (the caller may reorder it), filled in place so that no second copy is held.
    ``blur`` (Gaussian σ per axis, voxels), then ``smooth`` > 0 (:func:`_denoise`), are applied
    to each block before its values are taken."""
    shape = tuple(int(s) for s in data.shape)
    n = int(np.prod(shape))
    if n <= max_voxels:
        values = np.empty(shape, dtype=np.float32)
        values[...] = data[...]
        _blur(values, blur)
        if smooth:
            _denoise(values, smooth)
        return values.ravel()
    rng = np.random.default_rng(seed)
    block = tuple(min(s, 32) for s in shape)
    size = int(np.prod(block))
    n_blocks = max(1, max_voxels // size)
    values = np.empty(n_blocks * size, dtype=np.float32)
    for i in range(n_blocks):
        start = [int(rng.integers(0, s - b + 1)) for s, b in zip(shape, block, strict=True)]
        idx = tuple(slice(a, a + b) for a, b in zip(start, block, strict=True))
        piece = values[i * size : (i + 1) * size].reshape(block)
        piece[...] = data[idx]
        _blur(piece, blur)
        if smooth:
            _denoise(piece, smooth)
    return values


def _blur(block: np.ndarray, sigma: Sequence[float] | None) -> None:
    """In place: a Gaussian of ``sigma`` (voxels per axis), if any."""
    if sigma is not None and any(s > 0 for s in sigma):
        from scipy import ndimage as ndi

        block[...] = ndi.gaussian_filter(block, sigma, mode="reflect")


def _denoise(block: np.ndarray, sigma: float) -> None:
    """In place: a 3x3 median in each plane (isolated hot or saturated voxels vanish, thin
    z-stacks keep their objects), then a Gaussian."""
    from scipy import ndimage as ndi

    block[...] = ndi.median_filter(block, size=(1, 3, 3), mode="reflect")
    ndi.gaussian_filter(block, sigma, output=block)


def fit_normalization(
    data: Any,
    method: str = "remap",
    percentiles: tuple[float, float] = (1.0, 99.9),
    max_voxels: int = 4_000_000,
    source: str = "input",
    blur: Sequence[float] | None = None,
) -> Normalization:
    """Compute the normalization of a whole volume once.

    Parameters
    ----------
    data
        (z, y, x) array or lazy array.
    method
        ``"remap"`` (min..max to 0..100), ``"percentile"`` (``percentiles`` to 0..100, clipped),
        ``"classes"`` (the two classes' medians to :data:`CLASS_LEVELS`) or ``"none"``.
    percentiles
        Low and high percentiles for ``"percentile"``.
    max_voxels
        Above this many voxels the statistics come from a sample of blocks.
    source
        Name of the data for error messages.
    blur
        Gaussian σ per axis (voxels) of the image the model will see (segmentation's
        ``denoise``): the statistics are then those of the blurred image (exact for a volume
        under ``max_voxels``, per sampled block above).

    Raises
    ------
    VolumeError
        The sampled values are not finite or are constant, or the method is unknown.
    """
    if method not in METHODS:
        raise VolumeError(
            "invalid normalization", f"unknown method {method!r}", f"use one of {METHODS}"
        )
    smooth = SMOOTH_SIGMA if method == "classes" else 0.0
    values = _sample(data, max_voxels, smooth=smooth, blur=blur)
    if not np.isfinite(values).all():
        raise VolumeError(
            "invalid values",
            "the volume contains NaN or infinite values",
            "replace them (e.g. by the background value) before segmenting",
            file=source,
        )
    lowest, highest = values.min(), values.max()
    low, high = lowest, highest
    if method == "percentile":
        # in place: the sample is ours, and a sorted copy would double the peak
        low, high = np.percentile(values, percentiles, overwrite_input=True)
        if high <= low:  # few distinct values: fall back to the full range
            low, high = lowest, highest
    if high <= low:
        raise VolumeError(
            "constant image",
            f"every sampled voxel has the value {low:g}",
            "there is nothing to segment: check the file and the channel",
            file=source,
        )
    if method == "classes":
        return _class_levels(values, lowest, highest, percentiles)
    return Normalization(method=method, low=float(low), high=float(high), clip=method != "remap")


def _class_levels(
    values: np.ndarray, lowest: float, highest: float, percentiles: tuple[float, float]
) -> Normalization:
    """The ``"classes"`` mapping from a (smoothed) sample; see the module docstring."""
    from skimage.filters import threshold_otsu

    lo, hi = np.percentile(values, [0.1, 99.9])  # Otsu's bins ignore the extreme tails
    if hi <= lo:
        lo, hi = lowest, highest
    t = threshold_otsu(np.clip(values, lo, hi))
    dark, bright = values[values <= t], values[values > t]
    if len(dark) == 0 or len(bright) == 0:  # no split: fall back to percentiles
        low, high = np.percentile(values, percentiles)
        return Normalization("classes", float(low), float(max(high, low + 1e-6)), True)
    m0, m1 = float(np.median(dark)), float(np.median(bright))
    if m1 <= m0:
        m1 = m0 + max(float(hi - lo), 1e-6) * 0.5
    unit = (m1 - m0) / (CLASS_LEVELS[1] - CLASS_LEVELS[0])  # input units per output unit
    low = m0 - CLASS_LEVELS[0] * unit
    return Normalization("classes", low, low + SCALE * unit, True, CLASS_CEILING)


def normalize(data: Any, method: str = "remap", **kwargs: Any) -> np.ndarray:
    """Fit and apply a normalization in one call; returns float32 (z, y, x)."""
    return fit_normalization(data, method, **kwargs)(data)


def estimate_noise(image: np.ndarray) -> float:
    """Standard deviation of pixel noise, robustly, from differences of x-neighbours.

    For white noise of std s, neighbour differences have std s·√2; the median absolute
    deviation makes the estimate ignore edges.
    """
    diff = np.diff(np.asarray(image, dtype=np.float64), axis=-1).ravel()
    # in place: on a 96³ window, one array of differences instead of five
    centre = np.median(diff)
    np.abs(np.subtract(diff, centre, out=diff), out=diff)
    mad = np.median(diff, overwrite_input=True)
    return float(mad / 0.6745 / np.sqrt(2.0))


@dataclass(frozen=True)
class SigmaSuggestion:
    """σ_I proposed for an image, with the numbers it was derived from."""

    intensity_sigma: float
    foreground_mean: float
    background_mean: float
    noise: float

    @property
    def contrast_to_noise(self) -> float:
        return (self.foreground_mean - self.background_mean) / max(self.noise, 1e-12)


def suggest_intensity_sigma(
    image: Any, normalization: str = "remap", max_voxels: int = 2_000_000
) -> SigmaSuggestion:
    """Propose σ_I for the soft N-cut from the image's value distribution.

    The image is normalized as configured, split by Otsu's threshold into a bright and a dark
    mode, and σ_I is half the distance between the two modes' means: voxels of the same mode
    then have affinity near 1 and voxels of different modes at most e^-4 ≈ 0.02 (the loss uses
    exp(-ΔI²/σ_I²)). It is never set below the noise level, where even equal-class neighbours
    would look unrelated.

    Parameters
    ----------
    image
        (z, y, x) array.
    normalization
        The normalization the training will use (``"remap"``, ``"percentile"``, ``"none"``).

    Returns
    -------
    SigmaSuggestion
        ``intensity_sigma`` and the means and noise it came from, in normalized units.
    """
    from skimage.filters import threshold_otsu

    norm = fit_normalization(image, normalization, max_voxels=max_voxels)
    x = norm(np.asarray(image))
    values = _sample(x, max_voxels)
    t = threshold_otsu(values)
    fg = float(values[values > t].mean())
    bg = float(values[values <= t].mean())
    noise = estimate_noise(x)
    sigma = max((fg - bg) / 2.0, noise, 1e-6)
    return SigmaSuggestion(sigma, fg, bg, noise)
