"""Setting a training run up: fresh, from a pretrained model (fine-tuning), or restored.

:func:`open_session` returns a :class:`Session`, everything the loop needs: volumes, model,
optimizer, loss, patch sampler, validator, loss monitor. Where a run is resumed, every piece
comes back from its checkpoint (weights, optimizer, random states, σ_I, class centres, the
monitor's memory, the learning-rate scale, the time already spent), so that the resumed run
continues exactly where it stopped; this is the only place where resuming acts.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import cellcut.training.parallel as parallel
from cellcut.config import AUTO_ANCHOR, TrainConfig, apply_overrides, build_config
from cellcut.errors import CheckpointError, ConfigError
from cellcut.losses import ReconstructionLoss, SoftNCutLoss, WNetLoss
from cellcut.losses.intensity import ClassIntensityLoss, initial_centres
from cellcut.model import Checkpoint, WNet3D, resolve_model_path
from cellcut.model.network import feature_weights
from cellcut.normalize import suggest_intensity_sigma
from cellcut.runtime import resolve_device
from cellcut.training.data import (
    PatchSampler,
    Source,
    TrainingVolume,
    fixed_patches,
    is_path,
    load_volumes,
    validation_patches,
)
from cellcut.training.diagnostics import CLASSES_ADOPTED, Diagnosis, LossMonitor
from cellcut.training.run import TrainingRun
from cellcut.training.validation import Validator, load_labelled

ARRAY_SOURCE = "<in-memory array>"
"""How a checkpoint records a training volume that was given as an array, not a file."""


@dataclass
class Sources:
    """What a run trains and validates on."""

    images: Sequence[Source]
    val_images: Sequence[str | os.PathLike] | None
    val_labels: Sequence[str | os.PathLike] | None

    def record(self) -> dict[str, list[str]]:
        """The checkpoint's record of them (arrays as :data:`ARRAY_SOURCE`)."""
        return {
            "images": [str(p) if is_path(p) else ARRAY_SOURCE for p in self.images],
            "val_images": [str(p) for p in self.val_images or []],
            "val_labels": [str(p) for p in self.val_labels or []],
        }


@dataclass
class Session:
    """Everything a training loop needs, set up or restored."""

    cfg: TrainConfig
    run: TrainingRun
    sources: Sources
    device: torch.device
    volumes: list[TrainingVolume]
    input_scale: float  # the network sees intensities / input_scale (0..1)
    model: WNet3D
    optimizer: torch.optim.Optimizer
    loss_fn: WNetLoss
    intensity_term: ClassIntensityLoss | None
    sampler: PatchSampler
    validator: Validator
    reference_patches: torch.Tensor  # where the cell classes are decided
    monitor: LossMonitor
    resumed: bool = False
    lr_scale: float = 1.0
    elapsed_before: float = 0.0  # seconds spent by the run before a resume
    notes: list[Diagnosis] = field(default_factory=list)  # said when the loop begins
    ddp: torch.nn.Module | None = None  # the model in DistributedDataParallel under torchrun
    anchor: dict[str, torch.Tensor] | None = None  # optimizer.anchor: the starting weights
    anchor_strength: float = 0.0  # optimizer.anchor resolved ("auto" decided)
    started_from: str | None = None  # the pretrained model a fine-tune started from
    cell_share_start: dict[str, Any] | None = None  # stop.cell_share_drift: classes, share
    keeps_model_classes: bool = False  # a fine-tune that did not adopt the data's classes
    trainable: str = "all"  # optimizer.trainable resolved ("auto" decided)

    @property
    def trained(self) -> torch.nn.Module:
        """What the training step calls: the DDP wrapper under torchrun, else the model."""
        return self.ddp if self.ddp is not None else self.model


def resolve_config(
    config: TrainConfig | dict | None,
    overrides: Sequence[str] | dict[str, Any] | None,
    sources: Sources,
    restored: Checkpoint | None,
    run_dir: Path,
) -> tuple[TrainConfig, Sources]:
    """The run's settings and volumes: given, or the checkpoint's when resuming."""
    if restored is not None:
        cfg = build_config(restored.config, str(run_dir))
        sources = _restored_sources(sources, restored, run_dir)
    else:
        cfg = config if isinstance(config, TrainConfig) else build_config(config or {})
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg, sources


ARCHITECTURE_FIELDS = ("n_classes", "base_width", "depth", "dropout", "norm")
"""The fields of ``model`` a pretrained checkpoint decides (the preset as well)."""


def follow_checkpoint(
    cfg: TrainConfig, from_pretrained: str | os.PathLike
) -> tuple[TrainConfig, str | None]:
    """The settings of a run that starts from ``from_pretrained``: its ``model`` section
    becomes the checkpoint's architecture, so that config.yaml says what the network is.

    Returns the settings and a note naming the settings of the user it replaced (a setting
    left at its default is replaced silently). A checkpoint whose architecture the settings
    cannot express (another input or output count, block or activation than the presets')
    is refused.
    """
    from dataclasses import asdict

    from cellcut.model.network import PRESETS

    source = Checkpoint.load(resolve_model_path(from_pretrained))
    arch = dict(source.architecture)
    fixed = ("in_channels", "out_channels", "norm_groups", "activation", "block", "max_width")
    preset = next(
        (
            name
            for name, p in PRESETS.items()
            if all(asdict(p)[k] == arch.get(k, asdict(p)[k]) for k in fixed)
        ),
        None,
    )
    if preset is None:
        raise CheckpointError(
            "cannot train from this model",
            "its architecture ("
            + ", ".join(f"{k} {arch.get(k)}" for k in fixed)
            + ") is not one of the presets' "
            + ", ".join(PRESETS),
            "give a W-Net made by cellcut train",
            file=from_pretrained,
        )
    wanted = {"preset": preset, **{k: arch[k] for k in ARCHITECTURE_FIELDS if k in arch}}
    current = cfg.model.model_dump()
    default = TrainConfig().model.model_dump()
    changed = [
        f"{k} {current[k]} -> {v}"
        for k, v in wanted.items()
        if current[k] not in (v, default[k]) and not (current[k] is None and k != "preset")
    ]
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update=wanted)})
    note = None
    if changed:
        note = (
            f"the network's architecture comes from {from_pretrained}: "
            + ", ".join(changed)
            + " (settings of model.* do not apply when fine-tuning)"
        )
    return cfg, note


def _restored_sources(given: Sources, restored: Checkpoint, run_dir: Path) -> Sources:
    if ARRAY_SOURCE not in restored.images:
        return Sources(restored.images, restored.val_images or None, restored.val_labels or None)
    if not given.images:
        raise ConfigError(
            "cannot resume",
            "this run trained on in-memory arrays, which its checkpoint does not hold",
            "pass the same arrays again to resume it",
            file=run_dir,
        )
    return Sources(given.images, restored.val_images or None, restored.val_labels or None)


def open_session(
    cfg: TrainConfig,
    run_dir: Path,
    sources: Sources,
    from_pretrained: str | os.PathLike | None,
    restored: Checkpoint | None,
) -> Session:
    """Set a run up, or restore it from ``restored``; see the module docstring."""
    torch.manual_seed(cfg.seed + parallel.rank())  # torchrun: each rank its own patches
    random.seed(cfg.seed + parallel.rank())
    device = parallel.device_of_rank(resolve_device(cfg.device))
    volumes = load_volumes(sources.images, cfg.data)
    sample = _intensity_sample(volumes)  # for σ_I and the class centres
    suggested = suggest_intensity_sigma(sample.reshape(1, 1, -1), "none").intensity_sigma
    if restored is not None:
        sigma_i = float(restored.intensity_sigma)
    elif cfg.loss.intensity_sigma == "auto":
        sigma_i = suggested
    else:
        sigma_i = float(cfg.loss.intensity_sigma)
    input_scale = (
        100.0
        if cfg.data.normalization != "none"
        else max(v.normalization.high - v.normalization.low for v in volumes)
    )
    model = _model(cfg, from_pretrained, restored, run_dir).to(device)
    if restored is not None:
        started_from = restored.started_from
    else:
        started_from = None if from_pretrained is None else str(from_pretrained)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay
    )
    sampler = PatchSampler(
        volumes,
        cfg.data.patch_size,
        cfg.augment,
        cfg.data.foreground_bias,
        seed=cfg.seed + parallel.rank(),
    )
    val_batch = validation_patches(volumes, cfg.data.patch_size, cfg.data.val_patches)
    session = Session(
        cfg=cfg,
        run=TrainingRun(run_dir, cfg, model, sigma_i, suggested),
        sources=sources,
        device=device,
        volumes=volumes,
        input_scale=input_scale,
        model=model,
        optimizer=optimizer,
        loss_fn=None,  # type: ignore[arg-type]
        intensity_term=None,
        sampler=sampler,
        validator=Validator(
            val_batch,
            load_labelled(sources.images, sources.val_images, sources.val_labels, cfg),
            cfg.data.patch_size,
            device,
            input_scale,
        ),
        reference_patches=(
            val_batch
            if val_batch is not None
            else fixed_patches(
                volumes, cfg.data.patch_size, cfg.augment, cfg.data.foreground_bias, 2, cfg.seed + 7
            )
        ),
        monitor=LossMonitor(
            suggested,
            sigma_i,
            cfg.loss.reconstruction,
            normalization=cfg.data.normalization,
            fine_tuning=started_from is not None,
            clipped=cfg.optimizer.grad_clip is not None,
        ),
        started_from=started_from,
    )
    session.intensity_term = _intensity_term(session, sample, from_pretrained, restored)
    session.loss_fn = _loss(cfg, sigma_i, volumes, session.intensity_term)
    _anchor(session, restored)
    session.keeps_model_classes = _keeps_model_classes(session, restored)
    _trainable(session, restored)
    if restored is not None:
        _restore(session, restored)
    session.ddp = parallel.wrap(model, device)
    return session


def _anchor(session: Session, restored: Checkpoint | None) -> None:
    """``optimizer.anchor``: its strength ("auto": :data:`~cellcut.config.AUTO_ANCHOR` when
    fine-tuning, unless the data's classes were adopted, the model's split being wrong) and
    the weights it pulls toward (a resumed run's own, else the starting ones)."""
    value = session.cfg.optimizer.anchor
    adopted = _adopted(session)
    if value != "auto":
        strength = float(value)
    elif restored is not None:
        strength = _restored_strength(restored)
    else:
        strength = AUTO_ANCHOR if session.started_from is not None and not adopted else 0.0
    for note in adopted if value == "auto" else []:
        note.message += ", and does not hold the weights to the model's (optimizer.anchor)"
    session.anchor_strength = strength
    if strength <= 0:
        return
    if restored is not None and restored.anchor is not None:
        session.anchor = {k: v.to(session.device) for k, v in restored.anchor.items()}
    else:
        session.anchor = {k: p.detach().clone() for k, p in session.model.named_parameters()}


LEGACY_AUTO_ANCHOR = 300.0
"""What ``optimizer.anchor="auto"`` was when a checkpoint did not yet record its strength."""


def _restored_strength(restored: Checkpoint) -> float:
    """The strength a resumed run was trained with: the checkpoint's record, so that a change
    of :data:`~cellcut.config.AUTO_ANCHOR` does not alter a run half-way; an older file holding
    an anchor but no strength was trained with :data:`LEGACY_AUTO_ANCHOR`."""
    if restored.anchor_strength is not None:
        return float(restored.anchor_strength)
    return LEGACY_AUTO_ANCHOR if restored.anchor is not None else 0.0


def _trainable(session: Session, restored: Checkpoint | None) -> None:
    """``optimizer.trainable``: "auto" is "norms" for a fine-tune that keeps the starting
    model's classes (a resumed run keeps what it started with); "norms" fixes the rest of the
    classifier's weights (:func:`~cellcut.model.network.feature_weights`: they get no gradient,
    so the optimizer leaves them as they are). Why: on one volume the unsupervised objective
    pulls a pretrained model away from what segments well (README, "Fine-tuning the norms
    only"); the normalization's scale and shift let it follow the new images' contrast while
    the features it detects stay the pretrained ones."""
    value = session.cfg.optimizer.trainable
    if value == "auto" and restored is not None:
        value = restored.trainable or "all"
    elif value == "auto":
        value = "norms" if session.keeps_model_classes else "all"
        if value == "norms":
            session.notes.append(Diagnosis(NORMS_ONLY, 0, NORMS_ONLY_MESSAGE))
    session.trainable = value
    if value == "norms":
        for p in feature_weights(session.model):
            p.requires_grad_(False)


NORMS_ONLY = "norms-only"
NORMS_ONLY_MESSAGE = (
    "fine-tuning trains the classifier's normalization layers and last layer, and the decoder; "
    "its other weights stay the starting model's (optimizer.trainable=auto; =all trains them all)"
)


def _keeps_model_classes(session: Session, restored: Checkpoint | None) -> bool:
    """A fine-tune that keeps the starting model's idea of a cell: its classes were neither
    adopted from the data (the model's split disagreed with it) nor asked for
    (``loss.intensity_centres=otsu``). ``stop.cell_share_drift`` watches only these."""
    if restored is not None:
        return restored.cell_share_start is not None
    otsu = session.cfg.loss.intensity_centres == "otsu"
    return session.started_from is not None and not _adopted(session) and not otsu


def _adopted(session: Session) -> list[Diagnosis]:
    """The note that this fine-tune adopted the data's classes (empty if it did not)."""
    return [n for n in session.notes if n.kind == CLASSES_ADOPTED]


def _intensity_sample(volumes: Sequence[TrainingVolume]) -> np.ndarray:
    """Every 8th voxel (2 per axis) of the training regions, normalized, as one array."""
    return np.concatenate([v.data[v.train_region].numpy()[::2, ::2, ::2].ravel() for v in volumes])


def _model(
    cfg: TrainConfig,
    from_pretrained: str | os.PathLike | None,
    restored: Checkpoint | None,
    run_dir: Path,
) -> WNet3D:
    if restored is not None:
        source, name = restored, str(run_dir)
    elif from_pretrained is not None:
        source, name = Checkpoint.load(resolve_model_path(from_pretrained)), str(from_pretrained)
    else:
        return WNet3D(cfg.model.preset, **cfg.model.overrides())
    if source.kind != "wnet":
        raise CheckpointError(
            "cannot train from this model",
            f"it is a {source.kind} model, not a W-Net",
            "give a W-Net (cellcut train's run or a shipped model); continue a refinement with "
            "cellcut refine --resume",
            file=name,
        )
    model = source.build_model(name)
    assert isinstance(model, WNet3D)
    return model


def _intensity_term(
    session: Session,
    sample: np.ndarray,
    from_pretrained: str | os.PathLike | None,
    restored: Checkpoint | None,
) -> ClassIntensityLoss | None:
    """The class-intensity term, its centres and momentum (see :mod:`cellcut.losses.intensity`)."""
    loss = session.cfg.loss
    if loss.intensity_weight <= 0:
        return None
    from_model = loss.intensity_centres == "model" or (
        loss.intensity_centres == "auto" and from_pretrained is not None
    )
    momentum = loss.intensity_momentum
    if momentum is None:
        momentum = 0.0 if from_model else 0.01
    if restored is not None and restored.intensity_centres is not None:
        if restored.intensity_momentum is not None:
            momentum = float(restored.intensity_momentum)
        return ClassIntensityLoss(
            np.asarray(restored.intensity_centres), momentum, loss.intensity_smoothing
        )
    centres = initial_centres(sample, session.model.n_classes)
    if from_model and restored is None:
        # Fine-tuning keeps the starting model's classes: their brightness on the new data,
        # held fixed. Following the batch means instead drifts towards the 2-means split of
        # the histogram, which on sparse nuclei keeps only their bright cores (README, "Class
        # intensity", has the embryo figures). Unless the model's split disagrees with the
        # data's own: then the data's classes are adopted (and held).
        stats = _soft_class_stats(
            session.model, session.volumes, session.cfg, session.input_scale, session.device
        )
        disagreement = None
        if loss.intensity_centres == "auto":
            disagreement = _split_disagreement(session.volumes, stats)
        if disagreement is None:
            centres = _centres_or_fallback(stats, centres)
        else:
            session.notes.append(disagreement)
    return ClassIntensityLoss(centres, momentum, loss.intensity_smoothing)


SPLIT_RATIO = 2.0
"""Fine-tuning adopts the data's own classes when the starting model's cell share of the new
volumes is more than this many times larger or smaller than their bright class's share."""


def _split_disagreement(
    volumes: Sequence[TrainingVolume], stats: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> Diagnosis | None:
    from cellcut.fingerprint import measure

    means, mass, _ = stats
    model_share = float(mass[int(np.nanargmax(means))] / max(mass.sum(), 1e-12))
    image_share = float(np.mean([measure(v.data.numpy()).foreground_fraction for v in volumes]))
    if image_share <= 0 or 1 / SPLIT_RATIO <= model_share / image_share <= SPLIT_RATIO:
        return None
    return Diagnosis(
        CLASSES_ADOPTED,
        0,
        f"the starting model marks {model_share:.1%} of these volumes as cells where their own "
        f"bright class covers {image_share:.1%}: fine-tuning starts from the data's classes "
        "(Otsu's split) instead of the model's (loss.intensity_centres=model keeps the model's)",
    )


def _centres_or_fallback(
    stats: tuple[np.ndarray, np.ndarray, np.ndarray], fallback: np.ndarray
) -> np.ndarray:
    means, mass, voxels = stats
    centres = np.asarray(fallback, dtype=np.float64).copy()
    ok = mass > 1e-3 * voxels
    centres[ok] = means[ok]
    return centres


def model_centres(
    model: WNet3D,
    volumes: Sequence[TrainingVolume],
    cfg: TrainConfig,
    input_scale: float,
    device: torch.device,
    fallback: np.ndarray,
    n_patches: int = 8,
) -> np.ndarray:
    """Soft mean intensity of each of ``model``'s classes on fixed patches of ``volumes``.

    Where a class holds almost no mass (under 0.1% of the voxels) its ``fallback`` centre is
    kept. Used to start fine-tuning with the class-intensity term agreeing with the model.
    """
    stats = _soft_class_stats(model, volumes, cfg, input_scale, device, n_patches)
    return _centres_or_fallback(stats, fallback)


def _soft_class_stats(
    model: WNet3D,
    volumes: Sequence[TrainingVolume],
    cfg: TrainConfig,
    input_scale: float,
    device: torch.device,
    n_patches: int = 8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: soft mean intensity and probability mass on fixed patches; and the voxels."""
    data = cfg.data
    patches = fixed_patches(
        volumes, data.patch_size, cfg.augment, data.foreground_bias, n_patches, seed=cfg.seed + 11
    )
    was_training = model.training
    model.eval()
    mass = torch.zeros(model.n_classes, dtype=torch.float64)
    total = torch.zeros(model.n_classes, dtype=torch.float64)
    with torch.inference_mode():
        for x in patches.split(2):
            p = model.encode(x.to(device) / input_scale).float().cpu()
            mass += p.sum((0, 2, 3, 4)).double()
            total += (p * x).sum((0, 2, 3, 4)).double()
    model.train(was_training)
    means = (total / mass.clamp_min(1e-12)).numpy()
    return means, mass.numpy(), np.float64(patches[:, 0].numel())


def _loss(
    cfg: TrainConfig,
    sigma_i: float,
    volumes: Sequence[TrainingVolume],
    intensity_term: ClassIntensityLoss | None,
) -> WNetLoss:
    voxel_size = volumes[0].voxel_size
    anisotropy = tuple(v / min(voxel_size) for v in voxel_size) if voxel_size else None
    loss = cfg.loss
    return WNetLoss(
        SoftNCutLoss(sigma_i, loss.spatial_sigma, loss.radius, anisotropy, loss.method),
        ReconstructionLoss(loss.reconstruction),
        loss.ncut_weight,
        loss.rec_weight,
        intensity_term,
        loss.intensity_weight,
    )


def _restore(session: Session, ckpt: Checkpoint) -> None:
    """Put a resumed run's state back: optimizer, random states, history, monitor, clocks,
    the starting cell share (``stop.cell_share_drift``)."""
    session.resumed = True
    session.optimizer.load_state_dict(ckpt.optimizer)
    own = ckpt.ranks[parallel.rank()] if parallel.rank() < len(ckpt.ranks) else None
    session.sampler.set_state(own["sampler_rng"] if own else ckpt.sampler_rng)
    set_rng_states(own["rng"] if own else ckpt.rng)
    run, monitor = session.run, session.monitor
    run.step = int(ckpt.step)
    run.history = list(ckpt.history)
    session.cell_share_start = ckpt.cell_share_start
    session.lr_scale = float(ckpt.lr_scale)
    session.elapsed_before = float(ckpt.elapsed_s)
    for rec in run.history:
        monitor.update(
            int(rec["step"]),
            rec["ncut"],
            rec["reconstruction"],
            rec["reconstruction"] / max(rec["rec_ratio"], 1e-12),
            rec.get("val_ncut"),
        )
    monitor.said = set(ckpt.said)
    monitor.grad_norms = list(ckpt.grad_norms)


def rng_states() -> dict[str, Any]:
    """The global random states (torch, Python) as checkpoint-friendly values."""
    return {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate((states["python_version"], tuple(states["python"]), None))
