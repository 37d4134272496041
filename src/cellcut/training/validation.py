"""Validation during training: losses on held-back patches, scores on labelled volumes.

The held-back patches come from each volume's validation slab (:mod:`cellcut.training.data`).
Labelled volumes (``--val-labels``) are segmented by the model as it is and scored through
:mod:`cellcut.scoring`, the same path as every other quality figure of cellcut.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cellcut.config import TrainConfig
from cellcut.errors import ConfigError
from cellcut.io import find_volumes, read_volume
from cellcut.losses import WNetLoss
from cellcut.model import WNet3D
from cellcut.normalize import fit_normalization
from cellcut.scoring import score_model
from cellcut.training.data import Source, is_path


@dataclass
class LabelledVolume:
    image: np.ndarray  # normalized like the training volumes
    labels: np.ndarray
    voxel_size: tuple[float, float, float] | None


def load_labelled(
    images: Sequence[Source],
    val_images: Sequence[str | os.PathLike] | None,
    val_labels: Sequence[str | os.PathLike] | None,
    cfg: TrainConfig,
) -> list[LabelledVolume]:
    """Labelled validation volumes, paired in order (``val_images`` default: the training
    files)."""
    if not val_labels:
        return []
    imgs = find_volumes(val_images or [s for s in images if is_path(s)])
    labs = find_volumes(val_labels)
    if len(imgs) != len(labs):
        raise ConfigError(
            "invalid validation data",
            f"{len(labs)} label volume(s) for {len(imgs)} image(s)",
            "give one label volume per validation image, in the same order",
        )
    out = []
    for ip, lp in zip(imgs, labs, strict=True):
        img = read_volume(ip, channel=cfg.data.channel)
        lab = read_volume(lp, validate=False)
        if lab.shape != img.shape:
            raise ConfigError(
                "invalid validation data",
                f"labels {lab.shape} and image {img.shape} differ in shape",
                "pair each image with its own labels",
                file=lp,
            )
        data = img.numpy()
        norm = fit_normalization(data, cfg.data.normalization, source=ip)
        out.append(
            LabelledVolume(
                norm(data), lab.numpy().astype(np.int32), cfg.data.voxel_size or img.voxel_size
            )
        )
    return out


class Validator:
    """Computes the ``val_*`` columns of ``metrics.csv`` for a model as it is."""

    def __init__(
        self,
        patches: torch.Tensor | None,
        labelled: list[LabelledVolume],
        window: Sequence[int],
        device: torch.device,
        input_scale: float,
    ) -> None:
        self.patches = patches
        self.labelled = labelled
        self.window = window
        self.device = device
        self.input_scale = input_scale

    def __call__(self, model: WNet3D, loss_fn: WNetLoss) -> dict[str, float]:
        result: dict[str, float] = {}
        if self.patches is None and not self.labelled:
            return result
        model.eval()
        loss_fn.eval()  # class centres do not move on validation data
        with torch.inference_mode():
            if self.patches is not None:
                result.update(self._losses(model, loss_fn))
            if self.labelled:
                scores = [self._score(model, item) for item in self.labelled]
                result["val_dice"] = float(np.mean([s.dice for s in scores]))
                result["val_f1"] = float(np.mean([s.f1_50 for s in scores]))
        model.train()
        loss_fn.train()
        return result

    def _losses(self, model: WNet3D, loss_fn: WNetLoss) -> dict[str, float]:
        x = self.patches.to(self.device)
        out = model(x / self.input_scale)
        losses = loss_fn(out.probs.float(), out.reconstruction.float(), x, x / self.input_scale)
        return {
            "val_ncut": float(losses.ncut),
            "val_reconstruction": float(losses.reconstruction),
            "val_intensity": None if losses.intensity is None else float(losses.intensity),
            "val_total": float(losses.total),
        }

    def _score(self, model: WNet3D, item: LabelledVolume):
        return score_model(
            model,
            item.image,
            item.labels,
            item.voxel_size,
            input_scale=self.input_scale,
            window=self.window,
            device=self.device,
        )
