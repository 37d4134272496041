"""Training the W-Net without labels: the loop, top to bottom.

:func:`train` sets a run up (config, folder, volumes, σ_I, model, optimizer, loss), then loops:
draw a batch of patches, forward both U-Nets, compute soft N-cut + reconstruction, check for an
explosion (roll back and lower the learning rate if so), backward, clip, step; every
``log.every`` steps it validates, logs a row of ``metrics.csv``, lets the
:class:`~cellcut.diagnostics.LossMonitor` read the curves, and every ``log.checkpoint_every``
steps it writes a checkpoint. It stops at the first limit reached (steps, epochs, minutes, an
optional plateau, or a callback asking to stop), decides which classes are the cells, and writes
the final checkpoint, ``losses.png`` and ``preview.png``.

Progress reaches the caller only through callbacks (:class:`TrainCallback`), so a GUI can run
this in a worker thread without the core importing any GUI toolkit.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellcut.checkpoint import CHECKPOINT_NAME, build_model, load_checkpoint, save_checkpoint
from cellcut.config import TrainConfig, apply_overrides, build_config
from cellcut.data import PatchSampler, TrainingVolume, load_volumes, validation_patches
from cellcut.diagnostics import PLATEAU, Diagnosis, LossMonitor
from cellcut.errors import ConfigError, OutputError
from cellcut.losses import ReconstructionLoss, SoftNCutLoss, WNetLoss
from cellcut.losses.intensity import ClassIntensityLoss, initial_centres
from cellcut.model import WNet3D

METRIC_FIELDS = [
    "step",
    "epoch",
    "elapsed_s",
    "lr",
    "ncut",
    "reconstruction",
    "total",
    "rec_ratio",
    "val_ncut",
    "val_reconstruction",
    "val_total",
    "val_dice",
    "val_f1",
]


class TrainCallback:
    """Hooks into a training run; override what you need. Called in the training thread."""

    def on_start(self, run: TrainingRun) -> None:
        """Before the first step (``run.step`` is the starting step)."""

    def on_log(self, record: dict[str, float]) -> None:
        """At every log point, with the row written to ``metrics.csv``."""

    def on_diagnosis(self, diagnosis: Diagnosis) -> None:
        """When the loss monitor notices something (see :mod:`cellcut.diagnostics`)."""

    def on_checkpoint(self, path: Path) -> None:
        """After a checkpoint is written."""

    def on_end(self, run: TrainingRun) -> None:
        """After the final checkpoint and pictures."""

    def stop_requested(self) -> bool:
        """Return True to stop after the current step (the last checkpoint is kept)."""
        return False


@dataclass
class TrainingRun:
    """What a training run produced (and, during the run, where it is)."""

    run_dir: Path
    config: TrainConfig
    model: WNet3D
    intensity_sigma: float
    suggested_sigma: float
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    diagnoses: list[Diagnosis] = field(default_factory=list)
    foreground_classes: list[int] = field(default_factory=list)
    stopped_by: str = ""

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else mps if available, else cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ConfigError(
            "invalid configuration", f"device: {e}", "use auto, cpu, cuda or cuda:N"
        ) from e


def learning_rate(
    config: TrainConfig, step: int, total_steps: int | None, time_fraction: float | None = None
) -> float:
    """Scheduled learning rate at ``step`` (1-based): linear warm-up, then constant or cosine.

    The cosine follows the further of step/total_steps and the fraction of the time budget
    used, so a run limited by minutes decays too.
    """
    base = config.optimizer.lr
    sched = config.schedule
    if sched.warmup_steps and step <= sched.warmup_steps:
        return base * step / sched.warmup_steps
    if sched.kind == "cosine":
        fractions = [f for f in (time_fraction,) if f is not None]
        if total_steps:
            span = max(1, total_steps - sched.warmup_steps)
            fractions.append((step - sched.warmup_steps) / span)
        if fractions:
            progress = min(1.0, max(fractions))
            floor = base * sched.min_lr_ratio
            return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return base


def choose_foreground_classes(probs: torch.Tensor, image: torch.Tensor) -> list[int]:
    """Which of the K classes are the cells: those whose voxels are bright.

    Each voxel goes to its most probable class; classes are ranked by the mean image
    intensity of their voxels, and split into dark and bright groups where the between-group
    variance (weighted by voxel counts, as in Otsu's method) is largest. For K = 2 this is the
    brighter class.
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


def class_contrast(probs: torch.Tensor, image: torch.Tensor) -> float:
    """Share of the image's intensity variance explained by the hard classes (η², 0..1).

    High when the classes follow brightness, near 0 for a cut by position: an unsupervised
    criterion for keeping the best weights.
    """
    k = probs.shape[1]
    hard = probs.argmax(1).flatten()
    x = image[:, 0].flatten().double()
    total = float(((x - x.mean()) ** 2).sum())
    if total <= 0:
        return 0.0
    counts = torch.bincount(hard, minlength=k).double()
    sums = torch.bincount(hard, weights=x, minlength=k)
    means = sums / counts.clamp_min(1)
    between = float((counts * (means - x.mean()) ** 2).sum())
    return between / total


def foreground_probability(probs: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Probability of the cells: the sum over the foreground classes, (N, 1, *S)."""
    return probs[:, list(classes)].sum(1, keepdim=True)


def _rec_baseline(kind: str, target: torch.Tensor) -> float:
    """Reconstruction loss of the best flat image (what 'reproduces nothing' scores)."""
    dims = tuple(range(1, target.ndim))
    if kind == "mse":
        return float(target.var(dim=dims, unbiased=False).mean())
    lo = target.amin(dim=dims, keepdim=True)
    hi = target.amax(dim=dims, keepdim=True)
    y = ((target - lo) / (hi - lo).clamp_min(1e-12)).clamp(1e-6, 1 - 1e-6)
    m = y.mean(dim=dims, keepdim=True).clamp(1e-6, 1 - 1e-6)
    return float(-(y * m.log() + (1 - y) * (1 - m).log()).mean())


def _rng_states() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate((states["python_version"], tuple(states["python"]), None))


class _Logger:
    """metrics.csv (always), TensorBoard (when asked and installed), losses.png."""

    def __init__(self, run_dir: Path, config: TrainConfig, resume: bool) -> None:
        self.path = run_dir / "metrics.csv"
        self.run_dir = run_dir
        self.plots = config.log.plots
        if not resume or not self.path.exists():
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, METRIC_FIELDS).writeheader()
        self.tb = None
        if config.log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                self.tb = None

    def write(self, record: dict[str, float]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, METRIC_FIELDS).writerow(
                {k: ("" if record.get(k) is None else record[k]) for k in METRIC_FIELDS}
            )
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and v is not None and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, int(record["step"]))

    def plot(self, history: list[dict[str, float]]) -> None:
        if self.plots and history:
            from cellcut.figures import plot_losses

            plot_losses(history, self.run_dir / "losses.png")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(
            "cannot write run",
            "the path exists and is not a folder",
            "choose a folder for --out",
            file=out,
        )
    if resume:
        if not (out / CHECKPOINT_NAME).exists():
            raise OutputError(
                "cannot resume",
                "the folder holds no checkpoint",
                "give the run folder of an earlier `cellcut train`",
                file=out,
            )
        return out
    if (out / CHECKPOINT_NAME).exists() and not overwrite:
        raise OutputError(
            "run folder in use",
            "it already holds a training run",
            "pass --resume to continue it, --overwrite to replace it, or choose another --out",
            file=out,
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".cellcut-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OutputError(
            "cannot write run",
            f"the folder is not writable ({e.strerror or e})",
            "choose a folder you can write to",
            file=out,
        ) from e
    return out


def _intensity_sample(volumes: Sequence[TrainingVolume]) -> np.ndarray:
    """Every 8th voxel (2 per axis) of the training regions, normalized, as one array."""
    return np.concatenate([v.data[v.train_region].numpy()[::2, ::2, ::2].ravel() for v in volumes])


def fixed_patches(
    volumes: Sequence[TrainingVolume], cfg: TrainConfig, n: int, seed: int
) -> torch.Tensor:
    """``n`` patches drawn like training ones (same size and foreground bias), unaugmented."""
    plain = cfg.augment.model_copy(
        update={
            "flips": False,
            "rotations": False,
            "intensity_scale": 0.0,
            "intensity_shift": 0.0,
            "noise": 0.0,
        }
    )
    return PatchSampler(
        volumes, cfg.data.patch_size, plain, cfg.data.foreground_bias, seed=seed
    ).batch(n)


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
    patches = fixed_patches(volumes, cfg, n_patches, seed=cfg.seed + 11)
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
    centres = np.asarray(fallback, dtype=np.float64).copy()
    ok = (mass > 1e-3 * patches[:, 0].numel()).numpy()
    centres[ok] = (total / mass.clamp_min(1e-12)).numpy()[ok]
    return centres


def _suggest_sigma(sample: np.ndarray) -> float:
    from cellcut.normalize import suggest_intensity_sigma

    # the volumes are normalized already: suggest on their values as they are
    return suggest_intensity_sigma(sample.reshape(1, 1, -1), "none").intensity_sigma


def train(
    images: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    config: TrainConfig | dict | None = None,
    *,
    val_images: Sequence[str | os.PathLike] | None = None,
    val_labels: Sequence[str | os.PathLike] | None = None,
    from_pretrained: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[TrainCallback] = (),
    overrides: Sequence[str] | dict[str, Any] | None = None,
) -> TrainingRun:
    """Train (or fine-tune, or resume) a W-Net on unlabelled volumes.

    Parameters
    ----------
    images
        Volume files, folders or glob patterns (ignored on resume: the run's own are used).
    out
        Run folder: ``config.yaml``, ``checkpoint.pt``, ``metrics.csv``, ``losses.png``,
        ``preview.png``, ``diagnostics.txt``.
    config
        A :class:`~cellcut.config.TrainConfig` or nested dict (defaults if None).
    val_images, val_labels
        Labelled volumes for validation Dice / instance F1 (``val_images`` defaults to
        ``images`` when only labels are given, in the same order).
    from_pretrained
        ``"default"`` or a checkpoint path: start from those weights (fine-tuning).
    resume
        Continue the run in ``out`` exactly where its checkpoint left it.
    overwrite
        Replace an existing run in ``out``.
    callbacks
        :class:`TrainCallback` objects notified of progress.
    overrides
        ``section.field=value`` settings applied on top of ``config``.

    Returns
    -------
    TrainingRun
    """
    run_dir = _prepare_run_dir(Path(out), resume, overwrite)
    state: dict[str, Any] | None = None
    if resume:
        state = load_checkpoint(run_dir / CHECKPOINT_NAME)
        cfg = build_config(state["config"], str(run_dir / CHECKPOINT_NAME))
        images = state["images"]
        val_images = state.get("val_images") or None
        val_labels = state.get("val_labels") or None
    else:
        cfg = config if isinstance(config, TrainConfig) else build_config(config or {})
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    cfg.save(run_dir / "config.yaml")
    if not resume:
        (run_dir / "diagnostics.txt").unlink(missing_ok=True)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = resolve_device(cfg.device)
    volumes = load_volumes(images, cfg.data)
    intensity_values = _intensity_sample(volumes)  # for σ_I and the class centres
    suggested = _suggest_sigma(intensity_values)
    # The network sees intensities on a 0..1 scale whatever the N-cut's units are.
    input_scale = (
        100.0
        if cfg.data.normalization != "none"
        else max(v.normalization.high - v.normalization.low for v in volumes)
    )
    if state is not None:
        sigma_i = float(state["intensity_sigma"])
    elif cfg.loss.intensity_sigma == "auto":
        sigma_i = suggested
    else:
        sigma_i = float(cfg.loss.intensity_sigma)

    # model
    if state is not None:
        model = build_model(state, str(run_dir))
    elif from_pretrained is not None:
        from cellcut.models import resolve_model_path

        source = load_checkpoint(resolve_model_path(from_pretrained))
        model = build_model(source, str(from_pretrained))
    else:
        model = WNet3D(cfg.model.preset, **cfg.model.overrides())
    model.to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay
    )
    voxel_size = volumes[0].voxel_size
    anisotropy = tuple(v / min(voxel_size) for v in voxel_size) if voxel_size else None
    intensity_term = None
    if cfg.loss.intensity_weight > 0:
        centres = initial_centres(intensity_values, model.n_classes)
        how = cfg.loss.intensity_centres
        from_model = how == "model" or (how == "auto" and from_pretrained is not None)
        momentum = cfg.loss.intensity_momentum
        if momentum is None:
            momentum = 0.0 if from_model else 0.01
        if from_model and state is None:
            # Fine-tuning keeps the starting model's classes: their brightness on the new data,
            # held fixed. Following the batch means instead drifts towards the 2-means split of
            # the histogram, which on sparse nuclei keeps only their bright cores (measured on
            # the embryo: Dice 0.87 -> 0.68 in 3 minutes with momentum 0.01, 0.84-0.88 held).
            centres = model_centres(model, volumes, cfg, input_scale, device, fallback=centres)
        if state is not None and state.get("intensity_centres") is not None:
            centres = np.asarray(state["intensity_centres"])
            momentum = float(state.get("intensity_momentum", momentum))
        intensity_term = ClassIntensityLoss(centres, momentum)
    loss_fn = WNetLoss(
        SoftNCutLoss(sigma_i, cfg.loss.spatial_sigma, cfg.loss.radius, anisotropy, cfg.loss.method),
        ReconstructionLoss(cfg.loss.reconstruction),
        cfg.loss.ncut_weight,
        cfg.loss.rec_weight,
        intensity_term,
        cfg.loss.intensity_weight,
    )
    sampler = PatchSampler(
        volumes, cfg.data.patch_size, cfg.augment, cfg.data.foreground_bias, seed=cfg.seed
    )
    val_batch = validation_patches(volumes, cfg.data.patch_size, cfg.data.val_patches)
    labelled = _labelled_validation(images, val_images, val_labels, cfg)

    run = TrainingRun(run_dir, cfg, model, sigma_i, suggested)
    monitor = LossMonitor(suggested, sigma_i, cfg.loss.reconstruction)
    lr_scale = 1.0
    elapsed0 = 0.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        sampler.set_state(state["sampler_rng"])
        _set_rng_states(state["rng"])
        run.step = int(state["step"])
        run.history = list(state.get("history", []))
        lr_scale = float(state.get("lr_scale", 1.0))
        elapsed0 = float(state.get("elapsed_s", 0.0))
        for rec in run.history:
            monitor.update(
                int(rec["step"]),
                rec["ncut"],
                rec["reconstruction"],
                rec["reconstruction"] / max(rec["rec_ratio"], 1e-12),
                rec.get("val_ncut"),
            )
        monitor.said = set(state.get("said", []))
        monitor.grad_norms = list(state.get("grad_norms", []))
    logger = _Logger(run_dir, cfg, resume)
    stop = cfg.stop
    total_steps = (
        min(
            [x for x in (stop.steps, stop.epochs and stop.epochs * stop.steps_per_epoch) if x]
            or [0]
        )
        or None
    )

    def payload(final: bool = False) -> dict[str, Any]:
        return {
            "config": cfg.model_dump(mode="json"),
            "architecture": asdict(model.arch),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "sampler_rng": sampler.state(),
            "rng": _rng_states(),
            "step": run.step,
            "elapsed_s": elapsed0 + (time.perf_counter() - t_start),
            "lr_scale": lr_scale,
            "intensity_sigma": sigma_i,
            "input_scale": input_scale,
            "intensity_centres": (
                intensity_term.centres.tolist() if intensity_term is not None else None
            ),
            "intensity_momentum": (intensity_term.momentum if intensity_term is not None else None),
            "best_contrast": best[0],
            "suggested_intensity_sigma": suggested,
            "foreground_classes": run.foreground_classes,
            "history": run.history,
            "said": sorted(monitor.said),
            "grad_norms": monitor.grad_norms[-100:],
            "images": [str(p) for p in images],
            "val_images": [str(p) for p in val_images] if val_images else [],
            "val_labels": [str(p) for p in val_labels] if val_labels else [],
            "final": final,
        }

    def say(d: Diagnosis) -> None:
        run.diagnoses.append(d)
        with open(run_dir / "diagnostics.txt", "a") as f:
            f.write(d.message + "\n")
        for cb in callbacks:
            cb.on_diagnosis(d)
        if cfg.log.progress:
            _print_line(d.message)

    # patches on which the cell classes are decided: the validation ones, else fixed samples
    reference_patches = (
        val_batch if val_batch is not None else fixed_patches(volumes, cfg, 2, seed=cfg.seed + 7)
    )

    def decide_foreground() -> list[int]:
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            probs = model.encode(reference_patches.to(device) / input_scale).float().cpu()
        model.train(was_training)
        return choose_foreground_classes(probs, reference_patches)

    best: tuple[float, Any, int] = (
        float(state.get("best_contrast", -1.0)) if state is not None else -1.0,
        None,
        0,
    )
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    good_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
    bar = _progress_bar(cfg, run.step, total_steps)
    t_start = time.perf_counter()
    for cb in callbacks:
        cb.on_start(run)

    model.train()
    while True:
        elapsed = elapsed0 + time.perf_counter() - t_start
        if stop.steps is not None and run.step >= stop.steps:
            run.stopped_by = f"{stop.steps} steps"
        elif stop.epochs is not None and run.step >= stop.epochs * stop.steps_per_epoch:
            run.stopped_by = f"{stop.epochs} epochs"
        elif stop.minutes is not None and elapsed >= stop.minutes * 60:
            run.stopped_by = f"{stop.minutes:g} minutes"
        elif any(cb.stop_requested() for cb in callbacks):
            run.stopped_by = "stop requested"
        elif stop.early_stop_on_plateau and PLATEAU in monitor.said:
            run.stopped_by = "N-cut plateau"
        if run.stopped_by:
            break

        step = run.step + 1
        fraction = elapsed / (stop.minutes * 60) if stop.minutes else None
        lr = learning_rate(cfg, step, total_steps, fraction) * lr_scale
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = sampler.batch(cfg.data.batch_size).to(device)
        net_in = batch / input_scale
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(net_in)
        probs = out.probs.float()
        losses = loss_fn(probs, out.reconstruction.float(), batch, net_in)
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.optimizer.grad_clip or float("inf")
            )
        )
        ncut, rec = float(losses.ncut), float(losses.reconstruction)
        boom = monitor.check_step(step, ncut, rec, grad_norm, lr)
        if boom is not None:
            model.load_state_dict(good_state[0])
            optimizer.load_state_dict(good_state[1])
            lr_scale *= 0.5
            say(boom)
            if lr_scale < 1e-4:
                run.stopped_by = "repeated explosions"
                break
            continue
        optimizer.step()
        run.step = step
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                ncut=f"{ncut:.4f}", rec=f"{rec:.4g}", total=f"{losses.total.item():.4g}"
            )

        if step % cfg.log.every == 0:
            record = {
                "step": step,
                "epoch": step / stop.steps_per_epoch,
                "elapsed_s": round(elapsed0 + time.perf_counter() - t_start, 3),
                "lr": lr,
                "ncut": ncut,
                "reconstruction": rec,
                "total": losses.total.item(),
                "rec_ratio": rec / max(_rec_baseline(cfg.loss.reconstruction, net_in), 1e-12),
                "intensity": None if losses.intensity is None else float(losses.intensity),
            }
            record.update(_validate(model, loss_fn, val_batch, labelled, cfg, device, input_scale))
            run.history.append(record)
            logger.write(record)
            if len(run.history) % 5 == 1:
                logger.plot(run.history)
            for cb in callbacks:
                cb.on_log(record)
            baseline = rec / max(record["rec_ratio"], 1e-12)
            for d in monitor.update(step, ncut, rec, baseline, record.get("val_ncut")):
                say(d)
            contrast = record.get("val_contrast")
            if cfg.log.select_best and contrast is not None and contrast > best[0]:
                best = (contrast, copy.deepcopy(model.state_dict()), step)
            good_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
        if step % cfg.log.checkpoint_every == 0:
            run.foreground_classes = decide_foreground()
            path = save_checkpoint(run_dir / CHECKPOINT_NAME, payload())
            for cb in callbacks:
                cb.on_checkpoint(path)

    if bar is not None:
        bar.close()
    if cfg.log.select_best and best[1] is not None:
        model.load_state_dict(best[1])
        _print_line(f"kept the weights of step {best[2]} (validation contrast {best[0]:.3f})")
    run.foreground_classes = decide_foreground()
    model.eval()
    sample = reference_patches
    path = save_checkpoint(run_dir / CHECKPOINT_NAME, payload(final=True))
    for cb in callbacks:
        cb.on_checkpoint(path)
    logger.plot(run.history)
    logger.close()
    if cfg.log.plots:
        from cellcut.figures import plot_preview

        with torch.inference_mode():
            out = model(sample[:1].to(device) / input_scale)
        plot_preview(
            sample[0, 0].numpy(),
            out.probs[0].float().cpu().numpy(),
            out.reconstruction[0, 0].float().cpu().numpy(),
            run.foreground_classes,
            run_dir / "preview.png",
        )
    for cb in callbacks:
        cb.on_end(run)
    return run


@dataclass
class _Labelled:
    image: np.ndarray  # normalized
    labels: np.ndarray
    voxel_size: tuple[float, float, float] | None


def _labelled_validation(images, val_images, val_labels, cfg: TrainConfig) -> list[_Labelled]:
    if not val_labels:
        return []
    from cellcut.data import find_volumes
    from cellcut.io import read_volume
    from cellcut.normalize import fit_normalization

    imgs = find_volumes(val_images or images)
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
            _Labelled(
                norm(data), lab.numpy().astype(np.int32), cfg.data.voxel_size or img.voxel_size
            )
        )
    return out


def _validate(
    model, loss_fn, val_batch, labelled, cfg: TrainConfig, device, input_scale: float
) -> dict[str, float]:
    """Losses on the held-back patches; Dice and F1@0.5 on labelled volumes if any."""
    result: dict[str, float] = {}
    if val_batch is None and not labelled:
        return result
    model.eval()
    loss_fn.eval()  # class centres do not move on validation data
    with torch.inference_mode():
        if val_batch is not None:
            x = val_batch.to(device)
            out = model(x / input_scale)
            losses = loss_fn(out.probs.float(), out.reconstruction.float(), x, x / input_scale)
            result.update(
                val_ncut=float(losses.ncut),
                val_reconstruction=float(losses.reconstruction),
                val_total=float(losses.total),
            )
        if labelled:
            scores = [segment_and_score(model, item, cfg, device, input_scale) for item in labelled]
            result["val_dice"] = float(np.mean([s[0] for s in scores]))
            result["val_f1"] = float(np.mean([s[1] for s in scores]))
    model.train()
    loss_fn.train()
    return result


def segment_and_score(
    model, item: _Labelled, cfg: TrainConfig, device, input_scale: float
) -> tuple[float, float]:
    """Segment a labelled volume with the model as it is; return (Dice, F1 at IoU 0.5)."""
    from cellcut.infer import sliding_window
    from cellcut.segment import score_class_probabilities

    probs = sliding_window(
        item.image,
        lambda b: model.encode(b / input_scale),
        model.n_classes,
        window=cfg.data.patch_size,
        overlap=0.25,
        device=device,
    )
    ev, _ = score_class_probabilities(probs, item.image, item.labels, item.voxel_size)
    return ev.dice, ev.f1_50


def _progress_bar(cfg: TrainConfig, start: int, total: int | None):
    if not cfg.log.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=start, unit="step", dynamic_ncols=True, leave=True, desc="training"
    )


def _print_line(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message)
