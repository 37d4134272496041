"""The W-Net's training objective: a weighted sum of soft N-cut and reconstruction."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from cellcut.losses.ncut import SoftNCutLoss
from cellcut.losses.reconstruction import ReconstructionLoss


class WNetLossOutput(NamedTuple):
    """Total loss (to back-propagate) and each term (detached, for logging)."""

    total: Tensor
    ncut: Tensor
    reconstruction: Tensor
    intensity: Tensor | None = None


class WNetLoss(nn.Module):
    """``ncut_weight · SoftNCut(probs, image) + rec_weight · Reconstruction(recon, image)``.

    One backward pass through the sum trains encoder and decoder together. The N-cut term is
    bounded in [0, 1); the reconstruction term is not (MSE on 0..100 data is in the hundreds at
    first), which is what the weights are for.

    Parameters
    ----------
    ncut
        The soft N-cut loss (default settings if None).
    reconstruction
        The reconstruction loss (MSE if None).
    ncut_weight, rec_weight
        Non-negative weights of the two terms, not both zero.
    intensity, intensity_weight
        Optional third term, :class:`~cellcut.losses.intensity.ClassIntensityLoss`, and its
        weight (see that module for why it exists).
    """

    def __init__(
        self,
        ncut: SoftNCutLoss | None = None,
        reconstruction: ReconstructionLoss | None = None,
        ncut_weight: float = 0.5,
        rec_weight: float = 0.5,
        intensity: nn.Module | None = None,
        intensity_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if ncut_weight < 0 or rec_weight < 0 or ncut_weight + rec_weight == 0:
            raise ValueError(
                f"weights must be >= 0 and not both 0, got ncut_weight={ncut_weight}, "
                f"rec_weight={rec_weight}"
            )
        self.ncut = ncut if ncut is not None else SoftNCutLoss()
        self.reconstruction = reconstruction if reconstruction is not None else ReconstructionLoss()
        self.ncut_weight = float(ncut_weight)
        self.rec_weight = float(rec_weight)
        if intensity_weight < 0 or (intensity_weight > 0 and intensity is None):
            raise ValueError("intensity_weight must be >= 0 and needs an intensity loss")
        self.intensity = intensity
        self.intensity_weight = float(intensity_weight)

    def forward(
        self, probs: Tensor, reconstruction: Tensor, image: Tensor, target: Tensor | None = None
    ) -> WNetLossOutput:
        """Loss of encoder ``probs`` (N, K, *S) and decoder ``reconstruction`` (N, 1, *S).

        ``image`` (N, 1, *S) guides the N-cut; ``target`` (default: ``image``) is what the
        decoder must reproduce.
        """
        target = image if target is None else target
        ncut = self.ncut(probs, image) if self.ncut_weight > 0 else probs.new_zeros(())
        rec = (
            self.reconstruction(reconstruction, target)
            if self.rec_weight > 0
            else reconstruction.new_zeros(())
        )
        total = self.ncut_weight * ncut + self.rec_weight * rec
        intensity = None
        if self.intensity is not None and self.intensity_weight > 0:
            intensity = self.intensity(probs, image)
            total = total + self.intensity_weight * intensity
            intensity = intensity.detach()
        return WNetLossOutput(total, ncut.detach(), rec.detach(), intensity)
