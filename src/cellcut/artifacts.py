"""Imaging artifacts that are not nuclei: what a supervised second stage must learn to ignore.

Each artifact is a function of the volume's shape (and voxel size, in µm) and a random
generator; :func:`apply_artifacts` puts any of them onto an image whose nuclei are about
``level`` bright. The synthetic generator (:mod:`cellcut.synthetic`) uses them to make test
volumes whose ground truth holds the nuclei only, and refinement
(:mod:`cellcut.refinement`) uses them to augment training patches, so that its network learns
that these structures are background.

Kinds (:data:`KINDS`):

``debris``
    Bright, irregular specks (clumps of dye, dust): 1.5-3× a nucleus' brightness.
``tubes``
    Blood-vessel-like tubes: smooth random curves 1-2.5 µm in radius, as bright as nuclei.
``stripes``
    Light-sheet shadows: dark streaks along x, varying across y (and slowly along z).
``haze``
    Out-of-focus light: a wide blur of the image added to it.
``hot-pixels``
    Isolated voxels at the detector's maximum, and dead ones at zero.
``absorption``
    Dim regions (absorbing tissue, bubbles): smooth multiplicative dips to 30-60%.
``seam``
    A tile seam: one side of a plane across y or x is 20-50% dimmer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

KINDS: tuple[str, ...] = (
    "debris",
    "tubes",
    "stripes",
    "haze",
    "hot-pixels",
    "absorption",
    "seam",
)


def _spacing(shape: Sequence[int], voxel_size: Sequence[float] | None) -> np.ndarray:
    return np.asarray(voxel_size if voxel_size is not None else (1.0,) * len(shape), float)


def debris(
    shape: Sequence[int],
    voxel_size: Sequence[float] | None,
    rng: np.random.Generator,
    n: int | None = None,
) -> np.ndarray:
    """A field of bright specks, 0 elsewhere and 1.5-3 inside (relative to nuclei's 1)."""
    vs = _spacing(shape, voxel_size)
    field = np.zeros(shape, dtype=np.float32)
    n = int(rng.integers(2, 7)) if n is None else n
    grid_r = max(1.0, 1.5 / float(vs.min()))
    for _ in range(n):
        centre = rng.uniform(0, 1, 3) * np.asarray(shape)
        level = float(rng.uniform(1.5, 3.0))
        for _ in range(int(rng.integers(1, 4))):  # a clump of 1-3 blobs
            c = centre + rng.normal(0, grid_r, 3) * vs.min() / vs
            r = rng.uniform(0.6, 1.4) * grid_r * vs.min() / vs
            lo = np.maximum(np.floor(c - r).astype(int), 0)
            hi = np.minimum(np.ceil(c + r).astype(int) + 1, shape)
            if (hi <= lo).any():
                continue
            g = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
            inside = sum(((gi - ci) / ri) ** 2 for gi, ci, ri in zip(g, c, r, strict=True)) < 1
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            field[box][inside] = level
    return field


def tubes(
    shape: Sequence[int],
    voxel_size: Sequence[float] | None,
    rng: np.random.Generator,
    n: int | None = None,
) -> np.ndarray:
    """A field of smooth tubes, 0.5-1.2 inside (relative to nuclei's 1), 0 elsewhere."""
    vs = _spacing(shape, voxel_size)
    extent = np.asarray(shape) * vs
    n = int(rng.integers(1, 4)) if n is None else n
    field = np.zeros(shape, dtype=np.float32)
    for _ in range(n):
        p = rng.uniform(0, 1, 3) * extent
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        radius = float(rng.uniform(1.0, 2.5))
        step = 0.5 * float(vs.min())
        line = np.zeros(shape, dtype=bool)
        for _ in range(int(4 * extent.max() / step)):
            d += rng.normal(0, 0.05, 3)
            d /= np.linalg.norm(d)
            p = p + d * step
            idx = np.floor(p / vs).astype(int)
            if ((idx < 0) | (idx >= shape)).any():
                break
            line[tuple(idx)] = True
        if not line.any():
            continue
        tube = ndi.distance_transform_edt(~line, sampling=vs) <= radius
        field[tube] = float(rng.uniform(0.5, 1.2))
    return field


def stripes(shape: Sequence[int], rng: np.random.Generator, strength: float = 0.5) -> np.ndarray:
    """A multiplicative field in (1 - strength, 1]: shadows constant along x."""
    z, y = shape[0], shape[1]
    profile = ndi.gaussian_filter1d(rng.normal(size=(z, y)).astype(np.float32), 1.5, axis=1)
    profile = ndi.gaussian_filter1d(profile, max(1.0, z / 8), axis=0)
    profile = np.clip(-profile / (profile.std() + 1e-9), 0, 3) / 3  # dark streaks only
    return (1.0 - strength * profile)[:, :, None] * np.ones(shape, np.float32)


def absorption(shape: Sequence[int], rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """A multiplicative field: 1 outside a few smooth dips to 30-60%."""
    grid = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    field = np.ones(shape, dtype=np.float32)
    for _ in range(int(rng.integers(1, 3)) if n is None else n):
        c = rng.uniform(0, 1, 3)
        r = rng.uniform(0.15, 0.35)
        depth = float(rng.uniform(0.4, 0.7))
        d2 = sum((g - ci) ** 2 for g, ci in zip(grid, c, strict=True)) / r**2
        field *= 1.0 - depth * np.exp(-d2).astype(np.float32)
    return field


def seam(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A multiplicative field: 1 on one side of a plane across y or x, 0.5-0.8 on the other."""
    axis = int(rng.integers(1, 3))
    at = int(rng.integers(shape[axis] // 4, 3 * shape[axis] // 4 + 1))
    field = np.ones(shape, dtype=np.float32)
    side = [slice(None)] * 3
    side[axis] = slice(at, None)
    field[tuple(side)] = float(rng.uniform(0.5, 0.8))
    return field


def apply_artifacts(
    image: np.ndarray,
    kinds: Iterable[str],
    rng: np.random.Generator,
    *,
    voxel_size: Sequence[float] | None = None,
    level: float | None = None,
    base: float | None = None,
    top: float | None = None,
    avoid: np.ndarray | None = None,
) -> np.ndarray:
    """``image`` (float, z, y, x) with the artifacts named in ``kinds`` (a new array).

    ``base``: the background level (default: the image's median); ``level``: the brightness
    of a nucleus above it (default: the image's 99.5th percentile minus ``base``); ``top``:
    the detector's maximum for hot pixels (default: the image's maximum); ``avoid``: a mask
    (the nuclei) that debris and tubes do not cover.
    """
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown artifact kinds {unknown}: use some of {KINDS}")
    img = np.array(image, dtype=np.float32)
    shape = img.shape
    base = float(np.median(img)) if base is None else base
    if level is None:
        level = max(float(np.percentile(img, 99.5)) - base, 1e-6)
    for kind in kinds:
        if kind in ("debris", "tubes"):
            field = (debris if kind == "debris" else tubes)(shape, voxel_size, rng)
            if avoid is not None:
                field[avoid] = 0
            img = np.where(field > 0, np.maximum(img, base + level * field), img)
        elif kind == "haze":
            sigma = np.asarray([s / 6 for s in shape], float)
            img += float(rng.uniform(0.3, 0.8)) * ndi.gaussian_filter(img - base, sigma)
        elif kind == "hot-pixels":
            peak = float(img.max()) if top is None else top
            u = rng.random(shape)
            img[u < 2e-4] = peak
            img[u > 1 - 2e-4] = 0.0
        elif kind == "stripes":
            img = base + (img - base) * stripes(shape, rng, float(rng.uniform(0.3, 0.7)))
        elif kind == "absorption":
            img = base + (img - base) * absorption(shape, rng)
        else:  # seam
            img *= seam(shape, rng)
    return img
