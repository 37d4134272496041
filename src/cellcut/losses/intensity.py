"""A piecewise-constant intensity term: each class should have one brightness.

The soft N-cut alone does not prefer nuclei over a straight cut through a patch when nuclei
are sparse: on real embryo patches the half-volume split scored a lower N-cut than the true
mask at every σ_I and σ_X measured (``benchmarks/ncut_landscape.py``), and a W-Net trained on
it learned to split by position. This term, the two-phase (here K-phase) energy of Chan & Vese
with class intensities shared across the whole data set, breaks that tie:

    L = (1/V) Σ_i Σ_k p_ik (I_i - μ_k)² / s²

μ_k are class centres initialised by multi-level Otsu on the training volumes (darkest class
first) and followed by an exponential moving average of the batches' soft class means;
s = (μ_max - μ_min) / 2 fixes the scale, so a voxel halfway between the extreme centres costs 1.
Because the centres are global, a patch with no nucleus costs nothing when it is all one
class, instead of being split by position.

References
----------
T. F. Chan, L. A. Vese. Active contours without edges. IEEE TIP 10(2), 2001.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


def initial_centres(values: np.ndarray, n_classes: int) -> np.ndarray:
    """Class means of a multi-level Otsu split of ``values`` (K classes, ascending)."""
    from skimage.filters import threshold_multiotsu

    v = np.asarray(values, dtype=np.float64).ravel()
    if n_classes == 2:
        from skimage.filters import threshold_otsu

        edges = [threshold_otsu(v)]
    else:
        edges = list(threshold_multiotsu(v, classes=n_classes, nbins=256))
    bins = np.digitize(v, edges)
    return np.array(
        [v[bins == k].mean() if (bins == k).any() else np.nan for k in range(n_classes)]
    )


class ClassIntensityLoss(nn.Module):
    """Piecewise-constant intensity energy with global, slowly updated class centres.

    Parameters
    ----------
    centres
        Initial class intensities (K,), ascending, in the image's units.
    momentum
        Weight of each training batch's soft class means in the centres' moving average.
    smoothing
        Gaussian σ in voxels of the image the energy compares with (0: the image as is). On
        grainy images the raw term rewards copying the noise voxel by voxel; on a smoothed
        image it rewards regions of one brightness.

    Notes
    -----
    ``forward(probs, image)``: probs (N, K, *S), image (N, 1, *S); returns the mean over
    samples. Centres move only in training mode and never carry gradients.
    """

    def __init__(
        self, centres: np.ndarray | Tensor, momentum: float = 0.01, smoothing: float = 0.0
    ) -> None:
        super().__init__()
        c = torch.as_tensor(np.asarray(centres, dtype=np.float64), dtype=torch.float64)
        if c.ndim != 1 or len(c) < 2 or not torch.isfinite(c).all():
            raise ValueError(f"centres must be K >= 2 finite values, got {centres}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.register_buffer("centres", c)
        self.momentum = momentum
        self.smoothing = float(smoothing)

    @property
    def scale(self) -> float:
        return max(float(self.centres.max() - self.centres.min()) / 2.0, 1e-6)

    def forward(self, probs: Tensor, image: Tensor) -> Tensor:
        if probs.shape[1] != len(self.centres):
            raise ValueError(f"probs has {probs.shape[1]} classes, the centres {len(self.centres)}")
        if image.ndim == probs.ndim - 1:
            image = image.unsqueeze(1)
        # the centres may live elsewhere than the batch (a loss not moved with the model)
        mu = self.centres.to(probs.device, probs.dtype).view(1, -1, *([1] * (probs.ndim - 2)))
        x = image.detach().to(probs.dtype)
        if self.smoothing > 0:
            x = gaussian_blur(x, self.smoothing)
        energy = (probs * (x - mu) ** 2).sum(1) / self.scale**2
        if self.training and self.momentum > 0:
            with torch.no_grad():
                dims = (0, *range(2, probs.ndim))
                mass = probs.sum(dims).double()
                means = (probs * x).sum(dims).double() / mass.clamp_min(1e-12)
                update = (mass > 1e-3 * probs[:, 0].numel()).to(self.centres.device)
                means = means.to(self.centres.device)
                self.centres[update] += self.momentum * (means[update] - self.centres[update])
        return energy.flatten(1).mean(1).mean()


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (N, C, z, y, x) over the spatial axes, borders reflected
    (the kernel is cut at 3σ, or at the axis' length where that is shorter)."""
    import torch.nn.functional as F

    for axis in range(3):
        n = x.shape[2 + axis]
        radius = min(max(1, round(3 * sigma)), n - 1)
        if radius < 1:
            continue
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(t)
        weight = (kernel / kernel.sum()).view(shape).repeat(x.shape[1], 1, 1, 1, 1)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        x = F.conv3d(F.pad(x, pad, mode="reflect"), weight, groups=x.shape[1])
    return x
