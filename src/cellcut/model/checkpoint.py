"""The model's file format: one self-describing checkpoint per run.

:class:`Checkpoint` is the one list of what a checkpoint holds: the weights and architecture
(enough to rebuild the network without the code that trained it), what inference needs (cell
classes, normalization, σ_I, input scale), and the training state that makes ``--resume``
exact (optimizer, random-number states, step, elapsed time, learning-rate scale, the loss
monitor's memory, the starting weights that ``optimizer.anchor`` pulls toward and how hard,
the starting model's cell share that ``stop.cell_share_drift`` compares with, which weights
train (``optimizer.trainable``)). It is written
and read here only: atomically, and with ``weights_only=True`` (no arbitrary code runs on
load).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cellcut._version import __version__
from cellcut.errors import CheckpointError
from cellcut.model.network import KINDS, RefinedNet3D, WNet3D, WNetArchitecture
from cellcut.outputs import atomic_output

FORMAT = "cellcut-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class Checkpoint:
    """Every field of a checkpoint file; see the module docstring."""

    # the network
    architecture: dict[str, Any]
    model: dict[str, torch.Tensor]
    config: dict[str, Any]
    kind: str = "wnet"
    # what inference and fine-tuning need
    foreground_classes: list[int] = field(default_factory=list)
    intensity_sigma: float | None = None
    suggested_intensity_sigma: float | None = None
    input_scale: float = 100.0
    intensity_centres: list[float] | None = None
    intensity_momentum: float | None = None
    # the run's record
    step: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    started_from: str | None = None  # the model a fine-tune started from
    # training state for an exact resume (absent from exported models)
    optimizer: dict[str, Any] | None = None
    sampler_rng: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    lr_scale: float = 1.0
    said: list[str] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    val_images: list[str] = field(default_factory=list)
    val_labels: list[str] = field(default_factory=list)
    final: bool = False
    ranks: list[dict[str, Any]] = field(default_factory=list)  # torchrun: each rank's RNGs
    anchor: dict[str, torch.Tensor] | None = None  # optimizer.anchor: the starting weights
    anchor_strength: float | None = None  # optimizer.anchor resolved; None: an older file
    cell_share_start: dict[str, Any] | None = None  # stop.cell_share_drift: classes, share
    trainable: str | None = None  # optimizer.trainable resolved ("auto" decided); None: "all"

    TRAINING_STATE = (
        "optimizer",
        "sampler_rng",
        "rng",
        "lr_scale",
        "said",
        "grad_norms",
        "val_images",
        "val_labels",
        "final",
        "ranks",
        "anchor",
        "anchor_strength",
        "cell_share_start",
        "trainable",
    )

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def for_inference(self) -> Checkpoint:
        """A slim copy without the training state (what a shipped model holds)."""
        kept = {name: getattr(self, name) for name in self.fields()}
        kept = {k: v for k, v in kept.items() if k not in self.TRAINING_STATE}
        kept["model"] = {k: v.clone() for k, v in self.model.items()}
        return Checkpoint(**kept)

    def build_model(self, source: str = "checkpoint") -> WNet3D | RefinedNet3D:
        """Rebuild the network (:data:`KINDS`) and load its weights."""
        if self.kind not in KINDS:
            raise CheckpointError(
                "cannot load checkpoint",
                f"its network kind {self.kind!r} is unknown to this cellcut",
                "upgrade cellcut",
                file=source,
            )
        try:
            model = KINDS[self.kind].from_architecture(WNetArchitecture(**self.architecture))
            model.load_state_dict(self.model)
        except (KeyError, TypeError, RuntimeError, ValueError) as e:
            raise CheckpointError(
                "cannot load checkpoint",
                f"its model does not match its architecture ({str(e)[:160]})",
                "the file may be damaged or from another program",
                file=source,
            ) from e
        return model

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically to ``path`` (plus the format markers)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "cellcut_version": __version__,
            **{name: getattr(self, name) for name in self.fields()},
        }
        with atomic_output(target) as tmp:
            torch.save(data, tmp)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
        """Read a checkpoint (a file, or a run folder holding one).

        Models of other tools (napari-cellseg3d state dicts and ONNX files, bioimage.io
        packages) are converted (:mod:`cellcut.model.foreign`). Raises CheckpointError when it
        is missing, corrupt, not a model cellcut reads, or newer than this version of cellcut.
        Keys that older versions wrote and this one does not know are ignored.
        """
        p = Path(path)
        if p.is_dir():
            p = p / CHECKPOINT_NAME
        if not p.exists():
            raise CheckpointError(
                "cannot load checkpoint",
                "the file does not exist",
                "give a run folder or a checkpoint/model file",
                file=p,
            )
        from cellcut.model.foreign import (
            from_bioimageio,
            from_cellseg3d,
            from_onnx,
            is_cellseg3d,
        )

        if p.suffix.lower() == ".zip" or p.name in ("rdf.yaml", "bioimageio.yaml"):
            return cls(**from_bioimageio(p))
        if p.suffix.lower() == ".onnx":
            return cls(**from_onnx(p))
        try:
            data = torch.load(p, map_location=map_location, weights_only=True)
        except Exception as e:  # torch raises many types for damaged files
            raise CheckpointError(
                "cannot load checkpoint",
                f"the file is corrupt or truncated ({type(e).__name__}: {str(e)[:120]})",
                "use an intact copy, or the previous checkpoint",
                file=p,
            ) from e
        if is_cellseg3d(data):
            return cls(**from_cellseg3d(data, os.fspath(p)))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(
                "cannot load checkpoint",
                "this is not a cellcut checkpoint",
                "give a file written by cellcut train",
                file=p,
            )
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(
                "cannot load checkpoint",
                f"written by a newer cellcut (format {data['format_version']})",
                "upgrade cellcut",
                file=p,
            )
        missing = [k for k in ("architecture", "model", "config") if k not in data]
        if missing:
            raise CheckpointError(
                "cannot load checkpoint",
                f"it lacks {', '.join(missing)}",
                "the file may be damaged or from another program",
                file=p,
            )
        known = set(cls.fields())
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, in eval mode, and what inference needs with it.

    ``foreground_classes`` is empty for a model made elsewhere that does not say which class
    holds the cells: segmentation decides it on the image, by brightness."""

    model: WNet3D | RefinedNet3D
    foreground_classes: list[int]
    normalization: str
    intensity_sigma: float | None
    input_scale: float
    source: str
    kind: str = "wnet"
    percentiles: tuple[float, float] | None = None  # of "percentile", where not the default

    @property
    def n_classes(self) -> int:
        return self.model.n_classes


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Load a trained model for inference from a run folder or checkpoint file, or a model of
    another tool (:mod:`cellcut.model.foreign`)."""
    from cellcut.model.foreign import scripted_model

    scripted = scripted_model(Path(path))
    if scripted is not None:  # a bioimage.io package of another tool: its TorchScript network
        net, percentiles = scripted
        return LoadedModel(
            model=net,  # type: ignore[arg-type]
            foreground_classes=[],
            normalization="percentile",
            intensity_sigma=None,
            input_scale=100.0,
            source=os.fspath(path),
            percentiles=percentiles,
        )
    ckpt = Checkpoint.load(path, map_location)
    model = ckpt.build_model(os.fspath(path))
    model.eval()
    undecided = not ckpt.foreground_classes and "imported_from" in ckpt.config
    classes = [] if undecided else list(ckpt.foreground_classes or [0])
    if any(not 0 <= c < model.n_classes for c in classes):
        raise CheckpointError(
            "cannot load model",
            f"its foreground classes {classes} do not exist in a model with "
            f"K={model.n_classes} classes",
            "the file was edited or mixed with another model's; retrain or re-export it",
            file=path,
        )
    return LoadedModel(
        model=model,
        foreground_classes=classes,
        normalization=ckpt.config.get("data", {}).get("normalization", "remap"),
        intensity_sigma=ckpt.intensity_sigma,
        input_scale=float(ckpt.input_scale),
        source=os.fspath(path),
        kind=ckpt.kind,
    )
