"""Losses of the W-Net (the soft normalized cut, reconstruction, and their weighted sum) and of
the supervised second stage (cross-entropy plus Dice)."""

from cellcut.losses.ncut import SoftNCutLoss
from cellcut.losses.reconstruction import ReconstructionLoss
from cellcut.losses.supervised import SupervisedLossOutput, dice_ce_loss
from cellcut.losses.wnet import WNetLoss, WNetLossOutput

__all__ = [
    "ReconstructionLoss",
    "SoftNCutLoss",
    "SupervisedLossOutput",
    "WNetLoss",
    "WNetLossOutput",
    "dice_ce_loss",
]
