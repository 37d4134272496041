"""A model soup: the weights of several runs that started from the same model, averaged.

Runs fine-tuned from one starting model stay in one basin of the loss, so the mean of their
weights is itself a working model, often more robust than any one of them (Wortsman et al.,
"Model soups", ICML 2022); it costs nothing at inference. cellcut's shipped model is one
(``scripts/train_default_model.py --soup``; ``MODEL_CARD.md`` names its ingredients).

Only runs that agree on what the weights mean can be averaged: the same network kind and
architecture, normalization, input scale and cell classes. Anything else is refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from cellcut.errors import CheckpointError
from cellcut.model.checkpoint import Checkpoint


def _identity(ckpt: Checkpoint) -> dict[str, Any]:
    """What every ingredient must share for its weights to mean the same thing."""
    return {
        "kind": ckpt.kind,
        "architecture": ckpt.architecture,
        "input scale": ckpt.input_scale,
        "foreground classes": ckpt.foreground_classes,
        "normalization": (ckpt.config.get("data") or {}).get("normalization"),
        "weight names": sorted(ckpt.model),
    }


def _check_agree(ckpts: Sequence[Checkpoint], names: Sequence[str]) -> None:
    first = _identity(ckpts[0])
    for ckpt, name in zip(ckpts[1:], names[1:], strict=True):
        for key, value in _identity(ckpt).items():
            if value != first[key]:
                shown = (
                    ""
                    if key == "weight names"
                    else f" ({first[key]!r} in {names[0]}, {value!r} here)"
                )
                raise CheckpointError(
                    "cannot average these models",
                    f"their {key} differs{shown}",
                    "average only runs fine-tuned from one model with one recipe family",
                    file=name,
                )


def _mean(values: Sequence[float | None]) -> float | None:
    if any(v is None for v in values):
        return None
    return float(sum(values) / len(values))  # type: ignore[arg-type]


def average_checkpoints(paths: Sequence[str | os.PathLike]) -> Checkpoint:
    """The uniform soup of ``paths`` (checkpoint files or run folders), ready to save.

    Floating-point weights are averaged (in float64, stored in their own dtype); other tensors
    must be equal. σ_I and the class-intensity centres are averaged too; the images are the
    union of the ingredients'; step and time are summed. The training state is dropped: a
    soup is a starting point, not a run to resume.
    """
    if len(paths) < 2:
        raise CheckpointError(
            "cannot average models", "a soup needs at least two", "give two or more runs"
        )
    names = [os.fspath(p) for p in paths]
    ckpts = [Checkpoint.load(p) for p in paths]
    _check_agree(ckpts, names)
    weights: dict[str, torch.Tensor] = {}
    for key, first in ckpts[0].model.items():
        tensors = [c.model[key] for c in ckpts]
        if any(t.shape != first.shape for t in tensors):
            raise CheckpointError(
                "cannot average these models",
                f"weight {key} has different shapes",
                "average only runs of one architecture",
            )
        if first.is_floating_point():
            mean = torch.stack([t.double() for t in tensors]).mean(0)
            weights[key] = mean.to(first.dtype)
        elif all(torch.equal(t, first) for t in tensors):
            weights[key] = first.clone()
        else:
            raise CheckpointError(
                "cannot average these models",
                f"their integer tensor {key} differs",
                "average only runs of one architecture",
            )
    centres = [c.intensity_centres for c in ckpts]
    images = list(dict.fromkeys(i for c in ckpts for i in c.images))
    first = ckpts[0]
    return Checkpoint(
        architecture=first.architecture,
        model=weights,
        config=first.config,
        kind=first.kind,
        foreground_classes=list(first.foreground_classes),
        intensity_sigma=_mean([c.intensity_sigma for c in ckpts]),
        suggested_intensity_sigma=_mean([c.suggested_intensity_sigma for c in ckpts]),
        input_scale=first.input_scale,
        intensity_centres=(
            None
            if any(c is None or len(c) != len(centres[0]) for c in centres)  # type: ignore[arg-type]
            else [float(sum(v) / len(v)) for v in zip(*centres, strict=True)]  # type: ignore[misc]
        ),
        intensity_momentum=first.intensity_momentum,
        step=sum(c.step for c in ckpts),
        elapsed_s=sum(c.elapsed_s for c in ckpts),
        history=[],
        images=images,
    )
