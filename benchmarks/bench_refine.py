#!/usr/bin/env python
"""The second stage against the W-Net it learned from, per regime, with and without artifacts.

For every regime of :data:`cellcut.synthetic.REGIMES` (scoring seeds), the same nuclei under
every artifact of :data:`cellcut.artifacts.KINDS` (debris, tubes, light-sheet stripes, haze,
hot and dead pixels, absorption, a tile seam), and the real embryo volumes of ../shared/data
where present:

- ``wnet``: ``cellcut.segment`` with the shipped model, default settings (zero-shot);
- ``refined``: ``cellcut.refine`` on that volume from the shipped model for ``--minutes``
  (2 threads), then ``cellcut.segment`` with the refined model (default settings: its seeded
  instances);
- ``wnet+crf``, ``refined+crf``: the same two segmentations with ``crf=True`` (the dense CRF
  on the foreground probability before instances).

Scores: instance F1 at IoU 0.5 and foreground Dice against the ground truth (nuclei only). Also
recorded: the refinement's steps and the seconds spent making its targets. Each volume is one
job; ``--jobs N`` runs N at once in separate processes of 2 threads each (on a machine with at
least 2N cores; the figures then come from that machine's cores, say so).

``--speed`` measures inference of both models on one 128³ volume in the same process:
``segment`` voxels per second, median of 3, 2 threads.

Usage::

    .venv/bin/python benchmarks/bench_refine.py [--minutes 5 | --steps N] [--regimes ...] [--jobs 1]

``--keep DIR`` keeps each refined model (without its optimizer state) in ``DIR/NAME``;
``--rescore DIR --out NAME`` trains nothing and scores every column of ``NAME.json`` again on
this machine with the current instance step, the refined ones from those models.

Prints a table, writes ``benchmarks/results/refine.json`` and ``docs/refine.png``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

EMBRYO_VOXEL = (2.18, 1.0, 1.0)


def load(name: str):
    """(image, labels, voxel size) of a volume named ``regime/seed[+artifacts]`` or
    ``embryo-Ncell``."""
    import tifffile

    if name.startswith("embryo-"):
        n = name.split("-")[1].removesuffix("cell")
        root = harness.SHARED / "data" / "embryo"
        image = tifffile.imread(root / f"{n}cell_image.tif")
        return image, tifffile.imread(root / f"{n}cell_labels_cc.tif"), EMBRYO_VOXEL
    from cellcut.synthetic import regime_volume

    regime, rest = name.split("/")
    seed, _, tag = rest.partition("+")
    v = regime_volume(regime, int(seed), artifacts=tag == "artifacts")
    return v.image, v.labels, v.voxel_size


def score(truth, labels) -> dict:
    from cellcut.metrics import evaluate

    e = evaluate(truth, labels, thresholds=(0.5,))
    return {"f1": round(e.f1_50, 4), "dice": round(e.dice, 4), "n_pred": int(labels.max())}


def keep_model(run_dir: Path, folder: Path) -> None:
    """A copy of a refined model without its optimizer state (a third of the file): enough to
    segment with, not to resume."""
    import torch

    from cellcut.model.checkpoint import CHECKPOINT_NAME

    data = torch.load(run_dir / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    data.pop("optimizer", None)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(data, folder / CHECKPOINT_NAME)


def kept_folder(keep: str | os.PathLike, name: str) -> Path:
    """Where ``--keep`` puts the refined model of volume ``name`` (``/`` and ``+`` as ``_``)."""
    return Path(keep) / name.replace("/", "_").replace("+", "_")


def scores(side: str, model, image, truth, voxel_size, device: str = "cpu") -> dict:
    """``{side: ..., side+crf: ...}``: a model's segmentation scored without and with the
    CRF."""
    from cellcut.segmentation import segment

    out = {}
    for suffix, crf in (("", False), ("+crf", True)):
        result = segment(image, None, model=model, voxel_size=voxel_size, device=device, crf=crf)
        out[side + suffix] = score(truth, result.labels)
    return out


def one_volume(
    name: str,
    minutes: float | None,
    model: str,
    device: str,
    steps: int | None = None,
    keep: str | None = None,
) -> dict:
    """W-Net zero-shot and refined scores of one volume (runs in its own process); with
    ``keep``, the refined model is kept in :func:`kept_folder`."""
    import torch

    from cellcut.refinement import refine

    torch.set_num_threads(harness.THREADS)
    image, truth, voxel_size = load(name)
    row: dict = {"truth": int(truth.max())}
    row.update(scores("wnet", model, image, truth, voxel_size, device))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = refine(
            [image], Path(tmp) / "run", model=model, voxel_size=voxel_size, minutes=minutes,
            steps=steps, device=device, progress=False, plots=False,
        )  # fmt: skip
        total = time.perf_counter() - t0
        if keep:
            keep_model(Path(run.run_dir), kept_folder(keep, name))
        row.update(scores("refined", run.run_dir, image, truth, voxel_size, device))
    row["refined"].update(steps=run.step, targets_s=round(total - run.elapsed_s, 1))
    return row


def rescore_volume(name: str, folder: str, model: str = "default") -> dict:
    """Every column of one volume again: the W-Net's (``model``) and that of the refined model
    kept by ``--keep`` in ``folder``, with and without the CRF."""
    import torch

    torch.set_num_threads(harness.THREADS)
    image, truth, voxel_size = load(name)
    return {
        **scores("wnet", model, image, truth, voxel_size),
        **scores("refined", kept_folder(folder, name), image, truth, voxel_size),
    }


def summarize(result: dict) -> None:
    """Mean and worst F1 change of the refined model over its W-Net, into ``result``."""
    deltas = [r["refined"]["f1"] - r["wnet"]["f1"] for r in result["rows"].values()]
    if deltas:
        result["mean_f1_gain"] = round(sum(deltas) / len(deltas), 4)
        result["worst_f1_change"] = round(min(deltas), 4)


def speed(model: str, device: str) -> dict:
    """Segmentation voxels per second of the W-Net and a refined model on one 128³ volume."""
    import numpy as np
    import torch

    from cellcut.refinement import refine
    from cellcut.segmentation import segment
    from cellcut.synthetic import make_nuclei_volume

    torch.set_num_threads(harness.THREADS)
    v = make_nuclei_volume((128, 128, 128), seed=7, voxel_size=(1.0, 1.0, 1.0))
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = refine([v.image], Path(tmp) / "run", model=model, voxel_size=v.voxel_size,
                     steps=2, progress=False, plots=False, device=device)  # fmt: skip
        for side, use in (("wnet", model), ("refined", run.run_dir)):
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                segment(v.image, None, model=use, voxel_size=v.voxel_size, device=device)
                times.append(time.perf_counter() - t0)
            out[side] = {"median_s": round(float(np.median(times)), 3),
                         "voxels_per_s": round(v.image.size / float(np.median(times)))}  # fmt: skip
    out["ratio_refined_over_wnet"] = round(
        out["refined"]["voxels_per_s"] / out["wnet"]["voxels_per_s"], 3
    )
    return out


def names(regimes, seeds, embryo: bool, variants) -> list[str]:
    """The clean regimes, the embryo volumes, then the regimes with artifacts."""
    out = [f"{r}/{s}" for r in regimes for s in seeds] if "clean" in variants else []
    if embryo and (harness.SHARED / "data" / "embryo").exists():
        out += ["embryo-8cell", "embryo-16cell"]
    if "artifacts" in variants:
        out += [f"{r}/{s}+artifacts" for r in regimes for s in seeds]
    return out


def plot(rows: dict, path: Path, budget: str = "5 min, 2 threads") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = list(rows)
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(keys)), 4))
    for offset, side in ((-0.2, "wnet"), (0.2, "refined")):
        ax.bar(x + offset, [rows[k].get(side, {}).get("f1", np.nan) for k in keys], 0.4,
               label=side)  # fmt: skip
    ax.set_xticks(x, keys, rotation=75, fontsize=7)
    ax.set_ylabel("instance F1 @ IoU 0.5")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"cellcut refine ({budget}) against its W-Net, per volume")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    from cellcut.synthetic import REGIMES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="refine for this many steps instead of --minutes (e.g. the steps 5 CPU minutes "
        "reach, on a faster device)",
    )
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument(
        "--variants", nargs="+", default=["clean", "artifacts"], choices=["clean", "artifacts"]
    )
    ap.add_argument("--no-embryo", action="store_true")
    ap.add_argument("--speed", action="store_true", help="also measure inference speed")
    ap.add_argument("--out", default="refine", help="results name (benchmarks/results/NAME.json)")
    ap.add_argument(
        "--keep", default=None, help="keep each refined model (no optimizer state) in KEEP/NAME"
    )
    ap.add_argument(
        "--rescore",
        default=None,
        metavar="KEEP",
        help="train nothing: score every column of benchmarks/results/OUT.json again with the "
        "current instance step, the refined ones from the models kept in KEEP (by --keep)",
    )
    args = ap.parse_args()
    if args.rescore:
        rescore(args.out, args.rescore)
        return

    todo = names(args.regimes, args.seeds, not args.no_embryo, args.variants)
    minutes = None if args.steps else args.minutes
    rows: dict[str, dict] = {}
    t0 = time.perf_counter()
    spawn = multiprocessing.get_context("spawn")  # no state (or CUDA) shared with the parent
    with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
        futures = {
            pool.submit(one_volume, n, minutes, args.model, args.device, args.steps, args.keep): n
            for n in todo
        }
        result = {"minutes": minutes, "steps": args.steps, "model": args.model,
                  "device": args.device, "jobs": args.jobs, "machine": harness.machine(),
                  "rows": rows}  # fmt: skip
        for future, name in futures.items():
            rows[name] = future.result()
            print(f"[{time.perf_counter() - t0:6.0f} s] {name}: {rows[name]}", flush=True)
            harness.write_json(args.out, result)  # as it goes: a long run can be cut short
    if args.speed:
        result["speed"] = speed(args.model, args.device)
        print("speed:", result["speed"])
    summarize(result)
    harness.write_json(args.out, result)
    report(result, args.out)


def report(result: dict, out: str) -> None:
    """Print the table and draw the plot of a results file."""
    rows = result["rows"]
    sides = ("wnet", "wnet+crf", "refined", "refined+crf")
    table = [
        [name, *[f"{r[s]['f1']:.2f}/{r[s]['dice']:.2f}" for s in sides],
         f"{r['refined']['f1'] - r['wnet']['f1']:+.2f}", str(r["refined"]["steps"])]
        for name, r in rows.items()
    ]  # fmt: skip
    print(harness.table(table, ["volume", *[f"{s} F1/Dice" for s in sides], "ΔF1", "steps"]))
    if "mean_f1_gain" in result:
        print(f"mean ΔF1 {result['mean_f1_gain']:+.3f}, worst {result['worst_f1_change']:+.3f}")
    steps = result.get("steps")
    budget = f"{steps} steps" if steps else f"{result.get('minutes'):g} min, 2 threads"
    plot(rows, harness.ROOT / "docs" / f"{out}.png", f"{budget}, {result.get('device')}")


def rescore(out: str, folder: str) -> None:
    """``--rescore``: every column of ``results/OUT.json`` again on this machine, the refined
    ones from kept models, with the current instance step; steps and target times stay the
    run's."""
    import json

    path = harness.RESULTS / f"{out}.json"
    result = json.loads(path.read_text())
    for name, row in result["rows"].items():
        new = rescore_volume(name, folder, result.get("model", "default"))
        row["refined"].update(new.pop("refined"))  # keeps the run's steps and target time
        row.update(new)
        print(f"{name}: {row}", flush=True)
    result["rescored"] = {"machine": harness.machine(), "models": str(folder)}
    summarize(result)
    harness.write_json(out, result)
    report(result, out)


if __name__ == "__main__":
    main()
