"""The supervised loss of the second stage: cross-entropy plus soft Dice, skipping ignored voxels.

``logits`` (N, C, *S) against integer ``target`` (N, *S) whose value ``ignore_index`` marks the
voxels the loss skips (:mod:`cellcut.refinement.targets`). The Dice term is the mean, over the
classes other than the background (class 0), of 1 - 2|P∩T| / (|P| + |T|) on the voxels kept,
with soft P: it keeps thin classes such as a boundary from vanishing under the cross-entropy.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class SupervisedLossOutput(NamedTuple):
    total: torch.Tensor
    cross_entropy: torch.Tensor
    dice: torch.Tensor


def dice_ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    dice_weight: float = 1.0,
    eps: float = 1.0,
) -> SupervisedLossOutput:
    """Cross-entropy + ``dice_weight`` × soft Dice over the voxels not ``ignore_index``."""
    if logits.ndim != target.ndim + 1 or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"logits {tuple(logits.shape)} do not match target {tuple(target.shape)}")
    target = target.long()
    keep = target != ignore_index
    if not bool(keep.any()):
        zero = logits.sum() * 0.0
        return SupervisedLossOutput(zero, zero, zero)
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index)
    probs = torch.softmax(logits.float(), dim=1)
    safe = torch.where(keep, target, torch.zeros_like(target))
    onehot = F.one_hot(safe, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    w = keep.unsqueeze(1).to(probs.dtype)
    dims = (0, *range(2, probs.ndim))
    inter = (probs * onehot * w).sum(dims)
    total = (probs * w).sum(dims) + (onehot * w).sum(dims)
    dice = 1.0 - (2 * inter + eps) / (total + eps)
    dice = dice[1:].mean()
    return SupervisedLossOutput(ce + dice_weight * dice, ce, dice)
