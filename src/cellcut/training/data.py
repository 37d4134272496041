"""Training data: volumes (files or arrays) -> normalized tensors -> random, augmented patches.

Volumes (files, folders, globs, zarr stores, or in-memory arrays) are read once, normalized per
volume as configured, and kept as float32 tensors. Volumes smaller than a patch are padded by
reflection, never with zeros. A slab of each volume (the last ``val_fraction`` along its
longest axis) is held back for validation patches; where that slab would be thinner than a
patch, validation patches are fixed sub-volumes of the whole volume instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from cellcut.config import AugmentConfig, DataConfig
from cellcut.errors import VolumeError
from cellcut.fingerprint import measure
from cellcut.io import (
    Volume,
    check_volume_array,
    check_volume_values,
    check_voxel_size,
    find_volumes,
    read_volume,
)
from cellcut.normalize import Normalization, fit_normalization
from cellcut.postprocess import sigma_voxels


@dataclass
class TrainingVolume:
    """A normalized volume with its training and validation regions."""

    name: str
    data: torch.Tensor  # (z, y, x) float32
    voxel_size: tuple[float, float, float] | None
    normalization: Normalization
    train_region: tuple[slice, slice, slice]
    val_region: tuple[slice, slice, slice] | None
    bright_voxels: np.ndarray  # (n, 3) candidate patch centres for foreground-biased sampling


def _regions(shape: Sequence[int], val_fraction: float, patch_size: Sequence[int]):
    """Training and validation regions: the last ``val_fraction`` of the longest axis is held
    back, unless that slab is thinner than a patch; then validation patches are real
    sub-volumes of the whole volume (overlapping the training data) rather than a thin slab
    mirrored up to a patch's size."""
    full = tuple(slice(0, s) for s in shape)
    if val_fraction <= 0:
        return full, None
    axis = int(np.argmax(shape))
    n_val = max(1, round(shape[axis] * val_fraction))
    if n_val < min(patch_size[axis], shape[axis]):
        return full, full
    if shape[axis] - n_val < 1:
        return full, None
    train = list(full)
    val = list(full)
    train[axis] = slice(0, shape[axis] - n_val)
    val[axis] = slice(shape[axis] - n_val, shape[axis])
    return tuple(train), tuple(val)


Source = str | os.PathLike | np.ndarray | Volume
"""A training volume: a path, folder or glob, or an in-memory (z, y, x) array or Volume."""


def _prepare(
    data: np.ndarray, name: str, source: str, voxel_size, config: DataConfig
) -> TrainingVolume:
    """Denoise (``config.denoise``) and normalize a (z, y, x) array and find its regions and
    bright voxels."""
    data = denoised(data, voxel_size, config.denoise)
    norm = fit_normalization(data, config.normalization, source=source)
    x = torch.from_numpy(norm(data))
    train, val = _regions(x.shape, config.val_fraction, config.patch_size)
    sub = x[train].numpy()
    from skimage.filters import threshold_otsu

    t = threshold_otsu(sub[:: max(1, sub.shape[0] // 32)])
    coords = np.argwhere(sub > t)
    if len(coords) > 100_000:
        coords = coords[np.random.default_rng(0).choice(len(coords), 100_000, replace=False)]
    return TrainingVolume(name, x, voxel_size, norm, train, val, coords)


def denoised(
    data: np.ndarray, voxel_size: Sequence[float] | None, denoise: float | str
) -> np.ndarray:
    """``data`` blurred as segmentation blurs it before the model: by ``denoise`` µm, or with
    "auto" by the fingerprint's σ (grainy volumes only); unchanged when that is 0."""
    sigma = measure(data, voxel_size).denoise_sigma() if denoise == "auto" else float(denoise)
    if sigma <= 0:
        return data
    return ndi.gaussian_filter(np.asarray(data, dtype=np.float32), sigma_voxels(sigma, voxel_size))


def load_volume(location: str, config: DataConfig) -> TrainingVolume:
    """Read and normalize one volume file for training."""
    vol = read_volume(location, channel=config.channel)
    voxel_size = config.voxel_size or vol.voxel_size
    return _prepare(vol.numpy(), Path(location).name, location, voxel_size, config)


def array_volume(source: np.ndarray | Volume, index: int, config: DataConfig) -> TrainingVolume:
    """Normalize one in-memory volume for training (voxel size: the config's, else the
    Volume's)."""
    vol = source if isinstance(source, Volume) else Volume(source, None, f"array {index}")
    data = np.asarray(vol.data)
    check_volume_array(data, vol.source)
    check_volume_values(data, vol.source)
    voxel_size = config.voxel_size or (
        check_voxel_size(vol.voxel_size) if vol.voxel_size is not None else None
    )
    return _prepare(data, vol.source, vol.source, voxel_size, config)


def is_path(source: Source) -> bool:
    return isinstance(source, (str, os.PathLike))


def load_volumes(sources: Sequence[Source], config: DataConfig) -> list[TrainingVolume]:
    """Find, read and normalize all training volumes, in the order given."""
    volumes: list[TrainingVolume] = []
    for i, source in enumerate(sources):
        if is_path(source):
            volumes += [load_volume(p, config) for p in find_volumes([source])]
        else:
            volumes.append(array_volume(source, i, config))
    if not volumes:
        find_volumes([])  # raises: no image was given
    return volumes


def crop_with_reflection(
    x: torch.Tensor, region: tuple[slice, ...], start: Sequence[int], size: Sequence[int]
) -> torch.Tensor:
    """A ``size`` crop at ``start`` (relative to ``region``), reflected where it leaves it."""
    sub = x[region]
    idx = []
    for s0, n, length in zip(start, size, sub.shape, strict=True):
        i = np.arange(s0, s0 + n)
        if length == 1:
            i = np.zeros_like(i)
        else:
            period = 2 * (length - 1)
            i = np.abs(np.mod(i, period))
            i = np.where(i >= length, period - i, i)
        idx.append(torch.from_numpy(i))
    return sub[idx[0][:, None, None], idx[1][None, :, None], idx[2][None, None, :]]


class PatchSampler:
    """Draws random training patches, optionally centred on bright voxels, and augments them.

    All randomness comes from one ``numpy.random.Generator`` whose state is saved in
    checkpoints, so a resumed run draws the same patches as an uninterrupted one.
    """

    def __init__(
        self,
        volumes: Sequence[TrainingVolume],
        patch_size: Sequence[int],
        augment: AugmentConfig,
        foreground_bias: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not volumes:
            raise VolumeError("no training volumes", "the list is empty", "give some images")
        self.volumes = list(volumes)
        self.patch_size = tuple(int(s) for s in patch_size)
        self.augment = augment
        self.foreground_bias = foreground_bias
        self.rng = np.random.default_rng(seed)
        sizes = [float(np.prod([r.stop - r.start for r in v.train_region])) for v in volumes]
        self.weights = np.asarray(sizes) / sum(sizes)

    def _start(self, vol: TrainingVolume) -> list[int]:
        shape = [r.stop - r.start for r in vol.train_region]
        if (
            self.foreground_bias > 0
            and len(vol.bright_voxels)
            and (self.rng.random() < self.foreground_bias)
        ):
            centre = vol.bright_voxels[self.rng.integers(len(vol.bright_voxels))]
            return [int(c) - p // 2 for c, p in zip(centre, self.patch_size, strict=True)]
        return [
            int(self.rng.integers(0, s - p + 1))
            if s >= p
            else -int(self.rng.integers(0, p - s + 1))
            for s, p in zip(shape, self.patch_size, strict=True)
        ]

    def _geometric(self, patch: torch.Tensor) -> torch.Tensor:
        a, rng = self.augment, self.rng
        if a.flips:
            dims = [d for d in range(3) if rng.random() < 0.5]
            if dims:
                patch = torch.flip(patch, dims)
        if a.rotations:
            square = patch.shape[1] == patch.shape[2]
            k = int(rng.integers(0, 4)) if square else 2 * int(rng.integers(0, 2))
            if k:
                patch = torch.rot90(patch, k, dims=(1, 2))
        return patch

    def _photometric(self, patch: torch.Tensor) -> torch.Tensor:
        """Gamma, contrast and brightness, blur, noise (each only where configured)."""
        a, rng = self.augment, self.rng
        if a.gamma:
            gamma = float(np.exp(rng.uniform(-a.gamma, a.gamma)))
            patch = 100.0 * (patch.clamp_min(0) / 100.0) ** gamma
        if a.intensity_scale or a.intensity_shift:
            scale = 1.0 + rng.uniform(-a.intensity_scale, a.intensity_scale)
            shift = rng.uniform(-a.intensity_shift, a.intensity_shift) * 100.0
            patch = patch * scale + shift
        if a.blur:
            from cellcut.losses.intensity import gaussian_blur

            sigma = float(rng.uniform(0, a.blur))
            if sigma > 0.2:
                patch = gaussian_blur(patch[None, None], sigma)[0, 0]
        if a.noise:
            g = torch.Generator().manual_seed(int(rng.integers(2**31)))
            std = a.noise * 100.0 * (float(rng.uniform(0, 1)) if a.input_only else 1.0)
            patch = patch + torch.randn(patch.shape, generator=g) * std
        return patch

    def _draw(self) -> torch.Tensor:
        vol = self.volumes[int(self.rng.choice(len(self.volumes), p=self.weights))]
        start = self._start(vol)
        crop = crop_with_reflection(vol.data, vol.train_region, start, self.patch_size)
        return self._geometric(crop)

    def patch(self) -> torch.Tensor:
        """One augmented patch (1, z, y, x)."""
        return self._photometric(self._draw()).contiguous()[None]

    def batch(self, batch_size: int) -> torch.Tensor:
        """A batch of patches (B, 1, z, y, x)."""
        return torch.stack([self.patch() for _ in range(batch_size)])

    def pair(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Target and network input (B, 1, z, y, x): the same crops, the input alone with the
        intensity changes when ``augment.input_only`` (else both are the augmented patch)."""
        if not self.augment.input_only:
            batch = self.batch(batch_size)
            return batch, batch
        crops = [self._draw().contiguous() for _ in range(batch_size)]
        seen = [self._photometric(c).contiguous() for c in crops]
        return torch.stack(crops)[:, None], torch.stack(seen)[:, None]

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def validation_patches(
    volumes: Sequence[TrainingVolume], patch_size: Sequence[int], n: int, seed: int = 1234
) -> torch.Tensor | None:
    """``n`` fixed patches from the held-back regions (reflected where a region is small)."""
    pool = [v for v in volumes if v.val_region is not None]
    if n <= 0 or not pool:
        return None
    rng = np.random.default_rng(seed)
    patches = []
    for i in range(n):
        vol = pool[i % len(pool)]
        shape = [r.stop - r.start for r in vol.val_region]
        start = [
            int(rng.integers(0, s - p + 1)) if s >= p else 0
            for s, p in zip(shape, patch_size, strict=True)
        ]
        patches.append(crop_with_reflection(vol.data, vol.val_region, start, patch_size)[None])
    return torch.stack(patches)


def fixed_patches(
    volumes: Sequence[TrainingVolume],
    patch_size: Sequence[int],
    augment: AugmentConfig,
    foreground_bias: float,
    n: int,
    seed: int,
) -> torch.Tensor:
    """``n`` patches drawn like training ones (same size and foreground bias), unaugmented."""
    plain = augment.model_copy(
        update={
            "flips": False,
            "rotations": False,
            "intensity_scale": 0.0,
            "intensity_shift": 0.0,
            "noise": 0.0,
        }
    )
    return PatchSampler(volumes, patch_size, plain, foreground_bias, seed=seed).batch(n)
