"""Refinement data: images prepared as segmentation prepares them, their targets, and random
augmented (image, target) patch pairs.

An image is denoised and normalized exactly as ``cellcut segment`` will do before the refined
model (the fingerprint's blur, the W-Net's normalization), so that the network learns from what
it will see. Patches are drawn at random, half of them centred on a pseudo-nucleus, flipped and
rotated with their targets; the image alone then gets random imaging artifacts
(:mod:`cellcut.artifacts`: the targets stay those of the nuclei), a gamma, contrast and
brightness change, blur and noise. All randomness comes from one generator whose state is
saved in checkpoints, so a resumed run draws the patches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi

from cellcut.artifacts import KINDS as ARTIFACT_KINDS
from cellcut.artifacts import apply_artifacts
from cellcut.config import RefineConfig
from cellcut.normalize import fit_normalization
from cellcut.refinement.targets import BOUNDARY, IGNORE, INTERIOR
from cellcut.training.data import crop_with_reflection, denoised


@dataclass
class RefineVolume:
    """One image ready for refinement, with its targets."""

    name: str
    image: torch.Tensor  # (z, y, x) float32, denoised and normalized
    target: torch.Tensor  # (z, y, x) uint8: 0, 1, 2 or IGNORE
    voxel_size: tuple[float, float, float] | None
    centres: np.ndarray  # (n, 3) interior voxels, for foreground-biased patches
    base: float  # the normalized image's background level (median)
    level: float  # a nucleus' brightness above it


def prepare_volume(
    name: str,
    image: np.ndarray,
    target: np.ndarray,
    voxel_size: Sequence[float] | None,
    normalization: str,
    denoise: float | str = "auto",
) -> RefineVolume:
    """Denoise (``denoise`` µm, or the fingerprint's rule) and normalize ``image`` as
    segmentation does."""
    data = denoised(np.asarray(image), voxel_size, denoise)
    norm = fit_normalization(data, normalization, source=name)
    x = np.asarray(norm(np.asarray(data, dtype=np.float32)), dtype=np.float32)
    centres = np.argwhere(target == INTERIOR)
    if len(centres) > 100_000:
        pick = np.random.default_rng(0).choice(len(centres), 100_000, replace=False)
        centres = centres[pick]
    fg = (target == INTERIOR) | (target == BOUNDARY)
    base = float(np.median(x[~fg])) if (~fg).any() else float(np.median(x))
    inside = x[fg] if fg.any() else x
    level = max(float(np.percentile(inside, 75)) - base, 1e-3)
    vs = tuple(float(v) for v in voxel_size) if voxel_size else None
    return RefineVolume(
        name, torch.from_numpy(x), torch.from_numpy(np.asarray(target, np.uint8)), vs,  # type: ignore[arg-type]
        centres, base, level,
    )  # fmt: skip


class PairSampler:
    """Random augmented (image, target) patches from :class:`RefineVolume` s."""

    def __init__(self, volumes: Sequence[RefineVolume], cfg: RefineConfig, seed: int = 0) -> None:
        self.volumes = list(volumes)
        self.cfg = cfg
        self.size = tuple(int(s) for s in cfg.patch_size)
        self.rng = np.random.default_rng(seed)
        sizes = np.asarray([float(v.image.numel()) for v in self.volumes])
        self.weights = sizes / sizes.sum()

    def _start(self, vol: RefineVolume) -> list[int]:
        rng = self.rng
        if len(vol.centres) and rng.random() < self.cfg.foreground_bias:
            centre = vol.centres[rng.integers(len(vol.centres))]
            return [int(c) - p // 2 for c, p in zip(centre, self.size, strict=True)]
        return [
            int(rng.integers(0, s - p + 1)) if s >= p else -int(rng.integers(0, p - s + 1))
            for s, p in zip(vol.image.shape, self.size, strict=True)
        ]

    def _geometric(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dims = [d for d in range(3) if self.rng.random() < 0.5]
        if dims:
            x, y = torch.flip(x, dims), torch.flip(y, dims)
        k = (
            int(self.rng.integers(0, 4))
            if x.shape[1] == x.shape[2]
            else 2 * int(self.rng.integers(0, 2))
        )
        if k:
            x, y = torch.rot90(x, k, dims=(1, 2)), torch.rot90(y, k, dims=(1, 2))
        return x, y

    def _artifacts(self, x: np.ndarray, y: np.ndarray, vol: RefineVolume) -> np.ndarray:
        rng, cfg = self.rng, self.cfg
        if cfg.artifacts <= 0 or rng.random() >= cfg.artifacts:
            return x
        kinds = rng.choice(ARTIFACT_KINDS, size=int(rng.integers(1, 4)), replace=False)
        avoid = (y == INTERIOR) | (y == BOUNDARY)
        return apply_artifacts(
            x, list(kinds), rng, voxel_size=vol.voxel_size, level=vol.level, base=vol.base,
            top=float(x.max()) + vol.level, avoid=avoid,
        )  # fmt: skip

    def _photometric(self, x: np.ndarray, vol: RefineVolume) -> np.ndarray:
        rng, cfg = self.rng, self.cfg
        span = max(vol.level, 1e-3)
        if cfg.gamma:
            gamma = float(np.exp(rng.uniform(-cfg.gamma, cfg.gamma)))
            u = np.clip((x - vol.base) / (4 * span), 0, None)
            x = vol.base + 4 * span * u**gamma
        scale = 1.0 + rng.uniform(-cfg.intensity_scale, cfg.intensity_scale)
        shift = rng.uniform(-cfg.intensity_shift, cfg.intensity_shift) * span
        x = (x - vol.base) * scale + vol.base + shift
        sigma = float(rng.uniform(0, cfg.blur)) if cfg.blur else 0.0
        if sigma > 0.3:
            x = ndi.gaussian_filter(x, sigma)
        if cfg.noise:
            x = x + rng.normal(0, cfg.noise * span * rng.uniform(0, 1), x.shape)
        return np.asarray(x, dtype=np.float32)

    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One patch (1, z, y, x) float32 and its target (z, y, x) int64."""
        vol = self.volumes[int(self.rng.choice(len(self.volumes), p=self.weights))]
        start = self._start(vol)
        full = tuple(slice(0, s) for s in vol.image.shape)
        x = crop_with_reflection(vol.image, full, start, self.size)
        y = crop_with_reflection(vol.target, full, start, self.size)
        x, y = self._geometric(x, y)
        xn, yn = x.contiguous().numpy(), y.contiguous().numpy()
        xn = self._photometric(self._artifacts(xn, yn, vol), vol)
        return torch.from_numpy(np.ascontiguousarray(xn))[None], torch.from_numpy(
            yn.astype(np.int64)
        )

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.pair() for _ in range(n)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


__all__ = ["IGNORE", "PairSampler", "RefineVolume", "prepare_volume"]
