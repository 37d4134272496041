"""A training run as the outside sees it: callbacks, the result, and the run folder's files.

The run folder holds ``config.yaml``, ``checkpoint.pt``, ``metrics.csv`` (one row per log
point), ``diagnostics.txt``, ``losses.png`` and ``preview.png``. Progress reaches the caller
only through :class:`TrainCallback` s, so a GUI can run training in a worker thread without the
core importing any GUI toolkit.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellcut.config import TrainConfig
from cellcut.errors import OutputError
from cellcut.model import CHECKPOINT_NAME, WNet3D
from cellcut.outputs import (
    atomic_output,
    check_name_length,
    check_writable,
    process_gone,
    this_process,
)
from cellcut.training.diagnostics import Diagnosis

METRIC_FIELDS = [
    "step",
    "epoch",
    "elapsed_s",
    "lr",
    "ncut",
    "reconstruction",
    "intensity",
    "total",
    "rec_ratio",
    "val_ncut",
    "val_reconstruction",
    "val_intensity",
    "val_total",
    "val_dice",
    "val_f1",
    "cell_share",
]
"""Columns of ``metrics.csv`` (``intensity``: the class-intensity term, empty when off;
``cell_share``: the starting model's cell classes' share of the validation patches, logged by a
fine-tune that keeps them, see ``stop.cell_share_drift``)."""


class TrainCallback:
    """Hooks into a training run; override what you need. Called in the training thread."""

    def on_start(self, run: TrainingRun) -> None:
        """Before the first step (``run.step`` is the starting step)."""

    def on_log(self, record: dict[str, float]) -> None:
        """At every log point, with the row written to ``metrics.csv``."""

    def on_diagnosis(self, diagnosis: Diagnosis) -> None:
        """When the loss monitor notices something (see :mod:`cellcut.training.diagnostics`)."""

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


RUNNING = ".cellcut-running"
"""Marker of a run in progress in its folder: who runs it; removed when the run finishes."""


def check_run_dir(
    out: Path, resume: bool, overwrite: bool, command: str = "cellcut train"
) -> str | None:
    """Check, before any work and without creating anything, that ``out`` can hold a new run
    (or a resumed one) of ``command``. Returns a note when it replaces an interrupted run."""
    out = Path(out)
    check_name_length(out)
    if out.exists() and not out.is_dir():
        raise OutputError(
            "cannot write run",
            "the path exists and is not a folder",
            "choose a folder for --out",
            file=out,
        )
    state = _run_state(out)
    if state == "running":
        raise OutputError(
            "run folder in use",
            "a run is in progress there (another process)",
            "wait for it to end, or choose another --out",
            file=out,
        )
    has_checkpoint = (out / CHECKPOINT_NAME).exists()
    if resume and not has_checkpoint:
        raise OutputError(
            "cannot resume",
            "the folder holds no checkpoint",
            f"give the run folder of an earlier `{command}`",
            file=out,
        )
    note = None
    if not resume and has_checkpoint and not overwrite:
        if state != "interrupted":
            raise OutputError(
                "run folder in use",
                "it already holds a training run",
                "pass --resume to continue it, --overwrite to replace it, or choose another --out",
                file=out,
            )
        note = (
            f"the run in {out} was interrupted and never finished: starting it again "
            "(--resume would have continued it)"
        )
    check_writable(out, what="run", inside=True)
    return note


def _run_state(out: Path) -> str:
    """ "running" (its process lives), "interrupted" (its process is gone or, on another
    host, cannot be asked), or "" (no run in progress)."""
    marker = out / RUNNING
    if not marker.exists():
        return ""
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return "interrupted"
    return "running" if process_gone(record) is False else "interrupted"


def create_run_dir(out: Path) -> Path:
    """Make the run folder (once its inputs and settings are valid) and mark the run as in
    progress; :func:`mark_finished` removes the mark."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_output(out / RUNNING) as tmp:
            tmp.write_text(json.dumps(this_process()))
    except OSError as e:
        raise OutputError(
            "cannot write run",
            f"the folder cannot be created ({e.strerror or e})",
            "choose a folder you can write to",
            file=out,
        ) from e
    return out


def mark_finished(run_dir: Path) -> None:
    (Path(run_dir) / RUNNING).unlink(missing_ok=True)


class MetricsLog:
    """metrics.csv (always), diagnostics.txt, TensorBoard (when asked and installed),
    losses.png."""

    def __init__(
        self, run_dir: Path, config: TrainConfig, resume: bool, enabled: bool = True
    ) -> None:
        self.path = run_dir / "metrics.csv"
        self.diagnostics = run_dir / "diagnostics.txt"
        self.run_dir = run_dir
        self.plots = config.log.plots
        self.enabled = enabled  # False on the other ranks of a torchrun run: rank 0 writes
        self.tb = None
        if not enabled:
            return
        if not resume or not self.path.exists():
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, METRIC_FIELDS).writeheader()
        if not resume:
            self.diagnostics.unlink(missing_ok=True)
        if config.log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, METRIC_FIELDS).writerow(
                {k: ("" if record.get(k) is None else record[k]) for k in METRIC_FIELDS}
            )
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and v is not None and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, int(record["step"]))

    def note(self, diagnosis: Diagnosis) -> None:
        if not self.enabled:
            return
        with open(self.diagnostics, "a") as f:
            f.write(diagnosis.message + "\n")

    def plot(self, history: list[dict[str, Any]]) -> None:
        if self.enabled and self.plots and history:
            from cellcut.figures import plot_losses

            plot_losses(history, self.run_dir / "losses.png")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
