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
        ``"float32"`` (values about 0..1) or ``"uint16"`` (scaled by 4000).

    Returns
    -------
    SyntheticVolume
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be three sizes >= 4, got {shape}")
    vs = np.asarray(voxel_size, dtype=float)
    if vs.shape != (3,) or (vs <= 0).any():
        raise ValueError(f"voxel_size must be three positive numbers, got {voxel_size}")
    rng = np.random.default_rng(seed)
    extent = np.asarray(shape) * vs
    mean_r = float(np.mean(radius_um))
    if n_nuclei is None:
        n_nuclei = max(1, int(0.12 * np.prod(extent) / (4 / 3 * np.pi * mean_r**3)))
    nuclei = _place_nuclei(rng, extent, n_nuclei, radius_um, elongation, touching)
    labels, signal = _draw_nuclei(rng, shape, vs, nuclei, brightness)

    grain = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), 1.0 / vs * 0.8)
    grain /= grain.std() + 1e-12
    signal *= 1.0 + texture * grain * (labels > 0)

    artifacts = np.zeros(shape, dtype=bool)
    for _ in range(n_artifacts):
        c = (rng.uniform(0, 1, size=3) * np.asarray(shape)).astype(int)
        rad = max(1, round(1.5 / vs.min()))
        box = tuple(slice(max(0, a - rad), a + rad + 1) for a in c)
        artifacts[box] = True
    signal[artifacts] = 3.0

    image = _image(rng, signal, vs, psf_sigma_um, background, background_gradient, photons)
    noise = rng.normal(0, read_noise, size=shape).astype(np.float32)
    image = np.clip(image + noise, 0, None).astype(np.float32)
    if dtype == "uint16":
        image = np.clip(np.round(image * 4000), 0, 65535).astype(np.uint16)
    elif dtype != "float32":
        raise ValueError(f"dtype must be 'float32' or 'uint16', got {dtype!r}")
    return SyntheticVolume(
        image=image,
        labels=labels,
        voxel_size=tuple(float(v) for v in vs),  # type: ignore[arg-type]
        artifacts=artifacts,
    )


def _place_nuclei(rng, extent, n_nuclei, radius_um, elongation, touching) -> list[tuple]:
    """Centres, semi-axes and rotations: some free (not overlapping), some touching an
    earlier nucleus."""
    centres: list[np.ndarray] = []
    radii: list[np.ndarray] = []
    rotations: list[np.ndarray] = []
    for _ in range(n_nuclei * 40):
        if len(centres) == n_nuclei:
            break
        r_mean = rng.uniform(*radius_um)
        axes_r = r_mean * (1 + elongation * rng.uniform(-1, 1, size=3))
        if centres and rng.random() < touching:
            j = rng.integers(len(centres))
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            c = centres[j] + direction * (radii[j].mean() + axes_r.mean()) * 0.95
        else:
            c = rng.uniform(0, 1, size=3) * extent
        if ((c < -0.3 * axes_r.mean()) | (c > extent + 0.3 * axes_r.mean())).any():
            continue
        gaps = [
            np.linalg.norm(c - cj) / (axes_r.mean() + rj.mean())
            for cj, rj in zip(centres, radii, strict=True)
        ]
        if gaps and min(gaps) < 0.85:
            continue
        centres.append(c)
        radii.append(axes_r)
        rotations.append(_random_rotation(rng))
    return list(zip(centres, radii, rotations, strict=True))


def _draw_nuclei(rng, shape, vs, nuclei, brightness) -> tuple[np.ndarray, np.ndarray]:
    """Labels (consecutive ids; a voxel goes to the nucleus it is deepest in) and signal."""
    labels = np.zeros(shape, dtype=np.int32)
    best = np.full(shape, np.inf, dtype=np.float32)  # normalised distance of the owner
    signal = np.zeros(shape, dtype=np.float32)
    for idx, (c, r, rot) in enumerate(nuclei, start=1):
        lo = np.maximum(np.floor((c - r.max()) / vs).astype(int) - 1, 0)
        hi = np.minimum(np.ceil((c + r.max()) / vs).astype(int) + 2, shape)
        if (hi <= lo).any():
            continue
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
        rel = np.stack([(g + 0.5) * s - cc for g, s, cc in zip(grids, vs, c, strict=True)], -1)
        local = rel @ rot  # coordinates in the nucleus' own frame
        dist = np.sqrt(((local / r) ** 2).sum(-1)).astype(np.float32)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
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
