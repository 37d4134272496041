"""Which of a W-Net's K soft classes are the cells, and their summed probability.

The encoder's classes have no names: after training, the cell classes are the bright ones.
Training decides them once (and writes them into the checkpoint); scoring decides them again
on the volume it scores. Both pipelines stand on this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def choose_foreground_classes(probs: torch.Tensor, image: torch.Tensor) -> list[int]:
    """Which of the K classes are the cells: those whose voxels are bright.

    Each voxel goes to its most probable class; classes are ranked by the mean image
    intensity of their voxels, and split into dark and bright groups where the between-group
    variance (weighted by voxel counts, as in Otsu's method) is largest. For K = 2 this is the
    brighter class. ``probs``: (N, K, *S); ``image``: (N, 1, *S).
    """
    k = probs.shape[1]
    hard = probs.argmax(1).flatten()
    values = image[:, 0].flatten().double()
    counts = torch.bincount(hard, minlength=k).double()
    sums = torch.bincount(hard, weights=values, minlength=k)
    means = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, -math.inf))
    order = [int(i) for i in torch.argsort(means)]
    present = [i for i in order if counts[i] > 0]
    if len(present) <= 1:
        return [order[-1]]
    total = counts[present].sum()
    grand = (means[present] * counts[present]).sum() / total
    best, best_split = -1.0, len(present) - 1
    for split in range(1, len(present)):
        hi = present[split:]
        w1 = counts[hi].sum() / total
        m1 = (means[hi] * counts[hi]).sum() / counts[hi].sum()
        m0 = (grand - w1 * m1) / (1 - w1)
        between = float(w1 * (1 - w1) * (m1 - m0) ** 2)
        if between > best:
            best, best_split = between, split
    return sorted(present[best_split:])


def foreground_probability(probs: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Probability of the cells: the sum over the foreground classes, (N, 1, *S)."""
    return probs[:, list(classes)].sum(1, keepdim=True)
