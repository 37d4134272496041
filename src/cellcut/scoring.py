"""Scoring a W-Net against ground truth the way its output is used.

Class probabilities -> cell classes (by brightness) -> foreground probability -> Voronoi-Otsu
instances -> Dice and instance F1. Training's validation, the defaults sweep and the embryo
benchmark all score through here, so that a figure means the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cellcut.infer import sliding_window
from cellcut.metrics import Evaluation, evaluate
from cellcut.model.classes import choose_foreground_classes, foreground_probability
from cellcut.postprocess import instances


def score_class_probabilities(
    probs: np.ndarray,
    image: np.ndarray,
    labels: np.ndarray,
    voxel_size: Sequence[float] | None = None,
    spot_sigma: float | str = "auto",
) -> tuple[Evaluation, np.ndarray]:
    """Score a W-Net's class probabilities against ground-truth labels.

    The cell classes are picked by brightness on ``image``
    (:func:`cellcut.model.classes.choose_foreground_classes`), their summed probability is
    split into instances by Voronoi-Otsu, and the result is compared with ``labels``
    (:func:`cellcut.metrics.evaluate`, IoU threshold 0.5 only). ``probs``: (K, z, y, x).
    Returns the :class:`~cellcut.metrics.Evaluation` and the foreground probability.
    """
    t = torch.as_tensor(np.asarray(probs, dtype=np.float32))[None]
    img = torch.as_tensor(np.asarray(image, dtype=np.float32))[None, None]
    classes = choose_foreground_classes(t, img)
    fg = foreground_probability(t, classes)[0, 0].numpy()
    pred = instances(
        fg, "voronoi-otsu", voxel_size=voxel_size, probability=True, spot_sigma=spot_sigma
    )
    return evaluate(labels, pred, thresholds=(0.5,)), fg


def score_model(
    model: torch.nn.Module,
    image: np.ndarray,
    labels: np.ndarray,
    voxel_size: Sequence[float] | None,
    *,
    input_scale: float,
    window: Sequence[int],
    device: torch.device | str = "cpu",
) -> Evaluation:
    """Segment a normalized, labelled volume with a W-Net as it is and score it."""
    probs = sliding_window(
        image,
        lambda b: model.encode(b / input_scale),
        model.n_classes,
        window=window,
        overlap=0.25,
        device=device,
    )
    evaluation, _ = score_class_probabilities(probs, image, labels, voxel_size)
    return evaluation
