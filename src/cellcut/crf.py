"""A dense CRF on a foreground probability, as the W-Net paper post-processes its output.

Mean-field inference (Krähenbühl & Koltun 2011) of a two-label (background, foreground) CRF
whose unary term is the network's probability and whose pairwise term is a Potts penalty
weighted by two Gaussian kernels: an *appearance* kernel (near voxels of similar intensity
should agree) and a *smoothness* kernel (near voxels should agree). Distances are physical
(µm, from the voxel size), so an anisotropic volume is smoothed as much along z as across.

The kernels are truncated to a window of at most :data:`MAX_RADIUS` voxels per axis (two
sigmas of the wider kernel, in µm, where the voxels are larger): the window keeps the work
linear in the volume (no permutohedral lattice), at 5 mean-field updates × up to 124
neighbours. The weights are not normalized over the window, so on fine voxels (many neighbours
within a sigma) the pairwise term weighs more. Everything runs in PyTorch on the given device;
no pydensecrf.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

CRF_ITERATIONS = 5
SPATIAL_UM = 3.0
SMOOTHNESS_UM = 1.0
MAX_RADIUS = 2
"""Defaults: mean-field updates, kernel widths (µm), and the window's reach per axis (voxels)."""


def window_radius(
    voxel_size: Sequence[float] | None,
    spatial_um: float = SPATIAL_UM,
    smoothness_um: float = SMOOTHNESS_UM,
) -> list[int]:
    """Voxels per axis the kernels reach: two of the wider kernel's sigmas, at most
    :data:`MAX_RADIUS`."""
    vs = voxel_size if voxel_size is not None else (1.0, 1.0, 1.0)
    reach = 2.0 * max(spatial_um, smoothness_um)
    return [max(0, min(math.floor(reach / v), MAX_RADIUS)) for v in vs]


def dense_crf(
    probability: np.ndarray,
    image: np.ndarray,
    voxel_size: Sequence[float] | None = None,
    *,
    iterations: int = CRF_ITERATIONS,
    spatial_um: float = SPATIAL_UM,
    intensity_sigma: float = 10.0,
    appearance_weight: float = 3.0,
    smoothness_um: float = SMOOTHNESS_UM,
    smoothness_weight: float = 1.0,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """The mean-field CRF's foreground probability (same shape, float32).

    Parameters
    ----------
    probability
        (z, y, x) foreground probability in [0, 1].
    image
        (z, y, x) intensities on the scale of ``intensity_sigma`` (cellcut's normalized
        0..100 image: σ 10 calls intensities ten apart dissimilar).
    voxel_size
        (z, y, x) µm; the spatial sigmas are in µm (voxels without).
    iterations
        Mean-field updates.
    spatial_um, intensity_sigma, appearance_weight
        The appearance kernel: w·exp(-d²/2θα² - ΔI²/2θβ²).
    smoothness_um, smoothness_weight
        The smoothness kernel: w·exp(-d²/2θγ²).
    """
    vs = np.asarray(voxel_size if voxel_size is not None else (1.0, 1.0, 1.0), dtype=float)
    p = torch.as_tensor(np.asarray(probability, dtype=np.float32), device=device)
    img = torch.as_tensor(np.asarray(image, dtype=np.float32), device=device)
    eps = 1e-6
    unary = torch.stack([-torch.log((1 - p).clamp_min(eps)), -torch.log(p.clamp_min(eps))])
    radius = window_radius(voxel_size, spatial_um, smoothness_um)
    offsets = [o for o in itertools.product(*[range(-r, r + 1) for r in radius]) if any(o)]
    kernels = []
    for off in offsets:
        d2 = float(sum((o * v) ** 2 for o, v in zip(off, vs, strict=True)))
        kernels.append((appearance_weight * math.exp(-d2 / (2 * spatial_um**2)),
                        smoothness_weight * math.exp(-d2 / (2 * smoothness_um**2))))  # fmt: skip
    q = torch.softmax(-unary, dim=0)
    for _ in range(iterations):
        message = torch.zeros_like(q)
        for off, (appearance, smooth) in zip(offsets, kernels, strict=True):
            # the weights are recomputed each time: kept, they would take a volume per offset
            w = appearance * torch.exp((img - _shift(img, off)) ** 2 / (-2 * intensity_sigma**2))
            message += (w + smooth) * _shift(q, off)
        # Potts: a label pays for the neighbours' mass on the other label
        q = torch.softmax(-(unary + message.flip(0)), dim=0)
    return q[1].cpu().numpy().astype(np.float32)


def _shift(x: torch.Tensor, offset: Sequence[int]) -> torch.Tensor:
    """``x`` at ``position + offset`` (replicated at the borders), over the last 3 axes."""
    pads: list[int] = []
    for o in reversed(offset):
        pads += [max(0, -o), max(0, o)]
    lead = x.ndim - 3
    padded = torch.nn.functional.pad(x.reshape(1, -1, *x.shape[-3:]), pads, mode="replicate")
    padded = padded.reshape(*x.shape[:lead], *padded.shape[-3:])
    index = [slice(None)] * lead
    for o, n in zip(offset, x.shape[-3:], strict=True):
        start = max(0, -o) + o
        index.append(slice(start, start + n))
    return padded[tuple(index)]
