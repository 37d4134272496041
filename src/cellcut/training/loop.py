"""Training the W-Net without labels: :func:`train`, the loop, top to bottom.

The loop reads in one screen: check the limits (steps, epochs, the time budget, a plateau, a
stop request); take one step (a batch of patches, both U-Nets, soft N-cut + reconstruction +
class intensity, backward, clip); skip the step of an outlier batch (a lone gradient spike);
on an explosion roll back to the last good state and halve the learning rate; otherwise step
the optimizer (and, with ``optimizer.anchor``, pull the weights back toward the starting
model's); every ``log.every`` steps validate, log a row of ``metrics.csv`` and let the
:class:`~cellcut.training.diagnostics.LossMonitor` read the curves (a fine-tune that keeps its
model's classes also watches their share of the validation patches, and stops where it
drifts: ``stop.cell_share_drift``); every ``log.checkpoint_every`` steps write a checkpoint.
At the end the cell classes are decided and the final checkpoint, ``losses.png`` and
``preview.png`` written. Setting up and resuming happen before the loop
(:mod:`cellcut.training.session`).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import cellcut.training.parallel as parallel
from cellcut.config import TrainConfig
from cellcut.losses import WNetLossOutput
from cellcut.model import CHECKPOINT_NAME, Checkpoint
from cellcut.model.classes import choose_foreground_classes
from cellcut.runtime import use_bfloat16
from cellcut.training.data import Source
from cellcut.training.diagnostics import OUTLIER_BATCH, PLATEAU, CellShareWatch, Diagnosis
from cellcut.training.run import (
    MetricsLog,
    TrainCallback,
    TrainingRun,
    check_run_dir,
    create_run_dir,
    mark_finished,
)
from cellcut.training.session import (
    Session,
    Sources,
    follow_checkpoint,
    open_session,
    resolve_config,
    rng_states,
)


def train(
    images: Sequence[Source],
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
        Volume files, folders or glob patterns, or in-memory (z, y, x) arrays or
        :class:`~cellcut.io.Volume` s (their voxel size: ``data.voxel_size``, else the
        Volume's). On resume the run's own files are used; arrays must be given again.
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
        ``section.field=value`` settings (a list of strings or a dict) applied on top of
        ``config``.
    """
    run_dir = Path(out)
    replaced = check_run_dir(run_dir, resume, overwrite)  # nothing is created before it all holds
    restored = Checkpoint.load(run_dir / CHECKPOINT_NAME) if resume else None
    cfg, sources = resolve_config(
        config, overrides, Sources(images, val_images, val_labels), restored, run_dir
    )
    notes = [Diagnosis("replaced-interrupted-run", 0, replaced)] if replaced else []
    if from_pretrained is not None and restored is None:
        cfg, followed = follow_checkpoint(cfg, from_pretrained)
        notes += [Diagnosis("architecture-from-checkpoint", 0, followed)] if followed else []
    with parallel.group(cfg.device):  # torchrun: one process group for the run (parallel.py)
        session = open_session(cfg, run_dir, sources, from_pretrained, restored)
        if parallel.is_main():
            create_run_dir(run_dir)
            session.cfg.save(run_dir / "config.yaml")
        parallel.barrier()
        session.notes[:0] = notes
        t = Trainer(session, callbacks)

        t.begin()
        while not t.stop_reason():
            lr = t.scheduled_lr()
            losses, grad_norm = t.forward_backward(lr)
            trouble = t.check_explosion(losses, grad_norm, lr)
            if trouble is not None:
                if trouble.kind == OUTLIER_BATCH:
                    t.skip_batch(trouble)  # a lone spike: no step, nothing else changes
                else:
                    t.roll_back(trouble)
                continue
            t.optimizer_step(losses)
            if t.run.step % cfg.log.every == 0:
                t.log_and_validate(losses, lr)
            if t.run.step % cfg.log.checkpoint_every == 0:
                t.save_checkpoint()
        return t.finish()


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


@torch.no_grad()
def pull_toward(model: torch.nn.Module, anchor: dict[str, torch.Tensor], fraction: float) -> None:
    """Move every weight ``fraction`` of the way back to ``anchor`` (same names):
    w <- w - fraction * (w - w0). Decoupled L2-SP (Li et al., ICML 2018): fine-tuning keeps
    what the starting model knew, as weight decay keeps weights small."""
    for name, p in model.named_parameters():
        p.lerp_(anchor[name], fraction)


def rec_baseline(kind: str, target: torch.Tensor) -> float:
    """Reconstruction loss of the best flat image (what 'reproduces nothing' scores)."""
    dims = tuple(range(1, target.ndim))
    if kind == "mse":
        return float(target.var(dim=dims, unbiased=False).mean())
    lo = target.amin(dim=dims, keepdim=True)
    hi = target.amax(dim=dims, keepdim=True)
    y = ((target - lo) / (hi - lo).clamp_min(1e-12)).clamp(1e-6, 1 - 1e-6)
    m = y.mean(dim=dims, keepdim=True).clamp(1e-6, 1 - 1e-6)
    return float(-(y * m.log() + (1 - y) * (1 - m).log()).mean())


class Trainer:
    """The steps of the loop in :func:`train`, over one :class:`Session`."""

    def __init__(self, session: Session, callbacks: Sequence[TrainCallback]) -> None:
        self.session = session
        self.run = session.run
        self.cfg = session.cfg
        self.callbacks = list(callbacks)
        self.main = parallel.is_main()  # under torchrun only rank 0 writes the run folder
        self.log = MetricsLog(self.run.run_dir, self.cfg, session.resumed, enabled=self.main)
        stop = self.cfg.stop
        limits = [x for x in (stop.steps, stop.epochs and stop.epochs * stop.steps_per_epoch) if x]
        self.total_steps = min(limits) if limits else None
        self.amp = use_bfloat16(session.device)
        self.good_state = self._snapshot()
        self.watch: CellShareWatch | None = None  # stop.cell_share_drift, set in begin()
        self.near_state = self.good_state  # the last state near the starting cell share
        self.net_in: torch.Tensor | None = None
        self.class_share: float | None = None
        self.bar = None
        self.t_start = time.perf_counter()

    # -- the loop's steps ------------------------------------------------------------------
    def begin(self) -> None:
        if self.main:
            self.bar = _progress_bar(self.cfg, self.run.step, self.total_steps)
        self.t_start = time.perf_counter()
        for cb in self.callbacks:
            cb.on_start(self.run)
        for note in self.session.notes:
            self._say(note)
        self.watch = self._cell_share_watch()
        self.session.model.train()

    def elapsed(self) -> float:
        return self.session.elapsed_before + time.perf_counter() - self.t_start

    def stop_reason(self) -> str:
        """Why the run stops now ('' to go on); also recorded as ``run.stopped_by``."""
        stop, step = self.cfg.stop, self.run.step
        if not self.run.stopped_by:
            if stop.steps is not None and step >= stop.steps:
                self.run.stopped_by = f"{stop.steps} steps"
            elif stop.epochs is not None and step >= stop.epochs * stop.steps_per_epoch:
                self.run.stopped_by = f"{stop.epochs} epochs"
            elif stop.minutes is not None and self.elapsed() >= stop.minutes * 60:
                self.run.stopped_by = f"{stop.minutes:g} minutes"
            elif any(cb.stop_requested() for cb in self.callbacks):
                self.run.stopped_by = "stop requested"
            elif stop.early_stop_on_plateau and PLATEAU in self.session.monitor.said:
                self.run.stopped_by = "N-cut plateau"
        self.run.stopped_by = parallel.from_main(self.run.stopped_by)  # every rank stops at once
        return self.run.stopped_by

    def scheduled_lr(self) -> float:
        minutes = self.cfg.stop.minutes
        fraction = self.elapsed() / (minutes * 60) if minutes else None
        lr = learning_rate(self.cfg, self.run.step + 1, self.total_steps, fraction)
        return lr * self.session.lr_scale

    def forward_backward(self, lr: float) -> tuple[WNetLossOutput, float]:
        """One batch through both U-Nets and the losses, gradients computed and clipped."""
        s = self.session
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        target, seen = s.sampler.pair(self.cfg.data.batch_size)
        target = target.to(s.device)
        self.net_in = target / s.input_scale  # what the reconstruction is compared with
        with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = s.trained(seen.to(s.device) / s.input_scale)
        probs = out.probs.float()
        losses = s.loss_fn(probs, out.reconstruction.float(), target, self.net_in)
        with torch.no_grad():
            dims = (0, *range(2, probs.ndim))
            self.class_share = float(probs.mean(dims).max())
        s.optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        clip = self.cfg.optimizer.grad_clip or float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(s.model.parameters(), clip))
        if parallel.active():  # the ranks' mean, so that every rank decides alike
            losses, self.class_share = _mean_over_ranks(losses, self.class_share, s.device)
            term = s.intensity_term  # its centres moved with this rank's batch: share them
            if term is not None:
                shared = parallel.mean(term.centres.tolist(), s.device)
                term.centres.copy_(torch.tensor(shared, dtype=term.centres.dtype))
        return losses, grad_norm

    def check_explosion(
        self, losses: WNetLossOutput, grad_norm: float, lr: float
    ) -> Diagnosis | None:
        """A non-finite loss or gradient, a gradient spike, or a collapse to one class (see
        the loss monitor)."""
        ncut, rec = float(losses.ncut), float(losses.reconstruction)
        return self.session.monitor.check_step(
            self.run.step + 1, ncut, rec, grad_norm, lr, self.class_share
        )

    def skip_batch(self, diagnosis: Diagnosis) -> None:
        """An outlier batch (a lone gradient spike under clipping): no step, say so."""
        self._say(diagnosis)

    def roll_back(self, diagnosis: Diagnosis) -> None:
        """After an explosion or a collapse: the last good weights and optimizer, half the
        learning rate."""
        s = self.session
        s.model.load_state_dict(self.good_state[0])
        s.optimizer.load_state_dict(self.good_state[1])
        s.lr_scale *= 0.5
        self._say(diagnosis)
        if s.lr_scale < 1e-4:
            self.run.stopped_by = "repeated explosions"

    def optimizer_step(self, losses: WNetLossOutput) -> None:
        """The optimizer's step, then the pull toward the starting weights
        (``optimizer.anchor``)."""
        s = self.session
        s.optimizer.step()
        if s.anchor is not None:
            lr = s.optimizer.param_groups[0]["lr"]
            pull_toward(s.model, s.anchor, min(1.0, lr * s.anchor_strength))
        self.run.step += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(
                ncut=f"{float(losses.ncut):.4f}",
                rec=f"{float(losses.reconstruction):.4g}",
                total=f"{losses.total.item():.4g}",
            )

    def log_and_validate(self, losses: WNetLossOutput, lr: float) -> None:
        """A row of metrics.csv, the monitor's reading, and a new last good state (unless the
        run looks collapsed)."""
        s, run = self.session, self.run
        rec = float(losses.reconstruction)
        baseline = rec_baseline(self.cfg.loss.reconstruction, self.net_in)
        baseline = max(parallel.mean([baseline], s.device)[0], 1e-12)
        record: dict[str, Any] = {
            "step": run.step,
            "epoch": run.step / self.cfg.stop.steps_per_epoch,
            "elapsed_s": round(self.elapsed(), 3),
            "lr": lr,
            "ncut": float(losses.ncut),
            "reconstruction": rec,
            "intensity": None if losses.intensity is None else float(losses.intensity),
            "total": losses.total.item(),
            "rec_ratio": rec / baseline,
        }
        record.update(s.validator(s.model, s.loss_fn))
        if self.watch is not None:
            record["cell_share"] = self._cell_share(self.watch.classes)
        run.history.append(record)
        self.log.write(record)
        if len(run.history) % 5 == 1:
            self.log.plot(run.history)
        for cb in self.callbacks:
            cb.on_log(record)
        for d in s.monitor.update(run.step, record["ncut"], rec, baseline, record.get("val_ncut")):
            self._say(d)
        drift = None if self.watch is None else self.watch.update(run.step, record["cell_share"])
        if drift is not None:
            self._go_back_and_stop(drift)
        elif s.monitor.healthy:
            self.good_state = self._snapshot()
            if self.watch is not None and self.watch.near_start:
                self.near_state = self.good_state

    def _cell_share_watch(self) -> CellShareWatch | None:
        """``stop.cell_share_drift`` for a fine-tune that keeps the starting model's classes:
        those classes and their share of the reference patches, measured before the first
        step (a resumed run reads them from its checkpoint)."""
        s, limit = self.session, self.cfg.stop.cell_share_drift
        if limit is None or not s.keeps_model_classes:
            return None
        if s.cell_share_start is None:
            probs = self._reference_probs()
            classes = choose_foreground_classes(probs.cpu(), s.reference_patches)
            s.cell_share_start = {"classes": classes, "share": self._cell_share(classes, probs)}
        start = s.cell_share_start
        return CellShareWatch(start["share"], limit, start["classes"])

    def _cell_share(self, classes: list[int], probs: torch.Tensor | None = None) -> float:
        """The share of the reference patches' voxels that ``classes`` hold with probability
        over 0.5. Not the soft mass: a fine-tune that sharpens the edges of sparse nuclei
        lowers that by a fifth (light-sheet) while the cells stay the same."""
        probs = self._reference_probs() if probs is None else probs
        share = float((probs[:, classes].sum(1) > 0.5).float().mean())
        return parallel.mean([share], self.session.device)[0]

    def _reference_probs(self) -> torch.Tensor:
        """The model's class probabilities on the reference patches (in eval mode)."""
        s = self.session
        was_training = s.model.training
        s.model.eval()
        with torch.inference_mode():
            probs = s.model.encode(s.reference_patches.to(s.device) / s.input_scale).float()
        s.model.train(was_training)
        return probs

    def _go_back_and_stop(self, drift: Diagnosis) -> None:
        """The fine-tune left the starting model's cells: back to the last state near them."""
        s = self.session
        s.model.load_state_dict(self.near_state[0])
        s.optimizer.load_state_dict(self.near_state[1])
        self.good_state = self.near_state
        self._say(drift)
        self.run.stopped_by = "cell share drift"

    def save_checkpoint(self, final: bool = False) -> Path:
        self.run.foreground_classes = self._decide_foreground()
        ranks = parallel.gather({"sampler_rng": self.session.sampler.state(), "rng": rng_states()})
        path = self.run.checkpoint
        if self.main:
            path = self._checkpoint(final, ranks if parallel.active() else []).save(path)
            for cb in self.callbacks:
                cb.on_checkpoint(path)
        return path

    def finish(self) -> TrainingRun:
        """Cell classes, the final checkpoint, the pictures; then ``on_end``."""
        if self.bar is not None:
            self.bar.close()
        self.save_checkpoint(final=True)
        self.session.model.eval()
        self.log.plot(self.run.history)
        self.log.close()
        if self.main:
            if self.cfg.log.plots:
                self._preview()
            mark_finished(self.run.run_dir)
        parallel.barrier()
        for cb in self.callbacks:
            cb.on_end(self.run)
        return self.run

    # -- helpers ---------------------------------------------------------------------------
    def _snapshot(self) -> tuple[dict, dict]:
        s = self.session
        return copy.deepcopy(s.model.state_dict()), copy.deepcopy(s.optimizer.state_dict())

    def _say(self, d: Diagnosis) -> None:
        self.run.diagnoses.append(d)
        self.log.note(d)
        for cb in self.callbacks:
            cb.on_diagnosis(d)
        if self.cfg.log.progress and self.main:
            _print_line(d.message)

    def _decide_foreground(self) -> list[int]:
        """The cell classes, decided on the reference patches (validation ones, else fixed)."""
        probs = self._reference_probs()
        return choose_foreground_classes(probs.cpu(), self.session.reference_patches)

    def _checkpoint(self, final: bool, ranks: list[dict[str, Any]]) -> Checkpoint:
        s, run = self.session, self.run
        term = s.intensity_term
        return Checkpoint(
            architecture=asdict(s.model.arch),
            model={k: v.detach().cpu() for k, v in s.model.state_dict().items()},
            config=self.cfg.model_dump(mode="json"),
            foreground_classes=run.foreground_classes,
            intensity_sigma=run.intensity_sigma,
            suggested_intensity_sigma=run.suggested_sigma,
            input_scale=s.input_scale,
            intensity_centres=term.centres.tolist() if term is not None else None,
            intensity_momentum=term.momentum if term is not None else None,
            step=run.step,
            elapsed_s=self.elapsed(),
            history=run.history,
            started_from=s.started_from,
            optimizer=s.optimizer.state_dict(),
            sampler_rng=s.sampler.state(),
            rng=rng_states(),
            lr_scale=s.lr_scale,
            said=sorted(s.monitor.said),
            grad_norms=s.monitor.grad_norms[-100:],
            final=final,
            ranks=ranks,
            anchor=None if s.anchor is None else {k: v.cpu() for k, v in s.anchor.items()},
            anchor_strength=s.anchor_strength,
            cell_share_start=s.cell_share_start,
            trainable=s.trainable,
            **s.sources.record(),
        )

    def _preview(self) -> None:
        from cellcut.figures import plot_preview

        s = self.session
        sample = s.reference_patches[:1]
        with torch.inference_mode():
            out = s.model(sample.to(s.device) / s.input_scale)
        plot_preview(
            sample[0, 0].numpy(),
            out.probs[0].float().cpu().numpy(),
            out.reconstruction[0, 0].float().cpu().numpy(),
            self.run.foreground_classes,
            self.run.run_dir / "preview.png",
        )


def _mean_over_ranks(
    losses: WNetLossOutput, class_share: float | None, device: torch.device
) -> tuple[WNetLossOutput, float | None]:
    """The logged loss terms and the class share, averaged over the torchrun ranks (after the
    backward pass: the totals are for reading only)."""
    terms = [losses.total, losses.ncut, losses.reconstruction, losses.intensity]
    values = [0.0 if v is None else float(v) for v in terms] + [class_share or 0.0]
    mean = parallel.mean(values, device)
    as_tensor = [torch.tensor(v) for v in mean[:4]]
    intensity = None if losses.intensity is None else as_tensor[3]
    share = None if class_share is None else mean[4]
    return WNetLossOutput(as_tensor[0], as_tensor[1], as_tensor[2], intensity), share


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
