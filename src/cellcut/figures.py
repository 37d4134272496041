"""Pictures of runs and results (matplotlib, written to PNG without a display)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cellcut.blocks import tiles
from cellcut.outputs import atomic_output


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    target = Path(path)
    with atomic_output(target) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return target


def plot_losses(history: Sequence[dict], path: str | os.PathLike) -> Path:
    """N-cut, reconstruction, total and validation curves against the step."""
    plt = _plt()
    steps = [h["step"] for h in history]

    def series(key):
        return [h.get(key) if h.get(key) not in ("", None) else np.nan for h in history]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, series("ncut"), label="train")
    axes[0].plot(steps, series("val_ncut"), label="validation")
    axes[0].set_title("soft N-cut")
    axes[1].plot(steps, series("reconstruction"), label="train")
    axes[1].plot(steps, series("val_reconstruction"), label="validation")
    axes[1].set_yscale("log")
    axes[1].set_title("reconstruction")
    axes[2].plot(steps, series("total"), label="train total")
    axes[2].plot(steps, series("val_total"), label="validation total")
    axes[2].set_yscale("log")
    if any(h.get("val_dice") not in ("", None) for h in history):
        ax = axes[2].twinx()
        ax.plot(steps, series("val_dice"), "g--", label="val Dice")
        ax.plot(steps, series("val_f1"), "r--", label="val F1@0.5")
        ax.set_ylim(0, 1)
        ax.legend(loc="lower right", fontsize=8)
    axes[2].set_title("total (and validation scores)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_preview(
    image: np.ndarray,
    probs: np.ndarray,
    reconstruction: np.ndarray,
    foreground_classes: Sequence[int],
    path: str | os.PathLike,
) -> Path:
    """Image, foreground probability, each soft class and the reconstruction, middle slices."""
    plt = _plt()
    k = probs.shape[0]
    fg = probs[list(foreground_classes)].sum(0) if foreground_classes else probs[0]
    panels = [("image", image, "gray"), ("cells (foreground probability)", fg, "magma")]
    panels += [(f"class {i}", probs[i], "viridis") for i in range(k)]
    panels.append(("reconstruction", reconstruction, "gray"))
    z, y, x = (s // 2 for s in image.shape)
    fig, axes = plt.subplots(3, len(panels), figsize=(2.6 * len(panels), 7.5), squeeze=False)
    for col, (title, vol, cmap) in enumerate(panels):
        for row, (name, sl) in enumerate([("z", vol[z]), ("y", vol[:, y]), ("x", vol[:, :, x])]):
            ax = axes[row, col]
            ax.imshow(sl, cmap=cmap, interpolation="nearest", aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"middle {name} slice", fontsize=8)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_refine_losses(history: Sequence[dict], path: str | os.PathLike) -> Path:
    """A refinement's loss terms and agreement with its targets against the step."""
    plt = _plt()
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in ("loss", "cross_entropy", "dice", "fixed_loss"):
        axes[0].plot(steps, [h.get(key, np.nan) for h in history], label=key)
    axes[0].set_yscale("log")
    axes[0].set_title("loss (fixed: unaugmented patches)")
    for key in ("accuracy", "fixed_accuracy"):
        axes[1].plot(steps, [h.get(key, np.nan) for h in history], label=key)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("agreement with the targets")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_refine_preview(
    image: np.ndarray, target: np.ndarray, probs: np.ndarray, path: str | os.PathLike
) -> Path:
    """Middle slices of a patch: image, targets (0 background, 1 boundary, 2 interior, 3
    ignored), the refined model's boundary and interior probabilities."""
    plt = _plt()
    shown = np.where(target == 255, 3, target).astype(np.float32)
    panels = [
        ("image", image, "gray"),
        ("targets: bg, boundary, interior, ignored", shown, "viridis"),
        ("boundary", probs[1], "magma"),
        ("interior", probs[2], "magma"),
    ]
    z, y, x = (s // 2 for s in image.shape)
    fig, axes = plt.subplots(3, len(panels), figsize=(2.8 * len(panels), 7.5), squeeze=False)
    for col, (title, vol, cmap) in enumerate(panels):
        for row, sl in enumerate([vol[z], vol[:, y], vol[:, :, x]]):
            ax = axes[row, col]
            ax.imshow(sl, cmap=cmap, interpolation="nearest", aspect="auto",
                      **({"vmin": 0, "vmax": 3} if col == 1 else {"vmin": None}))  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_overview(
    image, labels, path: str | os.PathLike, block: Sequence[int] = (256, 256, 256)
) -> Path:
    """Maximum projections and middle slices of the image with the label outlines.

    Projections are accumulated block by block, so the volume is never loaded whole.
    """
    from skimage.segmentation import find_boundaries

    plt = _plt()
    shape = tuple(int(s) for s in image.shape)
    mips = [np.full([s for i, s in enumerate(shape) if i != ax], -np.inf) for ax in range(3)]
    lab_mips = [np.zeros([s for i, s in enumerate(shape) if i != ax], np.int64) for ax in range(3)]
    for sl in tiles(shape, block):
        img = np.asarray(image[sl], dtype=np.float32)
        lab = np.asarray(labels[sl])
        for ax in range(3):
            keep = [sl[i] for i in range(3) if i != ax]
            m = img.max(axis=ax)
            current = mips[ax][tuple(keep)]
            np.maximum(current, m, out=current)
            lm = lab.max(axis=ax)
            cl = lab_mips[ax][tuple(keep)]
            np.maximum(cl, lm, out=cl)
    index = [
        (shape[0] // 2,),
        (slice(None), shape[1] // 2),
        (slice(None), slice(None), shape[2] // 2),
    ]
    mids = [(np.asarray(image[i], dtype=np.float32), np.asarray(labels[i])) for i in index]
    n_cells = int(max(m.max() for m in lab_mips))
    fig, axes = plt.subplots(2, 3, figsize=(14, 9))
    names = ["z (top view)", "y (front view)", "x (side view)"]
    for ax in range(3):
        for row, (img, lab, what) in enumerate(
            [(mips[ax], lab_mips[ax], "max projection along"), (*mids[ax], "middle slice across")]
        ):
            a = axes[row, ax]
            lo, hi = np.percentile(img, [1, 99.8])
            a.imshow(np.clip(img, lo, hi), cmap="gray", interpolation="nearest", aspect="auto")
            edges = find_boundaries(lab, mode="inner")
            overlay = np.zeros((*lab.shape, 4))
            overlay[edges] = (1.0, 0.2, 0.2, 0.9)
            a.imshow(overlay, interpolation="nearest", aspect="auto")
            a.set_title(f"{what} {names[ax]}", fontsize=9)
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle(f"{n_cells} cells (label outlines in red)")
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out
