"""``refine()``: the supervised second stage, from images to a refined model, top to bottom.

Set up (a fresh run, or ``resume``): the run folder, the settings, the W-Net's instances of
every image (or labels given), their targets, the network and optimizer. Then the loop: check
the limits (steps, minutes, a stop request); a batch of augmented patch pairs, cross-entropy +
Dice on the voxels not ignored, backward, clip, step; every ``log_every`` steps a row of
``metrics.csv``; every ``checkpoint_every`` steps a checkpoint. At the end the final checkpoint,
``losses.png`` and ``preview.png``.

The run folder holds ``refine.yaml``, ``checkpoint.pt`` (a model like any other:
``cellcut segment --model RUN``), ``metrics.csv``, the pictures, and ``pseudo-labels/`` (the
W-Net's instances and probabilities the targets came from, reused on ``--resume``).
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cellcut.config import RefineConfig, refine_config
from cellcut.errors import CheckpointError
from cellcut.losses import dice_ce_loss
from cellcut.model import CHECKPOINT_NAME, Checkpoint, RefinedNet3D
from cellcut.refinement.data import PairSampler, RefineVolume
from cellcut.refinement.sources import Source, open_sources, pseudo_labelled
from cellcut.refinement.targets import IGNORE
from cellcut.runtime import resolve_device
from cellcut.training.run import TrainCallback, check_run_dir, create_run_dir, mark_finished
from cellcut.training.session import rng_states, set_rng_states

METRIC_FIELDS = [
    "step",
    "elapsed_s",
    "lr",
    "loss",
    "cross_entropy",
    "dice",
    "accuracy",
    "fixed_loss",
    "fixed_accuracy",
]
"""Columns of a refinement's ``metrics.csv``. ``accuracy``: the share of the batch's kept
voxels whose most likely class is the target's; ``fixed_*``: the same on fixed, unaugmented
patches of the same images (agreement with the pseudo-labels, not a held-out score)."""
FIXED_PATCHES = 4
UNAUGMENTED = ("artifacts", "gamma", "intensity_scale", "intensity_shift", "noise", "blur")
"""The augmentations the fixed patches are drawn without."""


@dataclass
class RefineRun:
    """What a refinement produced (and, during the run, where it is)."""

    run_dir: Path
    config: RefineConfig
    model: RefinedNet3D
    source_model: str
    step: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: str = ""

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME


def refine(
    images: Sequence[Source],
    out: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    labels: Sequence[Source] | None = None,
    config: RefineConfig | dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[TrainCallback] = (),
    **settings: Any,
) -> RefineRun:
    """Train the supervised second stage on a W-Net's instances of ``images``.

    Parameters
    ----------
    images
        Paths (files, folders, globs) or (z, y, x) arrays.
    out
        The run folder.
    model
        The W-Net whose instances become the targets: None or ``"default"`` (the shipped
        model), a name, a run folder or checkpoint.
    labels
        Instance labels made earlier, one per image (instead of segmenting with ``model``).
    config, settings
        :class:`cellcut.config.RefineConfig` (object or dict), keyword settings on top, e.g.
        ``minutes=5``, ``steps=500``, ``voxel_size=(2, 1, 1)``.
    resume
        Continue the run in ``out`` where its checkpoint left it (same images).
    overwrite
        Replace an existing run in ``out``.
    callbacks
        Objects with the hooks of :class:`cellcut.training.TrainCallback` (``on_start``,
        ``on_log``, ``on_checkpoint``, ``on_end``, ``stop_requested``).
    """
    run_dir = Path(out)
    replaced = check_run_dir(run_dir, resume, overwrite, command="cellcut refine")
    restored = _restored(run_dir) if resume else None
    if restored is not None:
        cfg = refine_config(restored.config.get("refine", {}), **settings)
        model = restored.config.get("source_model", model)
    else:
        cfg = refine_config(config, **settings)
    sources = open_sources(images, labels, model, cfg)  # all checked before the folder exists
    create_run_dir(run_dir)
    cfg.save(run_dir / "refine.yaml")
    if replaced and cfg.progress:
        print(f"note: {replaced}", file=sys.stderr)
    volumes = pseudo_labelled(sources, cfg, run_dir, resume)
    wnet = sources.wnet
    device = resolve_device(cfg.device)
    if restored is not None:
        net = restored.build_model(str(run_dir))
        assert isinstance(net, RefinedNet3D)
    else:
        torch.manual_seed(cfg.seed)  # the same seed, the same initial network
        net = RefinedNet3D(base_width=cfg.base_width, depth=cfg.depth)
    run = RefineRun(run_dir, cfg, net.to(device), wnet.source)
    loop = _Loop(run, volumes, wnet.normalization, wnet.input_scale, device, callbacks, restored)
    return loop.execute()


def _restored(run_dir: Path) -> Checkpoint:
    ckpt = Checkpoint.load(run_dir / CHECKPOINT_NAME)
    if ckpt.kind != "refined":
        raise CheckpointError(
            "cannot resume",
            f"the folder holds a {ckpt.kind} run, not a refinement",
            "continue it with cellcut train --resume, or choose another --out",
            file=run_dir,
        )
    return ckpt


class _Loop:
    """The loop of :func:`refine` and its steps."""

    def __init__(
        self,
        run: RefineRun,
        volumes: Sequence[RefineVolume],
        normalization: str,
        input_scale: float,
        device: torch.device,
        callbacks: Sequence[TrainCallback],
        restored: Checkpoint | None,
    ) -> None:
        cfg = run.config
        self.run, self.cfg, self.device = run, cfg, device
        self.normalization, self.scale = normalization, input_scale
        self.callbacks = list(callbacks)
        self.sampler = PairSampler(volumes, cfg, seed=cfg.seed)
        plain = cfg.model_copy(update=dict.fromkeys(UNAUGMENTED, 0.0))
        self.fixed = PairSampler(volumes, plain, seed=cfg.seed + 1).batch(FIXED_PATCHES)
        self.optimizer = torch.optim.AdamW(
            run.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        torch.manual_seed(cfg.seed)
        if restored is not None:
            self._restore(restored)
        self.log_path = run.run_dir / "metrics.csv"
        if restored is None or not self.log_path.exists():
            with open(self.log_path, "w", newline="") as f:
                csv.DictWriter(f, METRIC_FIELDS).writeheader()
        self.t_start = time.perf_counter()
        self.elapsed_before = run.elapsed_s

    def execute(self) -> RefineRun:
        bar = _progress_bar(self.cfg, self.run.step)
        for cb in self.callbacks:
            cb.on_start(self.run)  # type: ignore[arg-type]
        self.run.model.train()
        while not self.stop_reason():
            lr = self.scheduled_lr()
            losses, accuracy = self.step(lr)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(losses.total):.4f}", acc=f"{accuracy:.3f}")
            if self.run.step % self.cfg.log_every == 0:
                self.log(losses, accuracy, lr)
            if self.run.step % self.cfg.checkpoint_every == 0:
                self.save()
        if bar is not None:
            bar.close()
        return self.finish()

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start

    def stop_reason(self) -> str:
        cfg, run = self.cfg, self.run
        if not run.stopped_by:
            if cfg.steps is not None and run.step >= cfg.steps:
                run.stopped_by = f"{cfg.steps} steps"
            elif cfg.minutes is not None and self.elapsed() >= cfg.minutes * 60:
                run.stopped_by = f"{cfg.minutes:g} minutes"
            elif any(cb.stop_requested() for cb in self.callbacks):
                run.stopped_by = "stop requested"
        return run.stopped_by

    def scheduled_lr(self) -> float:
        """Cosine decay to 5% over the further of the step and time budgets."""
        cfg = self.cfg
        done = [self.run.step / cfg.steps] if cfg.steps else []
        if cfg.minutes:
            done.append(self.elapsed() / (cfg.minutes * 60))
        progress = min(1.0, max(done)) if done else 0.0
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    def step(self, lr: float):
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = self.sampler.batch(self.cfg.batch_size)
        x, y = x.to(self.device) / self.scale, y.to(self.device)
        logits = self.run.model(x)
        losses = dice_ce_loss(logits, y, IGNORE, self.cfg.dice_weight)
        self.optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        torch.nn.utils.clip_grad_norm_(self.run.model.parameters(), 1.0)
        self.optimizer.step()
        self.run.step += 1
        return losses, _accuracy(logits.detach(), y)

    def log(self, losses, accuracy: float, lr: float) -> None:
        net = self.run.model
        net.eval()
        with torch.inference_mode():
            x, y = self.fixed[0].to(self.device) / self.scale, self.fixed[1].to(self.device)
            logits = net(x)
            fixed = dice_ce_loss(logits, y, IGNORE, self.cfg.dice_weight)
            fixed_acc = _accuracy(logits, y)
        net.train()
        record = {
            "step": self.run.step,
            "elapsed_s": round(self.elapsed(), 3),
            "lr": lr,
            "loss": losses.total.item(),
            "cross_entropy": losses.cross_entropy.item(),
            "dice": losses.dice.item(),
            "accuracy": accuracy,
            "fixed_loss": float(fixed.total),
            "fixed_accuracy": fixed_acc,
        }
        self.run.history.append(record)
        with open(self.log_path, "a", newline="") as f:
            csv.DictWriter(f, METRIC_FIELDS).writerow(record)
        for cb in self.callbacks:
            cb.on_log(record)

    def save(self, final: bool = False) -> Path:
        run = self.run
        run.elapsed_s = self.elapsed()
        ckpt = Checkpoint(
            architecture=_arch(run.model),
            model={k: v.detach().cpu() for k, v in run.model.state_dict().items()},
            config={
                "refine": run.config.model_dump(mode="json"),
                "data": {"normalization": self.normalization},
                "source_model": run.source_model,
            },
            kind="refined",
            foreground_classes=[1, 2],
            input_scale=self.scale,
            step=run.step,
            elapsed_s=run.elapsed_s,
            history=list(run.history),
            optimizer=self.optimizer.state_dict(),
            sampler_rng=self.sampler.state(),
            rng=rng_states(),
            final=final,
        )
        path = ckpt.save(run.checkpoint)
        for cb in self.callbacks:
            cb.on_checkpoint(path)
        return path

    def finish(self) -> RefineRun:
        self.save(final=True)
        self.run.model.eval()
        if self.cfg.plots:
            from cellcut.figures import plot_refine_losses, plot_refine_preview

            if self.run.history:
                plot_refine_losses(self.run.history, self.run.run_dir / "losses.png")
            with torch.inference_mode():
                probs = self.run.model.encode(self.fixed[0][:1].to(self.device) / self.scale)
            plot_refine_preview(
                self.fixed[0][0, 0].numpy(),
                self.fixed[1][0].numpy(),
                probs[0].float().cpu().numpy(),
                self.run.run_dir / "preview.png",
            )
        mark_finished(self.run.run_dir)
        for cb in self.callbacks:
            cb.on_end(self.run)  # type: ignore[arg-type]
        return self.run

    def _restore(self, ckpt: Checkpoint) -> None:
        run = self.run
        run.step, run.elapsed_s = ckpt.step, ckpt.elapsed_s
        run.history = list(ckpt.history)
        if ckpt.optimizer is not None:
            self.optimizer.load_state_dict(ckpt.optimizer)
        if ckpt.sampler_rng is not None:
            self.sampler.set_state(ckpt.sampler_rng)
        if ckpt.rng is not None:
            set_rng_states(ckpt.rng)


def _arch(model: RefinedNet3D) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(model.arch)


def _accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    keep = target != IGNORE
    if not bool(keep.any()):
        return float("nan")
    return float((logits.argmax(1) == target)[keep].float().mean())


def _progress_bar(cfg: RefineConfig, start: int):
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=start, unit="step", dynamic_ncols=True, desc="refining")


__all__ = ["METRIC_FIELDS", "RefineRun", "refine"]
