"""Losses of the W-Net: the soft normalized cut, reconstruction, and their weighted sum."""

from cellcut.losses.ncut import SoftNCutLoss
from cellcut.losses.reconstruction import ReconstructionLoss
from cellcut.losses.wnet import WNetLoss, WNetLossOutput

__all__ = ["ReconstructionLoss", "SoftNCutLoss", "WNetLoss", "WNetLossOutput"]
