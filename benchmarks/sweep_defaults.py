#!/usr/bin/env python
"""Choose training defaults by segmentation quality, not by the loss value.

Each setting trains a fresh W-Net for a fixed wall-clock budget on unlabelled volumes, then
segments the labelled volumes (sliding window, foreground classes decided as in training,
Voronoi-Otsu instances) and scores foreground Dice and instance F1 at IoU 0.5 against their
labels. Datasets:

- ``synthetic``: two generated volumes (cellcut.synthetic, seeds 0 and 1), 48x96x96, voxel
  2x1x1 µm, trained on seed 0, scored on both;
- ``embryo``: ../shared/data/embryo 8- and 16-cell volumes (z:y:x spacing 2.18:1:1), trained on
  both without their labels, scored against the labels (skipped where the folder is absent).

Usage::

    .venv/bin/python benchmarks/sweep_defaults.py --dataset embryo --seconds 90 \
        --settings baseline sigma1 k3

``--settings`` names rows of SETTINGS below (default: all). Writes
``benchmarks/results/sweep_<dataset>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

# The plain W-Net as first configured (remap to 0..100, no class-intensity term); each setting
# below names its changes from it, so results stay comparable whatever the library defaults.
BASE = {
    "stop": {"minutes": 1.5},
    "log": {"every": 10, "checkpoint_every": 1000, "progress": False, "plots": False},
    "data": {"val_patches": 2, "normalization": "remap"},
    "loss": {"intensity_weight": 0.0},
}

# name -> overrides (dotted keys) on top of the library defaults and BASE
SETTINGS: dict[str, dict] = {
    "baseline": {},
    "reference_like": {"loss.intensity_sigma": 1.0, "loss.spatial_sigma": 4.0, "loss.radius": 2.0},
    "sigma_auto_r2": {"loss.spatial_sigma": 4.0, "loss.radius": 2.0},
    "sigma_x2": {"loss.spatial_sigma": 2.0},
    "sigma_x2_r3": {"loss.spatial_sigma": 2.0, "loss.radius": 3.0},
    "k3": {"model.n_classes": 3},
    "k4": {"model.n_classes": 4},
    "rec1": {"loss.rec_weight": 1.0, "loss.ncut_weight": 0.5},
    "rec_low": {"loss.rec_weight": 0.1},
    "bce": {"loss.reconstruction": "bce", "loss.rec_weight": 0.5},
    "no_augment": {
        "augment.flips": False,
        "augment.rotations": False,
        "augment.intensity_scale": 0.0,
        "augment.intensity_shift": 0.0,
    },
    "lr3e-4": {"optimizer.lr": 3e-4},
    "percentile": {"data.normalization": "percentile"},
    "fg_bias": {"data.foreground_bias": 0.5},
    "patch32": {"data.patch_size": [32, 64, 64]},
    "int0.1": {"loss.intensity_weight": 0.1},
    "int0.5": {"loss.intensity_weight": 0.5},
    "int1": {"loss.intensity_weight": 1.0},
    "int1_k3": {"loss.intensity_weight": 1.0, "model.n_classes": 3},
    "int1_pct": {"loss.intensity_weight": 1.0, "data.normalization": "percentile"},
    "int1_sx2": {"loss.intensity_weight": 1.0, "loss.spatial_sigma": 2.0},
    "int0.5_pct": {"loss.intensity_weight": 0.5, "data.normalization": "percentile"},
    "int2_pct": {"loss.intensity_weight": 2.0, "data.normalization": "percentile"},
    "int1_pct_k3": {
        "loss.intensity_weight": 1.0,
        "data.normalization": "percentile",
        "model.n_classes": 3,
    },
    "int1_pct_sx2": {
        "loss.intensity_weight": 1.0,
        "data.normalization": "percentile",
        "loss.spatial_sigma": 2.0,
    },
    "int1_pct_norec": {
        "loss.intensity_weight": 1.0,
        "data.normalization": "percentile",
        "loss.rec_weight": 0.0,
    },
}


def datasets(name: str, folder: Path):
    """(train paths, [(image path, labels path)], voxel size) for a dataset name."""
    import numpy as np
    import tifffile

    if name == "synthetic":
        from cellcut.synthetic import make_nuclei_volume

        pairs = []
        for seed in (0, 1):
            v = make_nuclei_volume((48, 96, 96), seed=seed, voxel_size=(2.0, 1.0, 1.0))
            ip, lp = folder / f"syn{seed}.tif", folder / f"syn{seed}_labels.tif"
            tifffile.imwrite(ip, v.image)
            tifffile.imwrite(lp, v.labels)
            pairs.append((ip, lp))
        return [pairs[0][0]], pairs, (2.0, 1.0, 1.0)
    if name == "embryo":
        root = harness.SHARED / "data" / "embryo"
        if not root.exists():
            raise SystemExit(f"{root} not found: the embryo sweep needs ../shared/data")
        pairs = [(root / f"{n}cell_image.tif", root / f"{n}cell_labels_cc.tif") for n in (8, 16)]
        return [p[0] for p in pairs], pairs, (2.18, 1.0, 1.0)
    raise SystemExit(f"unknown dataset {name}")
    _ = np


def score(run, pairs, voxel_size) -> dict:
    import numpy as np

    from cellcut.infer import sliding_window
    from cellcut.io import read_volume
    from cellcut.normalize import fit_normalization
    from cellcut.scoring import score_class_probabilities

    model = run.model.eval()
    scale = 100.0
    out = []
    for ip, lp in pairs:
        raw = read_volume(ip).numpy()
        img = fit_normalization(raw, run.config.data.normalization)(raw)
        probs = sliding_window(
            img,
            lambda b: model.encode(b / scale),
            model.n_classes,
            window=run.config.data.patch_size,
        )
        gt = read_volume(lp, validate=False).numpy()
        ev, fg = score_class_probabilities(probs, img, gt, voxel_size)
        out.append(
            {
                "dice": ev.dice,
                "f1_50": ev.f1_50,
                "n_pred": ev.n_pred,
                "n_true": ev.n_true,
                "fg_fraction": float((fg > 0.5).mean()),
            }
        )
    return {
        "dice": float(np.mean([o["dice"] for o in out])),
        "f1_50": float(np.mean([o["f1_50"] for o in out])),
        "volumes": out,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dataset", choices=("synthetic", "embryo"), default="synthetic")
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS))
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--tag", default="", help="suffix of the results file")
    args = ap.parse_args()

    import torch

    from cellcut.config import apply_overrides, build_config
    from cellcut.training import train

    torch.set_num_threads(harness.THREADS)
    folder = Path(tempfile.mkdtemp(prefix="cellcut-sweep-"))
    train_paths, pairs, voxel_size = datasets(args.dataset, folder)
    results = {}
    for name in args.settings:
        for seed in args.seeds:
            base = build_config(
                {**BASE, "seed": seed, "data": {**BASE["data"], "voxel_size": list(voxel_size)}}
            )
            cfg = apply_overrides(base, {**SETTINGS[name], "stop.minutes": args.seconds / 60.0})
            t0 = time.perf_counter()
            run = train(train_paths, folder / f"{name}-{seed}", cfg)
            train_s = time.perf_counter() - t0
            s = score(run, pairs, voxel_size)
            last = run.history[-1] if run.history else {}
            results[f"{name}/{seed}"] = {
                "setting": name,
                "seed": seed,
                "overrides": SETTINGS[name],
                **s,
                "steps": run.step,
                "train_s": train_s,
                "ncut": last.get("ncut"),
                "rec_ratio": last.get("rec_ratio"),
                "intensity_sigma": run.intensity_sigma,
                "foreground_classes": run.foreground_classes,
                "diagnoses": [d.kind for d in run.diagnoses],
            }
            r = results[f"{name}/{seed}"]
            print(
                f"{name:>16} seed {seed}: Dice {r['dice']:.3f} F1@0.5 {r['f1_50']:.3f} "
                f"steps {r['steps']} N-cut {r['ncut'] or float('nan'):.3f} "
                f"σ_I {r['intensity_sigma']:.3g} fg {r['foreground_classes']}",
                flush=True,
            )
    rows = [
        [
            r["setting"],
            r["seed"],
            r["dice"],
            r["f1_50"],
            r["steps"],
            r["ncut"],
            ", ".join(f"{v['dice']:.2f}/{v['f1_50']:.2f}" for v in r["volumes"]),
        ]
        for r in results.values()
    ]
    print(
        harness.table(
            rows, ["setting", "seed", "Dice", "F1@0.5", "steps", "N-cut", "per volume Dice/F1"]
        )
    )
    path = harness.write_json(
        f"sweep_{args.dataset}",
        {"machine": harness.machine(), "seconds": args.seconds, "results": results},
    )
    print(f"written: {path}")
    json.dumps(results)


if __name__ == "__main__":
    main()
