#!/usr/bin/env python
"""Five minutes of training on the embryo volumes, cellcut against the reference.

Both sides train on ../shared/data/embryo 8- and 16-cell volumes without their labels, on 2 CPU
threads, for the same wall-clock budget; snapshots of the weights are kept at fixed minutes.
Each snapshot then segments both volumes (sliding window 64³, overlap 0.25; the cell class
picked by brightness; Voronoi-Otsu instances on the cell probability with the automatic seed
blur, as users get it by default; voxel 2.18 x 1 x 1) and is scored against the labels:
foreground Dice and instance F1 at IoU 0.5. The classical baselines (Voronoi-Otsu and Otsu +
distance watershed on the raw image) and the shipped default model zero-shot are scored
alongside.

Sides:
- ``cellcut``: ``cellcut.train`` with the library defaults (fresh model), and
  ``cellcut finetune``: the same from the shipped default model;
- ``reference``: napari-cellseg3d 0.2.4's WNet3D with its training defaults (Adam lr 2e-5,
  dropout 0.65, σ_I 1, σ_X 4, radius 2, MSE, weights 0.5/0.5, 64³ patches remapped to 0..100),
  run by a loop written here that follows its worker.

Usage::

    .venv/bin/python benchmarks/bench_train_embryo.py [--minutes 5] [--snapshots 1 2 5]

Prints a table, writes ``benchmarks/results/train_embryo.json`` and ``docs/quality_vs_minutes.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

VOXEL = (2.18, 1.0, 1.0)
NAMES = (8, 16)


def embryo_paths():
    root = harness.SHARED / "data" / "embryo"
    if not root.exists():
        raise SystemExit(f"{root} not found: this benchmark needs ../shared/data")
    return [(root / f"{n}cell_image.tif", root / f"{n}cell_labels_cc.tif") for n in NAMES]


def reference_loop(vols, minutes: float, on_tick) -> tuple:
    """The reference's training loop (its worker's defaults) on 64³ patches of ``vols`` (numpy
    volumes, each at least 64 per axis) for ``minutes``; ``on_tick(model, step, elapsed)`` after
    every step. Returns the model and the per-step log."""
    import anchor_import as ref
    import numpy as np
    import torch

    torch.set_num_threads(harness.THREADS)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    model = ref.WNet(in_channels=1, out_channels=1, num_classes=2, dropout=0.65)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-5, weight_decay=0.01)
    ncut = ref.SoftNCutsLoss(
        data_shape=(64, 64, 64), device="cpu", intensity_sigma=1.0, spatial_sigma=4.0, radius=2
    )
    mse = torch.nn.MSELoss()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    step = 0
    log = []
    while time.perf_counter() - t0 < minutes * 60:
        v = vols[step % len(vols)]
        start = [int(rng.integers(0, s - 64 + 1)) for s in v.shape]
        patch = torch.from_numpy(v[tuple(slice(a, a + 64) for a in start)].copy())
        image = ref.remap_image(patch)[None, None]
        enc, dec = model(image)
        n, r = ncut(enc, image), mse(dec, image)
        loss = 0.5 * n + 0.5 * r
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        elapsed = time.perf_counter() - t0
        log.append({"step": step, "elapsed_s": elapsed, "ncut": float(n), "rec": float(r)})
        on_tick(model, step, elapsed)
    return model, log


def pad_to_patch(v):
    import numpy as np

    return np.pad(v, [(0, max(0, 64 - s)) for s in v.shape], mode="reflect")


def reference_train(minutes: float, snapshots: list[float], folder: Path) -> None:
    """The reference's training on the embryo volumes, snapshots saved as state dicts."""
    import numpy as np
    import tifffile
    import torch

    vols = [pad_to_patch(tifffile.imread(ip).astype(np.float32)) for ip, _ in embryo_paths()]
    pending = sorted(snapshots)

    def snapshot(model, step, elapsed):
        while pending and elapsed >= pending[0] * 60:
            torch.save(model.state_dict(), folder / f"reference_{pending[0]:g}.pt")
            pending.pop(0)

    _, log = reference_loop(vols, max(snapshots) + 0.01, snapshot)
    (folder / "reference_log.json").write_text(json.dumps(log))


def reference_segment(weights: Path, out: Path) -> None:
    """Segment both volumes with a reference snapshot: class probabilities to .npy files."""
    import anchor_import as ref
    import numpy as np
    import tifffile
    import torch

    torch.set_num_threads(harness.THREADS)
    model = ref.WNet(in_channels=1, out_channels=1, num_classes=2, dropout=0.65)
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    model.eval()
    for (ip, _), n in zip(embryo_paths(), NAMES, strict=False):
        probs = reference_probabilities(model, tifffile.imread(ip).astype(np.float32))
        np.save(out / f"{weights.stem}_{n}.npy", probs)


def reference_probabilities(model, volume):
    """The reference's class probabilities (K, z, y, x) of a volume: its remapping and MONAI's
    sliding window with its settings."""
    import anchor_import as ref
    import torch
    from monai.inferers import sliding_window_inference

    image = ref.remap_image(torch.from_numpy(volume))[None, None]
    with torch.no_grad():
        probs = sliding_window_inference(
            image,
            roi_size=[64, 64, 64],
            sw_batch_size=1,
            predictor=lambda x: model.forward_encoder(x),
            overlap=0.25,
            mode="gaussian",
            sigma_scale=0.01,
            progress=False,
            padding_mode="reflect",
        )
    return probs[0].numpy()


def score_probs(probs, image, labels) -> dict:
    from cellcut.scoring import score_class_probabilities

    ev, _ = score_class_probabilities(probs, image, labels, VOXEL)
    return {"dice": ev.dice, "f1_50": ev.f1_50, "n_pred": ev.n_pred, "n_true": ev.n_true}


def cellcut_probs(model_path, image):
    from cellcut.infer import sliding_window
    from cellcut.model import load_model
    from cellcut.normalize import fit_normalization

    loaded = load_model(model_path)
    x = fit_normalization(image, loaded.normalization)(image)
    return sliding_window(
        x,
        lambda b: loaded.model.encode(b / loaded.input_scale),
        loaded.model.n_classes,
        window=(64, 64, 64),
        overlap=0.25,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--case", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--snapshots", type=float, nargs="+", default=[0.5, 1, 2, 3, 5])
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument(
        "--replot", action="store_true", help="redraw the plot from the last results JSON"
    )
    args = ap.parse_args()
    if args.replot:
        saved = json.loads((harness.RESULTS / "train_embryo.json").read_text())["results"]
        return plot(curves_from_results(saved), saved, harness.ROOT / "docs/quality_vs_minutes.png")
    if args.case:
        kind = args.case[0]
        if kind == "train":
            reference_train(
                float(args.case[1]), [float(x) for x in args.case[3:]], Path(args.case[2])
            )
        else:
            reference_segment(Path(args.case[1]), Path(args.case[2]))
        harness.emit({"median_s": 0.0, "min_s": 0.0, "extra_peak_mb": 0.0, "peak_rss_mb": 0.0})
        return

    import numpy as np
    import tifffile
    import torch

    from cellcut.model import resolve_model_path
    from cellcut.normalize import normalize
    from cellcut.postprocess import instances
    from cellcut.training import TrainCallback, train

    torch.set_num_threads(harness.THREADS)
    snaps = sorted(s for s in args.snapshots if s <= args.minutes)
    if args.minutes not in snaps:
        snaps.append(args.minutes)
    folder = Path(tempfile.mkdtemp(prefix="cellcut-embryo-"))
    data = [(tifffile.imread(ip), tifffile.imread(lp)) for ip, lp in embryo_paths()]
    results: dict[str, dict] = {}

    def score_model(name, path):
        per = [
            score_probs(cellcut_probs(path, img.astype(np.float32)), img, lab) for img, lab in data
        ]
        results[name] = {
            "dice": float(np.mean([p["dice"] for p in per])),
            "f1_50": float(np.mean([p["f1_50"] for p in per])),
            "volumes": per,
        }
        print(
            f"{name:>32}: Dice {results[name]['dice']:.3f} F1@0.5 {results[name]['f1_50']:.3f}",
            flush=True,
        )

    # classical baselines on the raw image
    for method, kwargs in (
        ("voronoi-otsu", {"spot_sigma": "auto"}),
        ("watershed", {"min_distance": 6.0}),
    ):
        per = []
        for img, lab in data:
            from cellcut.metrics import evaluate

            pred = instances(
                normalize(img, "percentile"),
                method,
                voxel_size=VOXEL,
                probability=False,
                min_volume=50,
                **kwargs,
            )
            ev = evaluate(lab, pred, thresholds=(0.5,))
            per.append({"dice": ev.dice, "f1_50": ev.f1_50})
        name = f"baseline {method} (raw image)"
        results[name] = {
            "dice": float(np.mean([p["dice"] for p in per])),
            "f1_50": float(np.mean([p["f1_50"] for p in per])),
            "volumes": per,
        }
        print(f"{name:>32}: Dice {results[name]['dice']:.3f} F1@0.5 {results[name]['f1_50']:.3f}")

    default_path = None
    try:
        default_path = resolve_model_path("default")
        score_model("cellcut default model, zero-shot", default_path)
    except Exception as e:
        results["cellcut default model, zero-shot"] = {"error": str(e)}

    class Snapshots(TrainCallback):
        def __init__(self, tag, run_dir):
            self.tag, self.run_dir, self.pending = tag, run_dir, list(snaps)
            self.t0 = None

        def on_start(self, run):
            self.t0 = time.perf_counter()
            self.run = run

        def on_log(self, record):
            from cellcut.model import Checkpoint

            while self.pending and record["elapsed_s"] >= self.pending[0] * 60:
                m = self.pending.pop(0)
                Checkpoint(
                    architecture=asdict(self.run.model.arch),
                    model={k: v.detach().clone() for k, v in self.run.model.state_dict().items()},
                    config=self.run.config.model_dump(mode="json"),
                    foreground_classes=[],
                    input_scale=100.0,
                ).save(folder / f"{self.tag}_{m:g}.pt")

    curves: dict[str, list] = {}
    sides = [("cellcut", None)]
    if default_path is not None:
        sides.append(("cellcut finetune", "default"))
    for tag, pretrained in sides:
        cb = Snapshots(tag.replace(" ", "_"), folder / tag)
        overrides = [
            f"stop.minutes={args.minutes}",
            "stop.steps=null",
            "log.every=5",
            "log.progress=false",
            "log.checkpoint_every=100000",
            "data.voxel_size=[2.18, 1.0, 1.0]",
        ]
        t0 = time.perf_counter()
        run = train(
            [ip for ip, _ in embryo_paths()],
            folder / tag.replace(" ", "_"),
            overrides=overrides,
            callbacks=[cb],
            from_pretrained=pretrained,
        )
        print(f"{tag}: {run.step} steps in {time.perf_counter() - t0:.0f} s", flush=True)
        zero_shot = results.get("cellcut default model, zero-shot", {})
        curves[tag] = [(0.0, zero_shot)] if pretrained and "dice" in zero_shot else []
        for m in snaps:
            path = folder / f"{tag.replace(' ', '_')}_{m:g}.pt"
            if m == args.minutes or not path.exists():
                path = run.checkpoint
            score_model(f"{tag} after {m:g} min", path)
            curves[tag].append((m, results[f"{tag} after {m:g} min"]))

    ref_python = None if args.no_reference else harness.anchor_python()
    if ref_python is not None:
        script = Path(__file__).resolve()
        t0 = time.perf_counter()
        out = harness.run_subprocess_case(
            ref_python, script, ["train", str(args.minutes), str(folder)] + [str(s) for s in snaps]
        )
        if "error" in out:
            print(out.get("stderr", ""), file=sys.stderr)
        log = json.loads((folder / "reference_log.json").read_text())
        print(
            f"reference: {len(log)} steps in {time.perf_counter() - t0:.0f} s; N-cut "
            f"{log[0]['ncut']:.3f} -> {log[-1]['ncut']:.3f}",
            flush=True,
        )
        curves["reference"] = []
        for m in snaps:
            w = folder / f"reference_{m:g}.pt"
            harness.run_subprocess_case(ref_python, script, ["segment", str(w), str(folder)])
            per = []
            for (img, lab), n in zip(data, NAMES, strict=False):
                probs = np.load(folder / f"reference_{m:g}_{n}.npy")
                per.append(score_probs(probs, img, lab))
            name = f"reference after {m:g} min"
            results[name] = {
                "dice": float(np.mean([p["dice"] for p in per])),
                "f1_50": float(np.mean([p["f1_50"] for p in per])),
                "volumes": per,
                "steps": len([r for r in log if r["elapsed_s"] <= m * 60]),
            }
            curves["reference"].append((m, results[name]))
            print(
                f"{name:>32}: Dice {results[name]['dice']:.3f} F1@0.5 {results[name]['f1_50']:.3f}",
                flush=True,
            )

    rows = [
        [
            k,
            v.get("dice"),
            v.get("f1_50"),
            ", ".join(f"{p['dice']:.2f}/{p['f1_50']:.2f}" for p in v.get("volumes", [])),
        ]
        for k, v in results.items()
    ]
    print(harness.table(rows, ["model", "Dice", "F1@0.5", "8-cell, 16-cell Dice/F1"]))
    path = harness.write_json(
        "train_embryo", {"machine": harness.machine(), "minutes": args.minutes, "results": results}
    )
    print(f"written: {path}")
    plot(curves, results, harness.ROOT / "docs" / "quality_vs_minutes.png")


def curves_from_results(results: dict) -> dict[str, list]:
    """The per-side curves again from the names in a results JSON (for ``--replot``)."""
    curves: dict[str, list] = {}
    for name, r in results.items():
        if " after " in name and name.endswith(" min") and "dice" in r:
            side, minutes = name.rsplit(" after ", 1)
            curves.setdefault(side, []).append((float(minutes[:-4]), r))
    zero_shot = results.get("cellcut default model, zero-shot", {})
    if "cellcut finetune" in curves and "dice" in zero_shot:
        curves["cellcut finetune"].append((0.0, zero_shot))
    return {side: sorted(points, key=lambda p: p[0]) for side, points in curves.items()}


def plot(curves, results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for metric, ax in zip(("dice", "f1_50"), axes, strict=False):
        for name, points in curves.items():
            ax.plot([m for m, _ in points], [r[metric] for _, r in points], "o-", label=name)
        for name, style in (
            ("baseline voronoi-otsu (raw image)", "k--"),
            ("baseline watershed (raw image)", "k:"),
        ):
            if name in results:
                ax.axhline(results[name][metric], ls=style[1:], color="k", label=name)
        ax.set_xlabel("training minutes (2 CPU threads); fine-tuning starts from zero-shot")
        ax.set_ylabel({"dice": "foreground Dice", "f1_50": "instance F1 at IoU 0.5"}[metric])
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Embryo nuclei (../shared/data/embryo), trained without labels")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
