"""Synthetic fluorescence volumes of nuclei with instance ground truth.

A volume is built the way a microscope would see it: nuclei as randomly oriented ellipsoids of
varied size and brightness with a grainy chromatin texture, some touching their neighbours;
an uneven background; an anisotropic point-spread function (wider along z); shot noise
(Poisson) and read noise (Gaussian); optionally a few bright artifacts that are not cells.
Everything is deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from cellcut.artifacts import KINDS as ARTIFACT_KINDS
from cellcut.artifacts import apply_artifacts


@dataclass
class SyntheticVolume:
    """A generated volume.

    Attributes
    ----------
    image
        Raw intensities (z, y, x), ``float32`` or ``uint16``.
    labels
        Instance labels (z, y, x), ``int32``; 0 is background, 1..n the nuclei.
    voxel_size
        (z, y, x) voxel size in micrometres.
    artifacts
        Boolean mask of the bright artifacts (not part of ``labels``).
    """

    image: np.ndarray
    labels: np.ndarray
    voxel_size: tuple[float, float, float]
    artifacts: np.ndarray

    @property
    def n_nuclei(self) -> int:
        return int(self.labels.max())


SCALES = {"float32": (1.0, 65535 / 4000), "uint16": (4000.0, 65535), "uint8": (255.0, 255)}
"""Per output type: the factor from the 0..1 scale, and the detector's maximum."""


def _smooth_field(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """A smooth random field in about [-1, 1], varying over the whole volume."""
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    freq = rng.uniform(0.8, 2.0, size=3)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    terms = [np.sin(f * g * np.pi / 2 + p) for f, g, p in zip(freq, grid, phase, strict=True)]
    return (sum(terms) / 3.0).astype(np.float32)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def make_nuclei_volume(
    shape: Sequence[int] = (64, 96, 96),
    *,
    seed: int = 0,
    voxel_size: Sequence[float] = (2.0, 1.0, 1.0),
    n_nuclei: int | None = None,
    radius_um: tuple[float, float] = (4.0, 7.0),
    elongation: float = 0.3,
    brightness: tuple[float, float] = (0.5, 1.0),
    texture: float = 0.25,
    touching: float = 0.3,
    psf_sigma_um: tuple[float, float, float] = (2.0, 0.8, 0.8),
    background: float = 0.1,
    background_gradient: float = 0.08,
    photons: float = 200.0,
    read_noise: float = 0.01,
    n_artifacts: int = 0,
    dtype: str = "float32",
    fill: float = 0.12,
    min_gap: float = 0.85,
    illumination: float = 0.0,
    saturated: float = 0.0,
    tissue: float = 0.0,
    artifact_kinds: Sequence[str] = (),
    nucleoli: float = 0.0,
    chromocenters: int = 0,
) -> SyntheticVolume:
    """Generate nuclei in a 3D fluorescence volume with ground truth.

    Parameters
    ----------
    shape
        (z, y, x) size in voxels.
    seed
        Random seed; the same seed gives the same volume.
    voxel_size
        (z, y, x) voxel size in µm; z larger than x/y makes the volume anisotropic.
    n_nuclei
        Number of nuclei to place; default fills about 12% of the volume.
    radius_um
        Range of mean nucleus radii in µm.
    elongation
        Relative spread of the three semi-axes around the mean radius.
    brightness
        Range of mean nucleus brightness, as a fraction of the full scale.
    texture
        Relative amplitude of the chromatin texture inside nuclei.
    touching
        Fraction of nuclei placed in contact with an existing one.
    psf_sigma_um
        Gaussian PSF standard deviations (z, y, x) in µm.
    background
        Mean background level (fraction of full scale).
    background_gradient
        Amplitude of a smooth background variation.
    photons
        Expected photon count at full scale: lower means more shot noise.
    read_noise
        Standard deviation of the Gaussian camera noise (fraction of full scale).
    n_artifacts
        Number of small, very bright blobs that are not nuclei.
    dtype
        ``"float32"`` (values about 0..1), ``"uint16"`` (scaled by 4000) or ``"uint8"``
        (scaled by 255, clipped).
    fill
        Foreground fraction aimed at when ``n_nuclei`` is not given.
    min_gap
        Closest distance of two centres, in sums of their mean radii: below 1 they overlap
        (a voxel goes to the nucleus it is deepest in), which packs dense tissue.
    illumination
        Amplitude of a smooth multiplicative illumination field on the nuclei (0: even; 0.5:
        some regions half as bright as others).
    saturated
        Fraction of voxels that read the detector's maximum (hot pixels, saturated spots).
    tissue
        Level of a dim body (cytoplasm, embryo, tissue) in the middle of the volume, as a
        fraction of the brightest nuclei's; background for the ground truth.
    artifact_kinds
        Artifacts to add (:data:`cellcut.artifacts.KINDS`), from their own random stream: the
        nuclei are the seed's without them. Debris and tubes avoid the nuclei (``artifacts``).
    nucleoli, chromocenters
        Share of nuclei with a dark nucleolus; most bright foci per nucleus (:func:`_substructure`).
    """
    shape, vs, extent = _geometry(shape, voxel_size)
    rng = np.random.default_rng(seed)
    count = n_nuclei if n_nuclei is not None else _filling_count(fill, extent, radius_um)
    nuclei = _place_nuclei(rng, extent, count, radius_um, elongation, touching, min_gap)
    labels, signal = _draw_nuclei(rng, shape, vs, nuclei, brightness)
    signal *= 1.0 + texture * _grain(rng, shape, vs) * (labels > 0)
    _substructure(seed, signal, labels, vs, nuclei, nucleoli, chromocenters)
    artifacts = _surroundings(
        rng, signal, labels, vs, tissue * brightness[1], n_artifacts, illumination
    )
    art_rng = np.random.default_rng([seed, 1])
    signal = _structures(art_rng, signal, labels, vs, artifact_kinds, brightness[1], artifacts)
    image = _image(rng, signal, vs, psf_sigma_um, background, background_gradient, photons)
    image = _optical(art_rng, image, vs, artifact_kinds, brightness[1], dtype)
    image = _detector(rng, image, read_noise, saturated, dtype)
    voxels = tuple(float(v) for v in vs)
    return SyntheticVolume(image, labels, voxels, artifacts)  # type: ignore[arg-type]


NUCLEOLUS_LEVEL = 0.2
CHROMOCENTER_GAIN = (2.0, 3.0)


def _filling_count(fill: float, extent: np.ndarray, radius_um: tuple[float, float]) -> int:
    """How many nuclei of the mean radius fill a share ``fill`` of the volume."""
    mean_r = float(np.mean(radius_um))
    return max(1, int(fill * np.prod(extent) / (4 / 3 * np.pi * mean_r**3)))


def _substructure(seed, signal, labels, vs, nuclei, nucleoli: float, chromocenters: int) -> None:
    """In place on ``signal``, only where a voxel belongs to a nucleus: in a share ``nucleoli``
    of the nuclei a dark nucleolus (:data:`NUCLEOLUS_LEVEL` of the nucleus' brightness, 0.3-0.45
    of its radius, off its centre), and in each up to ``chromocenters`` bright foci
    (heterochromatin: :data:`CHROMOCENTER_GAIN` times the brightness, about 0.15 of its radius),
    as DAPI and H2B stains show plant and animal nuclei. The ground truth is unchanged; the
    draws come from their own stream (of ``seed``), so the nuclei, background and noise draws
    are those of the volume without them."""
    if not 0.0 <= nucleoli <= 1.0 or chromocenters < 0:
        raise ValueError(
            f"nucleoli must be a share in [0, 1] and chromocenters >= 0, got {nucleoli} and "
            f"{chromocenters}"
        )
    if not nucleoli and not chromocenters:
        return
    rng = np.random.default_rng([seed, 2])
    shape = signal.shape
    inside = labels > 0
    for c, r, rot in nuclei:
        parts = []  # (centre, semi-axes, factor)
        if rng.random() < nucleoli:
            size = rng.uniform(0.3, 0.45)
            offset = rot @ (rng.normal(size=3) * 0.2 * r)
            parts.append((c + offset, size * r, NUCLEOLUS_LEVEL))
        for _ in range(int(rng.integers(0, chromocenters + 1)) if chromocenters else 0):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            place = rot @ (direction * r * rng.uniform(0.3, 0.8))
            size = np.maximum(0.15 * r, 0.6 * vs.min())
            parts.append((c + place, size, rng.uniform(*CHROMOCENTER_GAIN)))
        for centre, axes, factor in parts:
            found = _ellipsoid(centre, axes, rot, vs, shape, pad=(0, 1))
            if found is not None:
                box, dist = found
                signal[box][(dist < 1.0) & inside[box]] *= factor


def _ellipsoid(centre, axes, rot, vs, shape, pad: tuple[int, int]):
    """(box, normalised distance inside it) of an ellipsoid with semi-axes ``axes`` (µm) in the
    frame ``rot``: its bounding box in voxels, widened by ``pad`` (before, after) and clipped
    to the volume; None when that box is empty."""
    lo = np.maximum(np.floor((centre - axes.max()) / vs).astype(int) - pad[0], 0)
    hi = np.minimum(np.ceil((centre + axes.max()) / vs).astype(int) + pad[1], shape)
    if (hi <= lo).any():
        return None
    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
    rel = np.stack([(g + 0.5) * s - cc for g, s, cc in zip(grids, vs, centre, strict=True)], -1)
    local = rel @ rot  # coordinates in the ellipsoid's own frame
    dist = np.sqrt(((local / axes) ** 2).sum(-1)).astype(np.float32)
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)), dist


def _geometry(
    shape: Sequence[int], voxel_size: Sequence[float]
) -> tuple[tuple, np.ndarray, np.ndarray]:
    """(shape, voxel size, extent in µm), checked."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be three sizes >= 4, got {shape}")
    vs = np.asarray(voxel_size, dtype=float)
    if vs.shape != (3,) or (vs <= 0).any():
        raise ValueError(f"voxel_size must be three positive numbers, got {voxel_size}")
    return shape, vs, np.asarray(shape) * vs


def _grain(rng, shape, vs) -> np.ndarray:
    """Chromatin-like texture: smoothed white noise of unit standard deviation."""
    grain = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), 1.0 / vs * 0.8)
    return grain / (grain.std() + 1e-12)


def _surroundings(rng, signal, labels, vs, tissue_level, n_artifacts, illumination) -> np.ndarray:
    """In place on ``signal``: a dim tissue body, bright artifacts, uneven illumination; returns
    the artifacts' mask."""
    shape = signal.shape
    if tissue_level:
        signal += tissue_level * _body(rng, shape) * (labels == 0)
    artifacts = _artifacts(rng, shape, vs, n_artifacts)
    signal[artifacts] = 3.0
    if illumination:
        signal *= np.clip(1.0 + illumination * _smooth_field(rng, shape), 0.05, None)
    return artifacts


STRUCTURES = ("debris", "tubes")
"""Artifacts that are objects (drawn before the point-spread function); the others act on the
image."""


def _structures(rng, signal, labels, vs, kinds, level, mask) -> np.ndarray:
    """``signal`` with debris and tubes (outside the nuclei) when ``kinds`` name them; their
    voxels are added to ``mask`` in place."""
    kinds = [k for k in kinds if k in STRUCTURES]
    if not kinds:
        return signal
    out = apply_artifacts(
        signal, kinds, rng, voxel_size=vs, level=level, base=0.0, avoid=labels > 0
    )
    mask |= out > signal
    return out


def _optical(rng, image, vs, kinds, level, dtype) -> np.ndarray:
    """``image`` with the artifacts of ``kinds`` that act on the image (not debris, tubes)."""
    optical = [k for k in kinds if k not in STRUCTURES]
    if not optical:
        return image
    top = SCALES[dtype][1] / SCALES[dtype][0]
    return apply_artifacts(image, optical, rng, voxel_size=vs, level=level, top=top)


def _body(rng, shape) -> np.ndarray:
    """A smooth ellipsoidal body filling about half of the volume, 1 inside, 0 outside."""
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    axes = rng.uniform(0.6, 0.9, size=3)
    centre = rng.uniform(-0.15, 0.15, size=3)
    d = np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, axes, strict=True)))
    return np.clip((1.1 - d) / 0.2, 0.0, 1.0).astype(np.float32)


def _artifacts(rng, shape, vs, n: int) -> np.ndarray:
    """Small, very bright blobs that are not nuclei."""
    artifacts = np.zeros(shape, dtype=bool)
    for _ in range(n):
        c = (rng.uniform(0, 1, size=3) * np.asarray(shape)).astype(int)
        rad = max(1, round(1.5 / vs.min()))
        box = tuple(slice(max(0, a - rad), a + rad + 1) for a in c)
        artifacts[box] = True
    return artifacts


def _detector(rng, image, read_noise: float, saturated: float, dtype: str) -> np.ndarray:
    """Read noise, saturated voxels, and the output type's scale and range."""
    noise = rng.normal(0, read_noise, size=image.shape).astype(np.float32)
    image = np.clip(image + noise, 0, None).astype(np.float32)
    if dtype not in SCALES:
        raise ValueError(f"dtype must be one of {', '.join(SCALES)}, got {dtype!r}")
    scale, top = SCALES[dtype]
    if saturated:
        image[rng.random(image.shape) < saturated] = top / scale
    if dtype != "float32":
        image = np.clip(np.round(image * scale), 0, top).astype(dtype)
    return image


def _place_nuclei(rng, extent, n_nuclei, radius_um, elongation, touching, min_gap) -> list[tuple]:
    """Centres, semi-axes and rotations: some free (not overlapping), some touching an
    earlier nucleus."""
    centres = np.zeros((n_nuclei, 3))
    mean_radii = np.zeros(n_nuclei)
    radii: list[np.ndarray] = []
    rotations: list[np.ndarray] = []
    n = 0
    for _ in range(n_nuclei * 40):
        if n == n_nuclei:
            break
        r_mean = rng.uniform(*radius_um)
        axes_r = r_mean * (1 + elongation * rng.uniform(-1, 1, size=3))
        if n and rng.random() < touching:
            j = rng.integers(n)
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            c = centres[j] + direction * (mean_radii[j] + axes_r.mean()) * 0.95
        else:
            c = rng.uniform(0, 1, size=3) * extent
        if ((c < -0.3 * axes_r.mean()) | (c > extent + 0.3 * axes_r.mean())).any():
            continue
        if n:
            distance = np.sqrt(((centres[:n] - c) ** 2).sum(1))
            if (distance / (axes_r.mean() + mean_radii[:n])).min() < min_gap:
                continue
        centres[n], mean_radii[n] = c, axes_r.mean()
        n += 1
        radii.append(axes_r)
        rotations.append(_random_rotation(rng))
    return list(zip(centres[:n], radii, rotations, strict=True))


def _draw_nuclei(rng, shape, vs, nuclei, brightness) -> tuple[np.ndarray, np.ndarray]:
    """Labels (consecutive ids; a voxel goes to the nucleus it is deepest in) and signal."""
    labels = np.zeros(shape, dtype=np.int32)
    best = np.full(shape, np.inf, dtype=np.float32)  # normalised distance of the owner
    signal = np.zeros(shape, dtype=np.float32)
    for idx, (c, r, rot) in enumerate(nuclei, start=1):
        found = _ellipsoid(c, r, rot, vs, shape, pad=(1, 2))
        if found is None:
            continue
        box, dist = found
        inside = (dist < 1.0) & (dist < best[box])
        if not inside.any():
            continue
        labels[box][inside] = idx
        best[box][inside] = dist[inside]
        level = rng.uniform(*brightness)
        signal[box][inside] = level * (1.0 - 0.15 * dist[inside] ** 2)

    # Relabel so that ids are consecutive after occlusion removed some nuclei entirely.
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(labels.max() + 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    labels = lut[labels]
    return labels, signal


def _image(rng, signal, vs, psf_sigma_um, background, gradient, photons) -> np.ndarray:
    """Blur by the PSF, add a smooth background, draw Poisson photon counts."""
    shape = signal.shape
    signal = ndi.gaussian_filter(signal, np.asarray(psf_sigma_um) / vs)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    phase = rng.uniform(0, 2 * np.pi, size=3)
    field = (
        np.sin(1.3 * zz + phase[0]) + np.sin(1.1 * yy + phase[1]) + np.cos(0.9 * xx + phase[2])
    ) / 3.0
    expected = np.clip(signal + background + gradient * field, 0, None)
    return rng.poisson(expected * photons).astype(np.float32) / photons


# ------------------------------------------------------------------------------------------
# Imaging regimes: what users bring, as generator settings

_PLANT = dict(
    shape=(100, 100, 100), voxel_size=(0.284, 0.127, 0.127), radius_um=(1.3, 1.7),
    elongation=0.2, fill=0.2, min_gap=0.8, touching=0.7, brightness=(0.06, 0.16),
    texture=0.3, psf_sigma_um=(0.45, 0.12, 0.12), background=0.1,
    background_gradient=0.02, photons=16.0, read_noise=0.01, saturated=1e-4, dtype="uint8",
)  # fmt: skip
"""The plant-tissue confocal stacks of the generalization issue (regime
``confocal-dense-grainy``), the base of ``confocal-nucleoli``."""

REGIMES: dict[str, dict] = {
    # mesoSPIM-like: cleared tissue, sparse bright nuclei, 16-bit, z steps twice the pixel
    "lightsheet-sparse": dict(
        shape=(48, 96, 96), voxel_size=(2.0, 1.0, 1.0), radius_um=(4.0, 6.0), fill=0.06,
        brightness=(0.5, 1.0), photons=200.0, dtype="uint16",
    ),
    # the plant-tissue confocal stacks of the generalization issue: 8-bit, dim, grainy (a
    # background of ~25 +- 20 grey levels, nuclei ~50), dense and touching, uneven brightness
    # from nucleus to nucleus, a few saturated voxels, voxel 0.284 x 0.127 x 0.127 um
    "confocal-dense-grainy": _PLANT,
    # the same plant-tissue stacks with what real nuclei hold inside: a dark nucleolus in most
    # nuclei and bright chromocenters (heterochromatin foci), as DAPI and H2B stains show them
    "confocal-nucleoli": dict(_PLANT, nucleoli=0.8, chromocenters=6),
    # few photons: shot noise dominates, nuclei barely above the background
    "dim-low-photon": dict(
        shape=(48, 96, 96), voxel_size=(2.0, 1.0, 1.0), radius_um=(3.0, 5.0), fill=0.12,
        brightness=(0.08, 0.2), background=0.05, background_gradient=0.02, photons=30.0,
        dtype="uint16",
    ),
    # packed tissue: over 40% of the volume is nuclei, most of them touch
    "dense-touching": dict(
        shape=(48, 96, 96), voxel_size=(1.0, 1.0, 1.0), radius_um=(4.0, 6.0), fill=0.55,
        min_gap=0.75, touching=0.8, psf_sigma_um=(1.5, 0.8, 0.8), photons=100.0,
        dtype="uint16",
    ),
    # cortex-like: many small cells, 5-6 voxels across in (y, x), z steps three times larger
    "small-nuclei": dict(
        shape=(24, 128, 128), voxel_size=(3.0, 1.0, 1.0), radius_um=(2.5, 3.0), fill=0.08,
        psf_sigma_um=(2.5, 0.6, 0.6), photons=100.0, dtype="uint16",
    ),
    # embryo-like: large nuclei, 24-30 voxels across, brightness varying threefold
    "large-nuclei": dict(
        shape=(64, 128, 128), voxel_size=(1.0, 1.0, 1.0), radius_um=(12.0, 15.0), fill=0.12,
        brightness=(0.33, 1.0), psf_sigma_um=(2.0, 1.0, 1.0), photons=150.0, dtype="uint16",
    ),
    # strongly anisotropic: z steps three pixels, a point-spread function long in z
    "anisotropic-3x": dict(
        shape=(32, 128, 128), voxel_size=(3.0, 1.0, 1.0), radius_um=(5.0, 7.0), fill=0.12,
        psf_sigma_um=(3.0, 0.8, 0.8), photons=120.0, dtype="uint16",
    ),
    # uneven illumination and background: the same nucleus is bright in one corner, dim in
    # another, on a sloping background
    "uneven-illumination": dict(
        shape=(48, 96, 96), voxel_size=(2.0, 1.0, 1.0), radius_um=(4.0, 6.0), fill=0.12,
        brightness=(0.3, 1.0), illumination=0.6, background=0.2, background_gradient=0.15,
        photons=150.0, dtype="uint16",
    ),
    # bright 8-bit stacks with clipped nuclei and hot pixels
    "bright-saturated-8bit": dict(
        shape=(48, 96, 96), voxel_size=(2.0, 1.0, 1.0), radius_um=(4.0, 6.0), fill=0.12,
        brightness=(0.6, 1.4), background=0.08, saturated=5e-4, photons=300.0, dtype="uint8",
    ),
    # nuclei inside a dim tissue body (cytoplasm, yolk, autofluorescent tissue) filling about
    # half of the volume: Otsu's split of the raw image takes the body for one object
    "tissue-background": dict(
        shape=(48, 96, 96), voxel_size=(2.0, 1.0, 1.0), radius_um=(3.0, 4.5), fill=0.12,
        brightness=(0.3, 0.6), tissue=0.35, background=0.02, photons=200.0, dtype="uint16",
    ),
}  # fmt: skip
"""Named imaging regimes (generator settings) for scoring; see ``benchmarks/bench_regimes.py``.
Scoring volumes use seeds below 1000, training volumes (:func:`random_regime`) seeds from
1000 and their own parameter draws, so that a model scored on a regime never saw that volume
or those exact settings."""

TRAINING_SEED_BASE = 1000


def random_regime(
    rng: np.random.Generator, substructure: bool = False, max_fill: float = 0.45
) -> dict:
    """Generator settings drawn from the ranges the regimes span, for training volumes; with
    ``substructure``, also nucleoli and chromocenters, drawn last: the other settings of this
    draw are those the generator gives without them (its later draws then differ).
    ``max_fill`` is the top of the fill's range (from 0.04): a higher one gives packed volumes
    (the packed regime asks for 0.55); every other setting of a draw stays the same."""
    if not 0.04 < max_fill <= 0.8:
        raise ValueError(f"max_fill must be in (0.04, 0.8], got {max_fill}")
    anisotropy = float(rng.choice([1.0, 1.5, 2.0, 2.5, 3.0]))
    pixel = float(rng.uniform(0.3, 1.5))
    radius_vox = float(rng.uniform(2.5, 14.0))  # nucleus radius in (y, x) pixels
    r = radius_vox * pixel
    level = float(np.exp(rng.uniform(np.log(0.06), np.log(1.0))))
    side = int(rng.choice([64, 80, 96]))
    settings = dict(
        shape=(max(16, int(side / anisotropy)), side, side),
        voxel_size=(pixel * anisotropy, pixel, pixel),
        radius_um=(0.85 * r, 1.15 * r),
        elongation=float(rng.uniform(0.1, 0.35)),
        fill=float(rng.uniform(0.04, max_fill)),
        min_gap=float(rng.uniform(0.75, 0.9)),
        touching=float(rng.uniform(0.1, 0.8)),
        brightness=(level * float(rng.uniform(0.33, 0.8)), level),
        texture=float(rng.uniform(0.1, 0.4)),
        psf_sigma_um=(pixel * anisotropy * float(rng.uniform(0.6, 1.2)), 0.8 * pixel, 0.8 * pixel),
        background=float(rng.uniform(0.0, 0.25)),
        background_gradient=float(rng.uniform(0.0, 0.15)),
        photons=float(np.exp(rng.uniform(np.log(12.0), np.log(5000.0)))),
        read_noise=float(rng.uniform(0.002, 0.02)),
        illumination=float(rng.choice([0.0, rng.uniform(0.2, 0.6)])),
        saturated=float(rng.choice([0.0, 1e-4, 5e-4])),
        tissue=float(rng.choice([0.0, rng.uniform(0.05, 0.3)])),
        dtype=str(rng.choice(["uint8", "uint16", "float32"])),
    )
    if substructure:
        settings["nucleoli"] = float(rng.choice([0.0, rng.uniform(0.3, 1.0)]))
        settings["chromocenters"] = int(rng.integers(0, 9))
    return settings


def regime_volume(name: str, seed: int = 0, artifacts: bool = False) -> SyntheticVolume:
    """The scoring volume of a named regime (:data:`REGIMES`); with ``artifacts``, the same
    nuclei under every kind of :data:`ARTIFACT_KINDS`."""
    if name not in REGIMES:
        raise ValueError(f"unknown regime {name!r}: one of {', '.join(REGIMES)}")
    if seed >= TRAINING_SEED_BASE:
        raise ValueError(f"scoring seeds are below {TRAINING_SEED_BASE} (training uses the rest)")
    kinds = ARTIFACT_KINDS if artifacts else ()
    return make_nuclei_volume(seed=seed, artifact_kinds=kinds, **REGIMES[name])
