"""Reconstruction losses of the W-Net's decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReconstructionLoss(nn.Module):
    """Mean squared error or binary cross-entropy between the decoder output and the input.

    Parameters
    ----------
    kind
        ``"mse"``: mean of (output - target)², on the target's own scale (0..100 after the
        default normalization, so values can be large: weight it accordingly).
        ``"bce"``: binary cross-entropy of sigmoid(output) against the target rescaled to 0..1
        per sample (min-max); bounded, the reference plugin's advice for poor reconstructions.
    reduction
        ``"mean"`` or ``"none"`` (one value per sample).

    Notes
    -----
    ``forward(output, target)``: both (N, 1, *spatial) (or equal shapes). For ``bce`` the output
    is taken as logits, which is numerically safer than a separate sigmoid.
    """

    def __init__(self, kind: str = "mse", reduction: str = "mean") -> None:
        super().__init__()
        if kind not in ("mse", "bce"):
            raise ValueError(f"kind must be 'mse' or 'bce', got {kind!r}")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        self.kind = kind
        self.reduction = reduction

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        if output.shape != target.shape:
            raise ValueError(
                f"output shape {tuple(output.shape)} does not match target {tuple(target.shape)}"
            )
        if output.ndim < 2:
            raise ValueError(f"expected (N, C, *spatial) tensors, got shape {tuple(output.shape)}")
        target = target.detach().to(output.dtype)
        dims = tuple(range(1, output.ndim))
        if self.kind == "mse":
            per_sample = ((output - target) ** 2).mean(dims)
        else:
            lo = target.amin(dim=dims, keepdim=True)
            hi = target.amax(dim=dims, keepdim=True)
            scaled = (target - lo) / (hi - lo).clamp_min(torch.finfo(target.dtype).tiny)
            per_sample = F.binary_cross_entropy_with_logits(output, scaled, reduction="none").mean(
                dims
            )
        return per_sample.mean() if self.reduction == "mean" else per_sample
