"""Reading the loss curves for the user: the reference plugin's troubleshooting, automated.

Its documentation tells users what to do when the soft N-cut explodes (lower the learning
rate; here also when training collapses to one class, the N-cut then sitting at 1 - 1/K), is
unstable (the normalization does not suit the image: adjust σ_I), when the
reconstruction is poor (BCE with weight 0.5, or an MSE weight near 1), and that training is
good once the N-cut plateaus. :class:`LossMonitor` watches the logged values and says so
itself; the training loop acts on an explosion or a collapse (roll back, lower the learning rate).
Advice never proposes the setting already in use.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from cellcut.normalize import METHODS

EXPLODED = "exploded"
OUTLIER_BATCH = "outlier_batch"
COLLAPSED = "collapsed"
CLASSES_ADOPTED = "classes_adopted"
CELL_SHARE_DRIFT = "cell_share_drift"
UNSTABLE = "unstable"
POOR_RECONSTRUCTION = "poor_reconstruction"
PLATEAU = "plateau"
NORMALIZATIONS = tuple(m for m in METHODS if m != "none")  # "none" needs an explicit σ_I
COLLAPSE_SHARE = 0.999
"""A batch whose most probable class holds this share of the probability mass is one class."""
COLLAPSE_STEPS = 20
"""Consecutive one-class steps that make a collapse (single all-background patches are not)."""
SPIKE_FACTOR = 50.0
"""A gradient norm this many times the median of the last 100 good steps' is a spike."""
SPIKES_TO_EXPLODE = 3
SPIKE_WINDOW = 20
"""With gradient clipping, a lone spike is an outlier batch (its step is skipped, nothing else
changes); :data:`SPIKES_TO_EXPLODE` spikes among the last :data:`SPIKE_WINDOW` steps checked are
an explosion. Continued training of the soup on its mixed volumes (batch 1-2, clip 1.0) met
lone spikes of 40-120x the median (94-400 against ~3-5) at the same steps in runs with
different weights and learning rates, so the batch, not the optimizer, made them; when each was
taken for an explosion the learning rate was halved 2-7 times in 25 minutes, to 4e-8; skipped,
a 13-minute rerun kept its schedule and ended at the same validation N-cut (README,
*Diagnostics during training*). A clipped step is bounded whatever the batch; a diverging
optimizer spikes again and again."""


@dataclass
class Diagnosis:
    """Something the monitor noticed: what, when, and what to do."""

    kind: str
    step: int
    message: str


DRIFT_WINDOW = 3
"""Logged shares averaged before they are compared (one log's share moves ±15% on grainy data)."""
DRIFT_NEAR = 1.1
"""A state whose share is within this factor of the start's is one to go back to."""


class CellShareWatch:
    """Is a fine-tune redefining what a cell is, not refining it? (``stop.cell_share_drift``)

    A fine-tune that keeps the starting model's classes should move its cells' boundaries, not
    how much of the image is cells. On a volume where a structure brighter than the background
    surrounds the nuclei (tissue against empty space), a few optimizer steps tip the shipped
    model into that other partition: on the regime suite's tissue-background volume the first
    10 steps raised the cells' share of the validation patches from 28.6% to 39% (it stays at
    1.32-1.44x), and instance F1 fell from 0.74 to 0.70 (Dice 0.71 to 0.49). Sharpening shrinks
    the share instead: a fine-tune on sparse light-sheet nuclei held it at 0.73-0.87x of the
    start, on grainy confocal ones it swung between 0.79x and 1.01x, on packed ones between
    1.03x and 1.18x. So the watch compares the mean share of the last :data:`DRIFT_WINDOW`
    logs with the starting model's and answers with the diagnosis when it grew beyond
    ``limit`` or shrank beyond ``limit`` squared; the loop then goes back to the last state
    within :data:`DRIFT_NEAR` of the start and stops. The share is of voxels over probability
    0.5, not the soft mass, which sharpening alone lowers.
    """

    def __init__(self, start_share: float, limit: float, classes: list[int]) -> None:
        self.start = float(start_share)
        self.limit = float(limit)
        self.classes = list(classes)
        self.shares: list[float] = []
        self.near_step = 0  # the last logged step whose share was near the start's

    @property
    def near_start(self) -> bool:
        """The latest share is within :data:`DRIFT_NEAR` of the start's."""
        return bool(self.shares) and 1 / DRIFT_NEAR <= self._ratio(self.shares[-1]) <= DRIFT_NEAR

    def _ratio(self, share: float) -> float:
        return max(share, 1e-9) / max(self.start, 1e-9)

    def update(self, step: int, share: float) -> Diagnosis | None:
        self.shares.append(float(share))
        if self.near_start:
            self.near_step = step
        recent = float(np.mean(self.shares[-DRIFT_WINDOW:]))
        ratio = self._ratio(recent)
        if len(self.shares) < DRIFT_WINDOW or 1 / self.limit**2 <= ratio <= self.limit:
            return None
        return Diagnosis(
            CELL_SHARE_DRIFT,
            step,
            f"step {step}: fine-tuning moved the cells' share of the validation patches from "
            f"{self.start:.1%} to {recent:.1%}: it is taking another partition of these images "
            "than the starting model's cells (for example bright tissue against empty space), "
            f"not refining them. Went back to the weights of step {self.near_step} and stopped. "
            "To start from these images' own classes instead: loss.intensity_centres=otsu; "
            "to fine-tune anyway: stop.cell_share_drift=null",
        )


class LossMonitor:
    """Watches N-cut and reconstruction values logged during training.

    Parameters
    ----------
    suggested_sigma
        σ_I proposed by :func:`cellcut.normalize.suggest_intensity_sigma` for the data.
    current_sigma
        σ_I in use.
    reconstruction
        ``"mse"`` or ``"bce"`` (for the advice).
    normalization
        The normalization in use (advice proposes the others).
    fine_tuning
        The run starts from a trained model: its N-cut may start at its plateau, so only a
        rise (not a flat curve) says that it does not converge.
    clipped
        Gradients are clipped (``optimizer.grad_clip``): a lone gradient spike is then an
        outlier batch, not an explosion (:data:`SPIKES_TO_EXPLODE`).
    window
        Number of logged points each trend is judged on.
    """

    def __init__(
        self,
        suggested_sigma: float,
        current_sigma: float,
        reconstruction: str = "mse",
        window: int = 10,
        normalization: str = "percentile",
        fine_tuning: bool = False,
        clipped: bool = True,
    ) -> None:
        self.clipped = clipped
        self.spikes: deque[bool] = deque(maxlen=SPIKE_WINDOW)  # last steps checked: spiked?
        self.suggested_sigma = suggested_sigma
        self.fine_tuning = fine_tuning
        self.current_sigma = current_sigma
        self.reconstruction = reconstruction
        self.normalization = normalization
        self.one_class_steps = 0
        self.window = window
        self.steps: list[int] = []
        self.ncut: list[float] = []
        self.rec_ratio: list[float] = []
        self.grad_norms: list[float] = []
        self.said: set[str] = set()

    # -- every step --------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        """False while the run looks collapsed (its state is then no good one to return to)."""
        return self.one_class_steps == 0

    def check_step(
        self,
        step: int,
        ncut: float,
        rec: float,
        grad_norm: float,
        lr: float,
        class_share: float | None = None,
    ) -> Diagnosis | None:
        """An explosion: a non-finite loss or gradient, or a gradient spike
        (:data:`SPIKE_FACTOR` times its recent median) without clipping or repeated
        (:data:`SPIKES_TO_EXPLODE` in :data:`SPIKE_WINDOW` steps) with it; an outlier batch: a
        lone spike with clipping (the caller skips its step); or a collapse: one class holding
        every voxel (``class_share``, the largest class's share of the batch's probability
        mass) for :data:`COLLAPSE_STEPS` steps.

        The gradient norm (before clipping) is the signal because the losses themselves vary
        from patch to patch with the image content; a diverging optimizer shows in the
        gradient first. On an explosion or a collapse the caller rolls back to the last good
        state and lowers the rate.
        """
        collapsed = self._check_collapse(step, ncut, rec, lr, class_share)
        if collapsed is not None:
            return collapsed
        values = {"N-cut": ncut, "reconstruction": rec, "gradient norm": grad_norm}
        bad = [name for name, v in values.items() if not math.isfinite(v)]
        recent = self.grad_norms[-100:]
        median = float(np.median(recent)) if recent else 0.0
        spike = not bad and len(recent) >= 20 and grad_norm > SPIKE_FACTOR * median + 1e-12
        self.spikes.append(spike)
        if not bad and not spike:
            self.grad_norms.append(grad_norm)
            return None
        ratio = f"{grad_norm / max(median, 1e-12):.0f}x its recent median of {median:.3g}"
        repeated = sum(self.spikes) >= SPIKES_TO_EXPLODE
        if spike and self.clipped and not repeated:
            return Diagnosis(
                OUTLIER_BATCH,
                step,
                f"step {step}: skipped a batch whose gradient norm was {grad_norm:.3g} ({ratio}):"
                " an outlier patch, not an explosion, while it stays alone (the learning rate "
                f"is unchanged; {SPIKES_TO_EXPLODE} such batches in {SPIKE_WINDOW} steps are "
                "taken for one)",
            )
        if bad:
            what = f"{', '.join(bad)} became NaN/infinite"
        elif self.clipped:
            what = f"{sum(self.spikes)} gradient spikes in {len(self.spikes)} steps, now {ratio}"
        else:
            what = f"the gradient norm jumped to {grad_norm:.3g} ({ratio})"
        self.spikes.clear()
        return Diagnosis(
            EXPLODED,
            step,
            f"step {step}: the loss exploded ({what}) at learning rate {lr:.3g}; "
            f"rolled back to the last good state and halved the learning rate",
        )

    def _check_collapse(
        self, step: int, ncut: float, rec: float, lr: float, class_share: float | None
    ) -> Diagnosis | None:
        if class_share is None or not class_share >= COLLAPSE_SHARE:
            self.one_class_steps = 0
            return None
        self.one_class_steps += 1
        if self.one_class_steps < COLLAPSE_STEPS:
            return None
        self.one_class_steps = 0
        return Diagnosis(
            COLLAPSED,
            step,
            f"step {step}: training collapsed: one class has taken every voxel for "
            f"{COLLAPSE_STEPS} steps (N-cut {ncut:.3f}, reconstruction {rec:.3g}) at learning "
            f"rate {lr:.3g}, which is too high; rolled back to the last good state and halved "
            "the learning rate (lower optimizer.lr to start lower)",
        )

    def _other_normalizations(self) -> str:
        others = [n for n in NORMALIZATIONS if n != self.normalization]
        return ", ".join(f"--set data.normalization={n}" for n in others)

    # -- at each log point -------------------------------------------------------------------
    def update(
        self,
        step: int,
        ncut: float,
        rec: float,
        rec_baseline: float,
        val_ncut: float | None = None,
    ) -> list[Diagnosis]:
        """Record a logged point and return what is newly worth saying.

        ``rec_baseline`` is the reconstruction loss a flat image would get on the same batch
        (the patch's variance, for MSE), so ``rec / rec_baseline`` near 1 means the decoder
        reproduces nothing. Trends are read on ``val_ncut`` (fixed validation patches) when
        given, since a single training batch's N-cut varies with its content.
        """
        self.steps.append(step)
        self.ncut.append(ncut if val_ncut is None else val_ncut)
        self.rec_ratio.append(rec / max(rec_baseline, 1e-12))
        out: list[Diagnosis] = []
        w = self.window
        if len(self.ncut) < w + 2:
            return out
        recent = np.asarray(self.ncut[-w:])
        first = self.ncut[0]
        drop = first - float(np.median(recent))
        spread = float(np.std(np.diff(recent)))
        slope = float(np.polyfit(np.arange(w), recent, 1)[0]) * w

        # a fresh run must bring its N-cut down; a fine-tune may start at its plateau
        least_drop = -0.02 if self.fine_tuning else 0.02
        unstable = spread > 0.05 or (drop < least_drop and len(self.ncut) >= 2 * w)
        if unstable and UNSTABLE not in self.said:
            self.said.add(UNSTABLE)
            trend = "risen" if self.fine_tuning else "not decreased"
            why = (
                f"it swings by {spread:.3f} between logs"
                if spread > 0.05
                else f"it has {trend} since the start ({first:.3f} -> {recent[-1]:.3f})"
            )
            same = abs(self.suggested_sigma - self.current_sigma) <= 0.2 * self.current_sigma
            advice = (
                f"try another normalization ({self._other_normalizations()}, or "
                "data.normalization=none with an explicit loss.intensity_sigma) or a lower "
                "learning rate"
                if same
                else f"σ_I is {self.current_sigma:.3g}, the image suggests "
                f"{self.suggested_sigma:.3g} (--set loss.intensity_sigma="
                f"{self.suggested_sigma:.3g}), or try another normalization "
                f"({self._other_normalizations()})"
            )
            out.append(
                Diagnosis(
                    UNSTABLE,
                    step,
                    f"step {step}: the N-cut loss is not converging ({why}). The normalization "
                    f"may not suit this image: {advice}",
                )
            )
        ratio = float(np.median(self.rec_ratio[-w:]))
        ncut_fine = drop >= least_drop and spread <= 0.05
        if ncut_fine and ratio > 0.5 and POOR_RECONSTRUCTION not in self.said:
            self.said.add(POOR_RECONSTRUCTION)
            advice = (
                "switch to BCE with weight 0.5 (--set loss.reconstruction=bce loss.rec_weight=0.5)"
                if self.reconstruction == "mse"
                else "switch to MSE with a weight near 1 (--set loss.reconstruction=mse "
                "loss.rec_weight=1)"
            )
            out.append(
                Diagnosis(
                    POOR_RECONSTRUCTION,
                    step,
                    f"step {step}: the reconstruction is poor (it explains only "
                    f"{max(0.0, 1 - ratio):.0%} of the image's variance) while the N-cut is fine; "
                    f"{advice}, or tune the reconstruction weight toward 1",
                )
            )
        if ncut_fine and abs(slope) < 0.005 and PLATEAU not in self.said:
            self.said.add(PLATEAU)
            out.append(
                Diagnosis(
                    PLATEAU,
                    step,
                    f"step {step}: the N-cut loss has plateaued at {recent[-1]:.3f} (it changed by "
                    f"{slope:+.4f} over the last {w} logs): training is good and can stop",
                )
            )
        return out
